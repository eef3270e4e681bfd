//! The GPU NodePool and NodeClass a stack creates and owns on EKS Auto Mode
//! (`[gpu_nodes.NAME]`).
//!
//! On Auto Mode the built-in pools launch no GPU instance and may not be
//! changed, and AWS says to add a pool and a class of one's own beside them.
//! Those are then the stack's: created on apply, deleted on destroy, like a
//! manifest. What a user would otherwise copy by hand comes from two places:
//! the network and identity of the nodes (IAM role, subnets, security
//! groups) from a NodeClass the cluster already has, read at plan time by
//! `observe` ([`complete_class`]); the rest from the stack itself: the
//! storage and TTL intents, and the GPUs its RayService workers ask for.
//!
//! Pure: templates in, objects out.

use serde_json::{Map, Value, json};

use super::automode::{NODECLASS_API_VERSION, NODECLASS_GROUP, NODECLASS_KIND};
use super::fit::{GpuWorker, gpu_workers};
use crate::stack::{GpuNodesIntent, ResourceSpec, Stack};

/// On the stack's NodeClass: the NodeClass its role, subnets and security
/// groups are copied from. `observe` reads it to fill them in, and it stays
/// on the live object to say where they came from.
pub const ANNOTATION_CLASS_FROM: &str = "rayform.io/class-from";

/// The spec fields taken whole from the source NodeClass: what makes a node
/// join this cluster's network with an identity EKS accepts. (`role` and
/// `instanceProfile` exclude each other; the source has one.)
pub const COPIED_FIELDS: [&str; 6] = [
    "role",
    "instanceProfile",
    "subnetSelectorTerms",
    "securityGroupSelectorTerms",
    "podSubnetSelectorTerms",
    "podSecurityGroupSelectorTerms",
];

/// Auto Mode's name for the AWS provider's instance labels.
const LABEL: &str = "eks.amazonaws.com/instance-";

/// The NodeClass as the stack states it: its storage, and where the rest
/// comes from. Not sendable until [`complete_class`] has filled it in.
pub fn class(name: &str, intent: &GpuNodesIntent) -> Value {
    json!({
        "apiVersion": NODECLASS_API_VERSION,
        "kind": NODECLASS_KIND,
        "metadata": {
            "name": name,
            "annotations": { ANNOTATION_CLASS_FROM: intent.class_from },
        },
        "spec": { "ephemeralStorage": { "size": intent.storage } },
    })
}

/// The NodeClass a desired body says to copy from, if it is one of these.
pub fn class_source(body: &Value) -> Option<&str> {
    if body["apiVersion"] != NODECLASS_API_VERSION || body["kind"] != NODECLASS_KIND {
        return None;
    }
    body.pointer("/metadata/annotations")?
        .get(ANNOTATION_CLASS_FROM)?
        .as_str()
}

/// The stack's NodeClass with the source's [`COPIED_FIELDS`], and its
/// ephemeral storage settings (IOPS, throughput, KMS key) under the stack's
/// size. Refuses a source that names no role and no subnets: a class made
/// from it would launch nodes that cannot join.
pub fn complete_class(body: &Value, source: &Value) -> Result<Value, String> {
    let from = source["metadata"]["name"].as_str().unwrap_or("?");
    let spec = source["spec"].as_object().cloned().unwrap_or_default();
    if !spec.contains_key("role") && !spec.contains_key("instanceProfile") {
        return Err(format!(
            "the NodeClass `{from}` names no role or instanceProfile to copy"
        ));
    }
    if !spec.contains_key("subnetSelectorTerms") {
        return Err(format!(
            "the NodeClass `{from}` has no subnetSelectorTerms to copy"
        ));
    }
    let mut out = body.clone();
    let Some(target) = out["spec"].as_object_mut() else {
        return Err("the stack's NodeClass has no spec".into());
    };
    for field in COPIED_FIELDS {
        if let Some(v) = spec.get(field) {
            target.insert(field.to_string(), v.clone());
        }
    }
    let mut storage: Map<String, Value> = spec
        .get("ephemeralStorage")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let size = body.pointer("/spec/ephemeralStorage/size").cloned();
    storage.extend(size.map(|s| ("size".to_string(), s)));
    target.insert("ephemeralStorage".into(), Value::Object(storage));
    Ok(out)
}

/// The NodePool: NVIDIA instances for the stack's GPU workers, launched from
/// the stack's NodeClass of the same name, empty nodes kept `empty_ttl`.
///
/// `WhenEmpty`: Karpenter v1 removes an empty node after `consolidateAfter`
/// under every policy (see `floor`), and under `WhenEmptyOrUnderutilized`
/// it would also move a serving worker to a cheaper node, which for a model
/// server is a reload of the weights. A pool that exists for the stack's
/// workers has no reason to consolidate them.
pub fn pool(name: &str, intent: &GpuNodesIntent, workers: &[GpuWorker]) -> Value {
    let mut spec = json!({
        "nodeClassRef": { "group": NODECLASS_GROUP, "kind": NODECLASS_KIND, "name": name },
        "requirements": requirements(workers),
    });
    if !workers.is_empty() && workers.iter().all(tolerates_gpu_taint) {
        // Only pods that tolerate GPUs land on these nodes (the Ray head
        // and the rest go to the built-in pools): added only when every GPU
        // worker of the stack tolerates it.
        spec["taints"] = json!([gpu_taint()]);
    }
    json!({
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": { "name": name },
        "spec": {
            "template": { "spec": spec },
            "disruption": {
                "consolidationPolicy": "WhenEmpty",
                "consolidateAfter": format!("{}s", intent.empty_ttl.as_secs()),
            },
        },
    })
}

fn gpu_taint() -> Value {
    json!({ "key": "nvidia.com/gpu", "effect": "NoSchedule" })
}

/// The GPU worker groups of every RayService of the stack: what its pool is for.
pub fn workers_of(stack: &Stack) -> Vec<GpuWorker> {
    stack
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            ResourceSpec::RayService(o) => Some(gpu_workers(&o.object)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// NVIDIA GPU instances, on-demand, amd64 (the CUDA images are built for
/// it); as many GPUs and as much GPU memory per instance as every GPU
/// worker group of the stack asks for at least.
fn requirements(workers: &[GpuWorker]) -> Value {
    let mut out = vec![
        json!({ "key": format!("{LABEL}gpu-manufacturer"), "operator": "In", "values": ["nvidia"] }),
        json!({ "key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"] }),
        json!({ "key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"] }),
    ];
    let fewest_gpus = workers.iter().map(|w| w.gpus).min().unwrap_or(1);
    if fewest_gpus > 1 {
        out.push(json!({
            "key": format!("{LABEL}gpu-count"), "operator": "Gt",
            "values": [(fewest_gpus - 1).to_string()],
        }));
    }
    let memory: Option<Vec<u64>> = workers.iter().map(|w| w.gpu_memory_over).collect();
    if let Some(least) = memory.and_then(|m| m.into_iter().min()) {
        out.push(json!({
            "key": format!("{LABEL}gpu-memory"), "operator": "Gt",
            "values": [least.to_string()],
        }));
    }
    Value::Array(out)
}

fn tolerates_gpu_taint(worker: &GpuWorker) -> bool {
    worker.template["spec"]["tolerations"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| super::fit::tolerates(t, &gpu_taint())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::karpenter::PoolApi;
    use crate::karpenter::fit::misfits;
    use std::time::Duration;

    fn intent() -> GpuNodesIntent {
        GpuNodesIntent {
            empty_ttl: Duration::from_secs(600),
            storage: "200Gi".into(),
            class_from: "default".into(),
        }
    }

    fn default_class() -> Value {
        json!({
            "apiVersion": "eks.amazonaws.com/v1", "kind": "NodeClass",
            "metadata": { "name": "default", "resourceVersion": "7" },
            "spec": {
                "role": "AmazonEKSAutoNodeRole-demo",
                "subnetSelectorTerms": [{ "id": "subnet-1" }, { "id": "subnet-2" }],
                "securityGroupSelectorTerms": [{ "id": "sg-3" }],
                "snatPolicy": "Random",
                "ephemeralStorage": { "size": "80Gi", "iops": 3000, "kmsKeyID": "key-4" },
            }
        })
    }

    #[test]
    fn the_class_takes_role_and_selectors_from_default_and_storage_from_the_stack() {
        let body = class("gpu", &intent());
        assert_eq!(class_source(&body), Some("default"));
        let made = complete_class(&body, &default_class()).expect("complete");
        assert_eq!(
            made["spec"],
            json!({
                "role": "AmazonEKSAutoNodeRole-demo",
                "subnetSelectorTerms": [{ "id": "subnet-1" }, { "id": "subnet-2" }],
                "securityGroupSelectorTerms": [{ "id": "sg-3" }],
                "ephemeralStorage": { "size": "200Gi", "iops": 3000, "kmsKeyID": "key-4" },
            })
        );
        // Its own name, and nothing of the source's metadata.
        assert_eq!(made["metadata"]["name"], "gpu");
        assert_eq!(made["metadata"].get("resourceVersion"), None);
    }

    #[test]
    fn a_source_without_role_or_subnets_is_refused() {
        let body = class("gpu", &intent());
        let mut no_role = default_class();
        if let Some(spec) = no_role["spec"].as_object_mut() {
            spec.remove("role");
        }
        let why = complete_class(&body, &no_role).expect_err("no role");
        assert!(why.contains("names no role or instanceProfile"), "{why}");
        let mut no_subnets = default_class();
        if let Some(spec) = no_subnets["spec"].as_object_mut() {
            spec.remove("subnetSelectorTerms");
        }
        let why = complete_class(&body, &no_subnets).expect_err("no subnets");
        assert!(why.contains("no subnetSelectorTerms"), "{why}");
    }

    #[test]
    fn only_the_stacks_own_node_class_names_a_source() {
        let mut other = class("gpu", &intent());
        other["apiVersion"] = json!("karpenter.k8s.aws/v1");
        assert_eq!(class_source(&other), None);
        assert_eq!(class_source(&default_class()), None);
    }

    fn worker(gpus: u64, memory: Option<u64>, tolerations: Value) -> GpuWorker {
        let affinity = memory.map_or(json!({}), |m| {
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "eks.amazonaws.com/instance-gpu-memory", "operator": "Gt", "values": [m.to_string()]}]}]}}})
        });
        let service = json!({"spec": {"rayClusterConfig": {"workerGroupSpecs": [{
            "groupName": "gpu", "replicas": 1,
            "template": {"spec": {
                "affinity": affinity, "tolerations": tolerations,
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]
            }}
        }]}}});
        gpu_workers(&service).remove(0)
    }

    #[test]
    fn the_pool_launches_nvidia_instances_from_the_stacks_class_and_keeps_empty_nodes_the_ttl() {
        let w = worker(1, Some(20000), json!([]));
        let made = pool("gpu", &intent(), std::slice::from_ref(&w));
        assert_eq!(
            made["spec"]["template"]["spec"]["nodeClassRef"],
            json!({"group": "eks.amazonaws.com", "kind": "NodeClass", "name": "gpu"})
        );
        assert_eq!(
            made["spec"]["disruption"],
            json!({"consolidationPolicy": "WhenEmpty", "consolidateAfter": "600s"})
        );
        let requirements = &made["spec"]["template"]["spec"]["requirements"];
        assert_eq!(
            requirements[0],
            json!({"key": "eks.amazonaws.com/instance-gpu-manufacturer", "operator": "In", "values": ["nvidia"]})
        );
        assert!(
            requirements
                .as_array()
                .is_some_and(|r| r.contains(&json!({"key": "eks.amazonaws.com/instance-gpu-memory", "operator": "Gt", "values": ["20000"]})))
        );
        // Workers that do not tolerate a GPU taint get none.
        assert_eq!(made["spec"]["template"]["spec"].get("taints"), None);
        // And the plan's own check finds that it launches the worker.
        assert!(misfits(PoolApi::V1, &made, &w).is_empty());
    }

    #[test]
    fn gpu_count_and_taint_follow_the_workers() {
        let tolerant =
            json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
        let two = worker(2, None, tolerant.clone());
        let four = worker(4, None, tolerant);
        let made = pool("gpu", &intent(), &[two.clone(), four]);
        let spec = &made["spec"]["template"]["spec"];
        assert!(spec["requirements"].as_array().is_some_and(|r| r.contains(
            &json!({"key": "eks.amazonaws.com/instance-gpu-count", "operator": "Gt", "values": ["1"]})
        )));
        // One worker group without a memory floor: no memory requirement.
        assert!(!spec.to_string().contains("gpu-memory"));
        assert_eq!(
            spec["taints"],
            json!([{"key": "nvidia.com/gpu", "effect": "NoSchedule"}])
        );
        assert!(misfits(PoolApi::V1, &made, &two).is_empty());
    }
}
