//! Which objects take Karpenter's nodes with them when deleted, and how
//! their nodes are found: what destroy waits for (`apply::drain`) and what
//! the plan says it will wait for.
//!
//! Karpenter's NodeClaims (one per node) carry the label
//! `karpenter.sh/nodepool` and an owner reference to their pool, and name
//! their node class in `spec.nodeClassRef`.

use serde_json::Value;

use super::automode;

/// What a deleted object's nodes are found by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launched {
    /// A `karpenter.sh` NodePool: its NodeClaims' label. Waited for after its delete.
    ByPool { api_version: String },
    /// A node class: the NodeClaims' `nodeClassRef`. Waited for before its delete.
    FromClass { group: String },
}

impl Launched {
    /// Whether deleting an object of this kind takes Karpenter's nodes with it.
    pub fn of(api_version: &str, kind: &str) -> Option<Launched> {
        let group = api_version.split('/').next().unwrap_or_default();
        match (group, kind) {
            ("karpenter.sh", "NodePool") => Some(Launched::ByPool {
                api_version: api_version.to_string(),
            }),
            (automode::NODECLASS_GROUP, automode::NODECLASS_KIND)
            | ("karpenter.k8s.aws", "EC2NodeClass") => Some(Launched::FromClass {
                group: group.to_string(),
            }),
            _ => None,
        }
    }

    /// The API version of the NodeClaims to look for.
    pub fn api_version(&self) -> &str {
        match self {
            Launched::ByPool { api_version } => api_version,
            Launched::FromClass { .. } => "karpenter.sh/v1",
        }
    }

    /// The label selector that narrows the NodeClaims (empty: all of them).
    pub fn selector(&self, name: &str) -> String {
        match self {
            Launched::ByPool { .. } => format!("karpenter.sh/nodepool={name}"),
            Launched::FromClass { .. } => String::new(),
        }
    }

    /// Whether a NodeClaim (listed with [`Launched::selector`]) is one of its nodes.
    pub fn owns(&self, name: &str, claim: &Value) -> bool {
        match self {
            Launched::ByPool { .. } => true,
            Launched::FromClass { group } => {
                let reference = &claim["spec"]["nodeClassRef"];
                reference["name"] == name && reference["group"] == group.as_str()
            }
        }
    }

    pub fn whose(&self) -> &'static str {
        match self {
            Launched::ByPool { .. } => "of this pool",
            Launched::FromClass { .. } => "launched from this class",
        }
    }

    /// What the delete waits for, as the plan says it under the change.
    pub fn plan_note(&self) -> &'static str {
        match self {
            Launched::ByPool { .. } => {
                "then waits until Karpenter has drained and removed the pool's nodes"
            }
            Launched::FromClass { .. } => {
                "first waits until Karpenter has removed the nodes launched from it"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_class_owns_the_node_claims_that_name_it_in_its_group() {
        let from = Launched::of("eks.amazonaws.com/v1", "NodeClass").expect("a node class");
        let claim = |group: &str, name: &str| json!({"spec": {"nodeClassRef": {"group": group, "kind": "NodeClass", "name": name}}});
        assert!(from.owns("gpu", &claim("eks.amazonaws.com", "gpu")));
        assert!(!from.owns("gpu", &claim("eks.amazonaws.com", "default")));
        assert!(!from.owns("gpu", &claim("karpenter.k8s.aws", "gpu")));
        let by_pool = Launched::of("karpenter.sh/v1", "NodePool").expect("a pool");
        assert_eq!(by_pool.selector("gpu"), "karpenter.sh/nodepool=gpu");
        assert_eq!(Launched::of("v1", "ConfigMap"), None);
        assert_eq!(Launched::of("karpenter.sh/v1", "NodeClaim"), None);
    }
}
