//! Destroying a NodePool or node class the stack owns: its nodes go too,
//! and destroy is not done until Karpenter has drained and removed them.
//!
//! Karpenter's NodeClaims (one per node) carry the label
//! `karpenter.sh/nodepool` and an owner reference to their pool (which
//! objects have nodes, and how they are found: `karpenter::nodes`); once the
//! pool is deleted the garbage collector deletes them, and each stays,
//! under Karpenter's termination finalizer, until its node is drained and
//! its instance gone. So after a pool is deleted, destroy waits for its
//! NodeClaims; before a class is deleted, for the NodeClaims launched from
//! it (as Karpenter's own finalizer on an EC2NodeClass does), so that a
//! destroy stopped halfway and run again still waits for the nodes. The
//! wait is bounded by `--delete-timeout`, and says what it waits for.
//! A cluster that serves no NodeClaim (no Karpenter) has no nodes to wait for.

use std::time::{Duration, Instant};

use super::{ApplyError, Shared, cluster_err, elapsed};
use crate::karpenter::nodes::Launched;
use crate::plan::Change;

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
