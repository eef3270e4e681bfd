//! Whether the patches reach the GPU workers: a pool patched for slow image
//! pulls and a class sized for model weights help nothing if the pool
//! launches its nodes from another class, cannot launch a GPU instance, or
//! taints its nodes against the workers. Karpenter says so only once pods
//! stay Pending; the plan can say it first.
//!
//! Everything here reads the live pool and the RayService as they are, and
//! answers in sentences for the plan's warnings.

use serde_json::Value;

use super::PoolApi;

/// A pool as it is live (patched by a stack) or as a stack will create it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolObject {
    pub name: String,
    pub api: PoolApi,
    pub object: Value,
}

/// A RayService worker group that asks for GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuWorker {
    pub group: String,
    pub gpus: u64,
    /// More GPU memory (MiB) than this, when the pods' node affinity asks for it.
    pub gpu_memory_over: Option<u64>,
    pub template: Value,
}

/// The worker groups of a RayService that request `nvidia.com/gpu`.
pub fn gpu_workers(rayservice: &Value) -> Vec<GpuWorker> {
    rayservice
        .pointer("/spec/rayClusterConfig/workerGroupSpecs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|g| {
            let template = g["template"].clone();
            let gpus = template["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    let gpu = &c["resources"]["limits"]["nvidia.com/gpu"];
                    let gpu = if gpu.is_null() {
                        &c["resources"]["requests"]["nvidia.com/gpu"]
                    } else {
                        gpu
                    };
                    gpu.as_str()
                        .and_then(|s| s.parse::<u64>().ok())
                        .or(gpu.as_u64())
                })
                .sum::<u64>();
            (gpus > 0).then(|| GpuWorker {
                group: g["groupName"].as_str().unwrap_or("?").to_string(),
                gpus,
                gpu_memory_over: gpu_memory_over(&template),
                template,
            })
        })
        .collect()
}

const GPU_MEMORY: &str = "karpenter.k8s.aws/instance-gpu-memory";

/// `instance-gpu-memory Gt N` in the pods' required node affinity.
fn gpu_memory_over(template: &Value) -> Option<u64> {
    template
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t["matchExpressions"].as_array())
        .flatten()
        .filter(|e| e["key"] == GPU_MEMORY && e["operator"] == "Gt")
        .find_map(|e| e["values"][0].as_str()?.parse().ok())
}

fn spec_path(api: PoolApi, field: &str) -> String {
    match api {
        PoolApi::V1alpha5 => format!("/spec/{field}"),
        _ => format!("/spec/template/spec/{field}"),
    }
}

/// The node class a pool launches its nodes from.
pub fn class_of(api: PoolApi, pool: &Value) -> Option<&str> {
    let path = match api {
        PoolApi::V1alpha5 => "/spec/providerRef/name",
        _ => "/spec/template/spec/nodeClassRef/name",
    };
    pool.pointer(path).and_then(Value::as_str)
}

/// Whether the worker's pods may go to this pool at all (a node selector
/// naming another pool rules it out).
pub fn may_use(api: PoolApi, pool_name: &str, worker: &GpuWorker) -> bool {
    let label = match api {
        PoolApi::V1alpha5 => "karpenter.sh/provisioner-name",
        _ => "karpenter.sh/nodepool",
    };
    worker.template["spec"]["nodeSelector"][label]
        .as_str()
        .is_none_or(|wanted| wanted == pool_name)
}

/// Why this pool cannot launch a node for this worker; empty when it can.
pub fn misfits(api: PoolApi, pool: &Value, worker: &GpuWorker) -> Vec<String> {
    let requirements: Vec<&Value> = pool
        .pointer(&spec_path(api, "requirements"))
        .and_then(Value::as_array)
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    let mut out: Vec<String> = requirements
        .iter()
        .filter_map(|r| excludes_gpus(r, worker))
        .collect();
    let tolerations = worker.template["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for taint in pool
        .pointer(&spec_path(api, "taints"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let effect = taint["effect"].as_str().unwrap_or_default();
        if matches!(effect, "NoSchedule" | "NoExecute")
            && !tolerations.iter().any(|t| tolerates(t, taint))
        {
            out.push(format!(
                "its nodes are tainted {}={}:{effect}, which the workers do not tolerate",
                taint["key"].as_str().unwrap_or_default(),
                taint["value"].as_str().unwrap_or_default(),
            ));
        }
    }
    out
}

/// A requirement that rules out every instance the worker can run on.
fn excludes_gpus(requirement: &Value, worker: &GpuWorker) -> Option<String> {
    let gpus = worker.gpus;
    let memory = worker.gpu_memory_over.unwrap_or(0);
    let key = requirement["key"].as_str()?;
    let op = requirement["operator"].as_str()?;
    let values: Vec<&str> = requirement["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let list = values.join(", ");
    let numbers: Vec<u64> = values.iter().filter_map(|v| v.parse().ok()).collect();
    let gpu_family = |v: &&str| v.starts_with('g') || v.starts_with('p');
    match (key, op) {
        ("karpenter.k8s.aws/instance-category", "In") if !values.iter().any(gpu_family) => Some(
            format!("it allows instance categories {list}, none with NVIDIA GPUs (g, p)"),
        ),
        ("karpenter.k8s.aws/instance-category", "NotIn")
            if values.contains(&"g") && values.contains(&"p") =>
        {
            Some(format!("it excludes instance categories {list}"))
        }
        ("karpenter.k8s.aws/instance-family", "In") if !values.iter().any(gpu_family) => Some(
            format!("it allows instance families {list}, none with NVIDIA GPUs"),
        ),
        ("karpenter.k8s.aws/instance-gpu-count", "Lt")
            if numbers.first().is_some_and(|n| *n <= gpus) =>
        {
            Some(format!("it requires fewer than {list} GPUs per instance"))
        }
        ("karpenter.k8s.aws/instance-gpu-count", "In")
            if !numbers.is_empty() && numbers.iter().all(|n| *n < gpus) =>
        {
            Some(format!("it allows {list} GPUs per instance"))
        }
        ("karpenter.k8s.aws/instance-gpu-count", "DoesNotExist") => {
            Some("it requires instances without GPUs".to_string())
        }
        (GPU_MEMORY, "Lt") if numbers.first().is_some_and(|n| *n <= memory + 1) => Some(format!(
            "it allows less than {list} MiB of GPU memory, and the workers need more than {memory}"
        )),
        (GPU_MEMORY, "In") if !numbers.is_empty() && numbers.iter().all(|n| *n <= memory) => Some(
            format!("it allows {list} MiB of GPU memory, and the workers need more than {memory}"),
        ),
        _ => None,
    }
}

fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let key = toleration["key"].as_str().unwrap_or_default();
    let effect = toleration["effect"].as_str().unwrap_or_default();
    let key_matches = key.is_empty() || Some(key) == taint["key"].as_str();
    let effect_matches = effect.is_empty() || Some(effect) == taint["effect"].as_str();
    let value_matches = match toleration["operator"].as_str() {
        Some("Exists") => true,
        _ => {
            toleration["value"] == taint["value"]
                || (toleration["value"].is_null() && taint["value"].is_null())
        }
    };
    key_matches && effect_matches && value_matches
}

/// Each pool must launch its nodes from a class the stack sizes.
pub fn class_references(pools: &[PoolObject], classes: &[String]) -> Vec<String> {
    if classes.is_empty() {
        return Vec::new();
    }
    pools
        .iter()
        .filter_map(|p| {
            let class = class_of(p.api, &p.object)?;
            (!classes.iter().any(|c| c == class)).then(|| {
                format!(
                    "{} `{}` launches its nodes from `{class}`, not from {} of this stack: those nodes will not get its storage",
                    p.api.kind(),
                    p.name,
                    classes
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect()
}

/// Each GPU worker group must fit at least one of the stack's pools.
pub fn worker_fit(
    address: &impl std::fmt::Display,
    rayservice: &Value,
    pools: &[PoolObject],
) -> Vec<String> {
    if pools.is_empty() {
        return Vec::new();
    }
    gpu_workers(rayservice)
        .into_iter()
        .filter_map(|worker| {
            let reasons: Vec<String> = pools
                .iter()
                .filter(|p| may_use(p.api, &p.name, &worker))
                .map(|p| {
                    let why = misfits(p.api, &p.object, &worker);
                    (!why.is_empty())
                        .then(|| format!("{} `{}`: {}", p.api.kind(), p.name, why.join("; ")))
                })
                .collect::<Option<Vec<String>>>()?;
            // A node selector naming a pool outside the stack: not ours to judge.
            (!reasons.is_empty()).then(|| {
                format!(
                    "{address}: no pool of the stack can launch worker group `{}` ({} nvidia.com/gpu per pod): {}",
                    worker.group,
                    worker.gpus,
                    reasons.join(". ")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn worker(tolerations: Value) -> GpuWorker {
        GpuWorker {
            group: "gpu-group".into(),
            gpus: 1,
            gpu_memory_over: Some(20000),
            template: json!({"spec": {"tolerations": tolerations}}),
        }
    }

    fn pool(requirements: Value, taints: Value) -> Value {
        json!({"spec": {"template": {"spec": {"requirements": requirements, "taints": taints,
            "nodeClassRef": {"name": "gpu"}}}}})
    }

    #[test]
    fn a_pool_of_cpu_categories_cannot_launch_a_gpu_worker() {
        let cpu = pool(
            json!([{"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]}]),
            json!([]),
        );
        let why = misfits(PoolApi::V1, &cpu, &worker(json!([])));
        assert_eq!(
            why,
            ["it allows instance categories c, m, r, none with NVIDIA GPUs (g, p)"]
        );
        let gpu = pool(
            json!([{"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["g"]}]),
            json!([]),
        );
        assert!(misfits(PoolApi::V1, &gpu, &worker(json!([]))).is_empty());
    }

    #[test]
    fn a_pool_of_small_gpus_cannot_hold_the_model() {
        let t4 = pool(
            json!([{"key": GPU_MEMORY, "operator": "In", "values": ["16384"]}]),
            json!([]),
        );
        assert_eq!(
            misfits(PoolApi::V1, &t4, &worker(json!([]))),
            ["it allows 16384 MiB of GPU memory, and the workers need more than 20000"]
        );
    }

    #[test]
    fn a_taint_the_workers_do_not_tolerate_is_named() {
        let tainted = pool(
            json!([]),
            json!([{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]),
        );
        assert_eq!(
            misfits(PoolApi::V1, &tainted, &worker(json!([]))),
            ["its nodes are tainted nvidia.com/gpu=:NoSchedule, which the workers do not tolerate"]
        );
        let tolerant = worker(
            json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
        );
        assert!(misfits(PoolApi::V1, &tainted, &tolerant).is_empty());
    }

    #[test]
    fn gpu_workers_are_read_from_limits_or_requests() {
        let rs = json!({"spec": {"rayClusterConfig": {"workerGroupSpecs": [
            {"groupName": "cpu", "template": {"spec": {"containers": [{"resources": {}}]}}},
            {"groupName": "gpu", "template": {"spec": {"containers": [{"resources": {"requests": {"nvidia.com/gpu": "2"}}}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": GPU_MEMORY, "operator": "Gt", "values": ["20000"]}]}]}}}}}},
        ]}}});
        let found = gpu_workers(&rs);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].group.as_str(), found[0].gpus), ("gpu", 2));
        assert_eq!(found[0].gpu_memory_over, Some(20000));
        assert_eq!(
            class_of(PoolApi::V1, &pool(json!([]), json!([]))),
            Some("gpu")
        );
    }
}
