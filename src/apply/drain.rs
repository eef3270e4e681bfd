//! Destroying a NodePool or node class the stack owns: its nodes go too,
//! and destroy is not done until Karpenter has drained and removed them.
//!
//! Karpenter's NodeClaims (one per node) carry the label
//! `karpenter.sh/nodepool` and an owner reference to their pool; once the
//! pool is deleted the garbage collector deletes them, and each stays,
//! under Karpenter's termination finalizer, until its node is drained and
//! its instance gone. So after a pool is deleted, destroy waits for its
//! NodeClaims; before a class is deleted, for the NodeClaims launched from
//! it (as Karpenter's own finalizer on an EC2NodeClass does), so that a
//! destroy stopped halfway and run again still waits for the nodes. The
//! wait is bounded by `--delete-timeout`, and says what it waits for.
//! A cluster that serves no NodeClaim (no Karpenter) has no nodes to wait for.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ApplyError, Shared, cluster_err, elapsed};
use crate::karpenter::automode;
use crate::plan::Change;

/// What a deleted object's nodes are found by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Launched {
    /// A `karpenter.sh` NodePool: its NodeClaims' label. Waited for after its delete.
    ByPool { api_version: String },
    /// A node class: the NodeClaims' `nodeClassRef`. Waited for before its delete.
    FromClass { group: String },
}

impl Launched {
    /// Whether deleting this object takes Karpenter's nodes with it.
    pub(super) fn of(c: &Change) -> Option<Launched> {
        let group = c.api_version.split('/').next().unwrap_or_default();
        match (group, c.kind.as_str()) {
            ("karpenter.sh", "NodePool") => Some(Launched::ByPool {
                api_version: c.api_version.clone(),
            }),
            (automode::NODECLASS_GROUP, automode::NODECLASS_KIND)
            | ("karpenter.k8s.aws", "EC2NodeClass") => Some(Launched::FromClass {
                group: group.to_string(),
            }),
            _ => None,
        }
    }

    fn api_version(&self) -> &str {
        match self {
            Launched::ByPool { api_version } => api_version,
            Launched::FromClass { .. } => "karpenter.sh/v1",
        }
    }

    fn selector(&self, name: &str) -> String {
        match self {
            Launched::ByPool { .. } => format!("karpenter.sh/nodepool={name}"),
            Launched::FromClass { .. } => String::new(),
        }
    }

    /// Whether a NodeClaim (listed with [`Launched::selector`]) is one of its nodes.
    pub(super) fn owns(&self, name: &str, claim: &Value) -> bool {
        match self {
            Launched::ByPool { .. } => true,
            Launched::FromClass { group } => {
                let reference = &claim["spec"]["nodeClassRef"];
                reference["name"] == name && reference["group"] == group.as_str()
            }
        }
    }

    fn whose(&self) -> &'static str {
        match self {
            Launched::ByPool { .. } => "of this pool",
            Launched::FromClass { .. } => "launched from this class",
        }
    }
}

/// Waits until Karpenter has removed every node the object launched.
pub(super) async fn wait(
    shared: &Shared,
    c: &Change,
    launched: &Launched,
) -> Result<(), ApplyError> {
    let Some(kind) = shared.cluster.kind(launched.api_version(), "NodeClaim") else {
        return Ok(());
    };
    let started = Instant::now();
    let mut next_report = Duration::ZERO;
    loop {
        let selector = launched.selector(&c.name);
        let left = shared
            .cluster
            .list_each(&kind, None, &selector, |claim| {
                let name = claim["metadata"]["name"].as_str()?.to_string();
                launched.owns(&c.name, &claim).then_some(name)
            })
            .await
            .map_err(cluster_err(&c.address))?;
        if left.is_empty() {
            return Ok(());
        }
        let waiting = format!(
            "{} node(s) {} still up (NodeClaims {}); Karpenter drains and removes them",
            left.len(),
            launched.whose(),
            left.join(", ")
        );
        if started.elapsed() >= shared.options.delete_timeout {
            return Err(ApplyError::Resource {
                address: c.address.clone(),
                message: format!(
                    "{waiting}, and {} have passed\n  help: look at them with `kubectl describe nodeclaim {}` (a pod whose PodDisruptionBudget forbids eviction holds a drain); run destroy again to go on waiting, or raise --delete-timeout",
                    elapsed(started),
                    left[0]
                ),
            });
        }
        if started.elapsed() >= next_report {
            shared.say(
                &c.address,
                format!("Waiting: {waiting} [{} elapsed]", elapsed(started)),
            );
            next_report += Duration::from_secs(10);
        }
        if shared.options.stop.requested() {
            return Err(ApplyError::Interrupted {
                done: 0,
                not_done: vec![c.address.clone()],
            });
        }
        shared.still_locked()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_class_owns_the_node_claims_that_name_it_in_its_group() {
        let from = Launched::FromClass {
            group: "eks.amazonaws.com".into(),
        };
        let claim = |group: &str, name: &str| json!({"spec": {"nodeClassRef": {"group": group, "kind": "NodeClass", "name": name}}});
        assert!(from.owns("gpu", &claim("eks.amazonaws.com", "gpu")));
        assert!(!from.owns("gpu", &claim("eks.amazonaws.com", "default")));
        assert!(!from.owns("gpu", &claim("karpenter.k8s.aws", "gpu")));
        let by_pool = Launched::ByPool {
            api_version: "karpenter.sh/v1".into(),
        };
        assert_eq!(by_pool.selector("gpu"), "karpenter.sh/nodepool=gpu");
    }
}
