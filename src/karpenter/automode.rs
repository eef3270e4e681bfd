//! EKS Auto Mode: Karpenter built into the control plane, where some objects
//! are EKS's, not the user's.
//!
//! An Auto Mode cluster serves `karpenter.sh/v1` NodePools like any Karpenter
//! v1 cluster, but its node classes are `eks.amazonaws.com/v1` NodeClasses
//! (there is no EC2NodeClass), and EKS owns two built-in NodePools
//! (`general-purpose`, `system`) and the NodeClass `default` they launch
//! from. AWS documents the built-in pools as impossible to modify (only to
//! enable or disable) and says to add pools and classes of one's own beside
//! them; the built-in pools launch only C, M and R instances, so no GPU.
//! Patching them would be the wrong thing even where the server allowed it:
//! rayform refuses, and says what to do instead.

use serde_json::Value;

/// The node class of Auto Mode; its CRD being served is what tells Auto Mode apart.
pub const NODECLASS_API_VERSION: &str = "eks.amazonaws.com/v1";
pub const NODECLASS_KIND: &str = "NodeClass";
/// The group a pool's `nodeClassRef` names when it launches from an Auto Mode NodeClass.
pub const NODECLASS_GROUP: &str = "eks.amazonaws.com";

/// The NodePools EKS creates (AWS: "Enable or Disable Built-in NodePools").
pub const BUILT_IN_POOLS: [&str; 2] = ["general-purpose", "system"];
/// The NodeClass EKS provisions while a built-in pool is enabled.
pub const BUILT_IN_CLASS: &str = crate::stack::EKS_DEFAULT_CLASS;

/// The help every refusal ends with: what AWS says to do instead.
pub const HELP: &str = "on EKS Auto Mode, add a NodePool and a NodeClass of your own beside the built-in ones: \
let the stack create and own them with [gpu_nodes.NAME] empty_ttl and storage in place of its [nodepool] and \
[nodeclass] (as stacks/mistral-7b-automode.toml does); or create them yourself (AWS: \"Create a Node Pool for EKS \
Auto Mode\", \"Create a Node Class for Amazon EKS\"), the NodeClass with `ephemeralStorage.size` for the model's \
room, the NodePool with GPU instances and `nodeClassRef` to it, then name that pool in the stack's [nodepool.NAME] \
and drop its [nodeclass] intent";

/// A pool EKS made: one of the built-in names, launching from an Auto Mode
/// NodeClass. (A pool of the user's own may carry either mark alone.)
pub fn is_built_in_pool(live: &Value) -> bool {
    let name = live.pointer("/metadata/name").and_then(Value::as_str);
    let group = live
        .pointer("/spec/template/spec/nodeClassRef/group")
        .and_then(Value::as_str);
    name.is_some_and(|n| BUILT_IN_POOLS.contains(&n)) && group == Some(NODECLASS_GROUP)
}

/// Why a built-in pool is not patched.
pub fn built_in_pool_why(name: &str) -> String {
    format!(
        "NodePool `{name}` is one of EKS Auto Mode's built-in pools, which EKS owns and AWS documents as not to be modified \
         (only enabled or disabled); it launches only C, M and R instances, so no GPU worker"
    )
}

/// A reason, and the help line after it, as a plan's refusal reads.
pub fn refusal(why: &str) -> String {
    format!("{why}\n  help: {HELP}")
}

/// Why a `[nodeclass]` intent cannot be carried out on Auto Mode: its
/// classes are NodeClasses, not the EC2NodeClass the intent is written for,
/// and `default` is EKS's own.
pub fn class_why(name: &str) -> String {
    let whose = if name == BUILT_IN_CLASS {
        format!(
            "the NodeClass `{name}` is the one EKS made for its built-in pools, and rayform does not change it"
        )
    } else {
        "rayform's [nodeclass] intent patches an EC2NodeClass, which Auto Mode does not have"
            .to_string()
    };
    format!(
        "this is an EKS Auto Mode cluster ({NODECLASS_API_VERSION} {NODECLASS_KIND} served, no EC2NodeClass): {whose}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(name: &str, group: &str) -> Value {
        json!({
            "metadata": { "name": name },
            "spec": { "template": { "spec": { "nodeClassRef": {
                "group": group, "kind": "NodeClass", "name": "default"
            } } } }
        })
    }

    #[test]
    fn a_built_in_pool_is_told_by_its_name_and_its_class_reference() {
        assert!(is_built_in_pool(&pool("general-purpose", NODECLASS_GROUP)));
        assert!(is_built_in_pool(&pool("system", NODECLASS_GROUP)));
        // A user's own pool on Auto Mode, and a self-managed Karpenter's pool
        // that happens to be named general-purpose.
        assert!(!is_built_in_pool(&pool("gpu", NODECLASS_GROUP)));
        assert!(!is_built_in_pool(&pool(
            "general-purpose",
            "karpenter.k8s.aws"
        )));
    }

    #[test]
    fn every_refusal_ends_with_a_help_line() {
        for why in [
            built_in_pool_why("general-purpose"),
            class_why("default"),
            class_why("gpu"),
        ] {
            let message = refusal(&why);
            assert!(!why.contains('\n'), "{why}");
            assert!(message.ends_with(&format!("\n  help: {HELP}")), "{message}");
        }
    }
}
