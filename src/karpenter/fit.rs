//! Whether the patches reach the GPU workers: a pool patched for slow image
//! pulls and a class sized for model weights help nothing if the pool
//! launches its nodes from another class, cannot launch a GPU instance,
//! taints its nodes against the workers, or has limits no GPU instance fits
//! in. Karpenter says so only once pods stay Pending (its `FailedScheduling`
//! events); the plan can say it first.
//!
//! Everything here reads the live pool and the RayService as they are, and
//! answers in sentences for the plan's warnings.

use serde_json::Value;

use super::floor::quantity_bytes;
use super::{PoolApi, automode};

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
    /// `nvidia.com/gpu` per pod.
    pub gpus: u64,
    /// Pods the group starts with (`replicas`, else `minReplicas`).
    pub pods: u64,
    /// What one pod requests of the resources pools limit (millicores, bytes).
    pub cpu_milli: u128,
    pub memory_bytes: u128,
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
                pods: g["replicas"]
                    .as_u64()
                    .or_else(|| g["minReplicas"].as_u64())
                    .unwrap_or(1),
                cpu_milli: requested(&template, "cpu"),
                memory_bytes: requested(&template, "memory") / 1000,
                gpu_memory_over: gpu_memory_over(&template),
                template,
            })
        })
        .collect()
}

/// A resource the pod's containers request, in thousandths (millicores for
/// cpu); a container without requests gets its limits, as the API server
/// defaults them.
fn requested(template: &Value, resource: &str) -> u128 {
    template["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let r = &c["resources"];
            r["requests"][resource]
                .as_str()
                .or_else(|| r["limits"][resource].as_str())
                .and_then(quantity_milli)
        })
        .sum()
}

/// A Kubernetes quantity in thousandths (`500m` → 500, `4` → 4000, `1Gi` →
/// 1073741824000); `None` for forms rayform does not compare.
pub fn quantity_milli(q: &str) -> Option<u128> {
    match q.strip_suffix('m') {
        Some(milli) if !milli.is_empty() && milli.bytes().all(|b| b.is_ascii_digit()) => {
            milli.parse().ok()
        }
        _ => quantity_bytes(q)?.checked_mul(1000),
    }
}

const GPU_MEMORY: &str = "karpenter.k8s.aws/instance-gpu-memory";
const GPU: &str = "nvidia.com/gpu";
/// No EC2 instance with NVIDIA GPUs has fewer vCPUs per GPU (g4dn, g5 and
/// g6 `.xlarge`: 4 for one; p2.16xlarge: 64 for 16), so a pool limit on cpu
/// below this rules the instance out whatever the pod requests.
const MIN_VCPUS_PER_GPU: u64 = 4;

/// `instance-gpu-memory Gt N` in the pods' required node affinity.
fn gpu_memory_over(template: &Value) -> Option<u64> {
    template
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t["matchExpressions"].as_array())
        .flatten()
        .filter(|e| {
            e["key"].as_str().map(provider_label).as_deref() == Some(GPU_MEMORY)
                && e["operator"] == "Gt"
        })
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

/// A pool's limit on a resource, in thousandths.
fn limit(api: PoolApi, pool: &Value, resource: &str) -> Option<u128> {
    let limits = match api {
        PoolApi::V1alpha5 => pool.pointer("/spec/limits/resources"),
        _ => pool.pointer("/spec/limits"),
    }?;
    let q = &limits[resource];
    q.as_str()
        .and_then(quantity_milli)
        .or_else(|| q.as_u64().map(|n| u128::from(n) * 1000))
}

/// The pool's limit on `nvidia.com/gpu`, if it has one.
pub fn gpu_limit(api: PoolApi, pool: &Value) -> Option<u64> {
    limit(api, pool, GPU).and_then(|m| u64::try_from(m / 1000).ok())
}

/// Karpenter launches no instance whose capacity exceeds what the pool's
/// limits leave; an instance for one worker pod has at least the pod's
/// GPUs, its cpu (and [`MIN_VCPUS_PER_GPU`] per GPU) and its memory.
fn over_limits(api: PoolApi, pool: &Value, worker: &GpuWorker) -> Vec<String> {
    let gpus = u128::from(worker.gpus);
    let vcpus = u128::from(worker.gpus * MIN_VCPUS_PER_GPU) * 1000;
    let mut out = Vec::new();
    if let Some(cap) = limit(api, pool, GPU)
        && cap < gpus * 1000
    {
        out.push(format!(
            "its limits allow {} {GPU} in all, and one worker pod needs {gpus}",
            milli(cap)
        ));
    }
    if let Some(cap) = limit(api, pool, "cpu") {
        if cap < worker.cpu_milli {
            out.push(format!(
                "its limits allow cpu {} in all, and one worker pod requests {}",
                milli(cap),
                milli(worker.cpu_milli)
            ));
        } else if cap < vcpus {
            out.push(format!(
                "its limits allow cpu {} in all, and no instance with {gpus} NVIDIA GPU{} has fewer than {} vCPUs",
                milli(cap),
                if gpus == 1 { "" } else { "s" },
                vcpus / 1000
            ));
        }
    }
    if let Some(cap) = limit(api, pool, "memory")
        && cap < worker.memory_bytes * 1000
    {
        out.push(format!(
            "its limits allow memory {} in all, and one worker pod requests {}",
            bytes(cap / 1000),
            bytes(worker.memory_bytes)
        ));
    }
    out
}

/// Bytes as a user writes them (`24Gi`).
fn bytes(n: u128) -> String {
    match n {
        n if n > 0 && n.is_multiple_of(1 << 30) => format!("{}Gi", n >> 30),
        n if n > 0 && n.is_multiple_of(1 << 20) => format!("{}Mi", n >> 20),
        n => n.to_string(),
    }
}

/// A quantity in thousandths, as a user writes it.
fn milli(n: u128) -> String {
    if n.is_multiple_of(1000) {
        (n / 1000).to_string()
    } else {
        format!("{n}m")
    }
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
    out.extend(foreign_labels(api, pool, worker));
    out.extend(over_limits(api, pool, worker));
    out
}

/// EKS Auto Mode's nodes carry `eks.amazonaws.com/instance-*` labels, a
/// self-managed Karpenter's `karpenter.k8s.aws/instance-*`: a worker that
/// requires a label of the other kind never gets a node from this pool.
fn foreign_labels(api: PoolApi, pool: &Value, worker: &GpuWorker) -> Option<String> {
    if api != PoolApi::V1 {
        return None;
    }
    let group = pool
        .pointer("/spec/template/spec/nodeClassRef/group")?
        .as_str()?;
    let (foreign, own) = match group {
        automode::NODECLASS_GROUP => ("karpenter.k8s.aws/", "eks.amazonaws.com/instance-*"),
        "karpenter.k8s.aws" => (
            "eks.amazonaws.com/instance-",
            "karpenter.k8s.aws/instance-*",
        ),
        _ => return None,
    };
    let spec = &worker.template["spec"];
    let selected = spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys().map(String::as_str));
    let required = spec
        .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t["matchExpressions"].as_array())
        .flatten()
        .filter_map(|e| e["key"].as_str());
    let mut keys: Vec<&str> = selected
        .chain(required)
        .filter(|k| k.starts_with(foreign))
        .collect();
    keys.dedup();
    (!keys.is_empty()).then(|| {
        format!(
            "its nodes come from a node class of {group} and are labelled {own}, and the workers require {}",
            keys.join(", ")
        )
    })
}

/// EKS Auto Mode names the AWS provider's instance labels under its own
/// prefix (`eks.amazonaws.com/instance-category`, ...): the same requirement.
fn provider_label(key: &str) -> std::borrow::Cow<'_, str> {
    match key.strip_prefix("eks.amazonaws.com/instance-") {
        Some(rest) => format!("karpenter.k8s.aws/instance-{rest}").into(),
        None => key.into(),
    }
}

/// A requirement that rules out every instance the worker can run on.
fn excludes_gpus(requirement: &Value, worker: &GpuWorker) -> Option<String> {
    let gpus = worker.gpus;
    let memory = worker.gpu_memory_over.unwrap_or(0);
    let key = provider_label(requirement["key"].as_str()?);
    let op = requirement["operator"].as_str()?;
    let values: Vec<&str> = requirement["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let list = values.join(", ");
    let numbers: Vec<u64> = values.iter().filter_map(|v| v.parse().ok()).collect();
    let gpu_category = |v: &&str| *v == "g" || *v == "p";
    match (key.as_ref(), op) {
        ("karpenter.k8s.aws/instance-category", "In") if !values.iter().any(gpu_category) => Some(
            format!("it allows instance categories {list}, none with NVIDIA GPUs (g, p)"),
        ),
        ("karpenter.k8s.aws/instance-category", "NotIn")
            if values.contains(&"g") && values.contains(&"p") =>
        {
            Some(format!("it excludes instance categories {list}"))
        }
        ("karpenter.k8s.aws/instance-family", "In") if !values.iter().any(|f| nvidia_family(f)) => {
            Some(format!(
                "it allows instance families {list}, none with NVIDIA GPUs{}",
                amd_note(&values)
            ))
        }
        ("node.kubernetes.io/instance-type", "In")
            if !values
                .iter()
                .any(|t| nvidia_family(t.split('.').next().unwrap_or_default())) =>
        {
            Some(format!(
                "it allows instance types {list}, none with NVIDIA GPUs{}",
                amd_note(&values)
            ))
        }
        ("karpenter.k8s.aws/instance-gpu-manufacturer", "In") if !values.contains(&"nvidia") => {
            Some(format!("it allows GPU manufacturers {list}, not nvidia"))
        }
        ("karpenter.k8s.aws/instance-gpu-manufacturer", "NotIn") if values.contains(&"nvidia") => {
            Some("it excludes NVIDIA GPUs".to_string())
        }
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

/// Whether an EC2 instance family has NVIDIA GPUs: the `g` and `p`
/// families do, but for g4ad, whose GPUs are AMD Radeon Pro V520s (they
/// advertise `amd.com/gpu`, never `nvidia.com/gpu`).
fn nvidia_family(family: &str) -> bool {
    (family.starts_with('g') || family.starts_with('p')) && !AMD_FAMILIES.contains(&family)
}

/// EC2 families in the GPU categories whose GPUs are AMD's.
const AMD_FAMILIES: [&str; 1] = ["g4ad"];

fn amd_note(values: &[&str]) -> &'static str {
    let amd = values
        .iter()
        .any(|v| AMD_FAMILIES.contains(&v.split('.').next().unwrap_or_default()));
    if amd { " (g4ad's GPUs are AMD's)" } else { "" }
}

pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
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
            pods: 1,
            cpu_milli: 6000,
            memory_bytes: 24 << 30,
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
    fn a_pool_of_amd_gpus_cannot_launch_an_nvidia_worker() {
        let g4ad = |key: &str, values: Value| {
            pool(
                json!([{"key": key, "operator": "In", "values": values}]),
                json!([]),
            )
        };
        let w = worker(json!([]));
        let family = g4ad("karpenter.k8s.aws/instance-family", json!(["g4ad"]));
        assert_eq!(
            misfits(PoolApi::V1, &family, &w),
            ["it allows instance families g4ad, none with NVIDIA GPUs (g4ad's GPUs are AMD's)"]
        );
        let types = g4ad("node.kubernetes.io/instance-type", json!(["g4ad.xlarge"]));
        assert_eq!(
            misfits(PoolApi::V1, &types, &w),
            ["it allows instance types g4ad.xlarge, none with NVIDIA GPUs (g4ad's GPUs are AMD's)"]
        );
        let amd = g4ad(
            "karpenter.k8s.aws/instance-gpu-manufacturer",
            json!(["amd"]),
        );
        assert_eq!(
            misfits(PoolApi::V1, &amd, &w),
            ["it allows GPU manufacturers amd, not nvidia"]
        );
        let mixed = g4ad("karpenter.k8s.aws/instance-family", json!(["g4ad", "g5"]));
        assert!(misfits(PoolApi::V1, &mixed, &w).is_empty());
        let gpu_type = g4ad("node.kubernetes.io/instance-type", json!(["g5.2xlarge"]));
        assert!(misfits(PoolApi::V1, &gpu_type, &w).is_empty());
    }

    #[test]
    fn auto_modes_own_instance_labels_are_read_alike() {
        let general_purpose = pool(
            json!([{"key": "eks.amazonaws.com/instance-category", "operator": "In", "values": ["c", "m", "r"]}]),
            json!([]),
        );
        assert_eq!(
            misfits(PoolApi::V1, &general_purpose, &worker(json!([]))),
            ["it allows instance categories c, m, r, none with NVIDIA GPUs (g, p)"]
        );
    }

    #[test]
    fn a_worker_asking_for_the_other_karpenters_labels_is_named() {
        let mut auto_mode = pool(json!([]), json!([]));
        auto_mode["spec"]["template"]["spec"]["nodeClassRef"] =
            json!({"group": "eks.amazonaws.com", "kind": "NodeClass", "name": "gpu"});
        let mut w = worker(json!([]));
        w.template["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": GPU_MEMORY, "operator": "Gt", "values": ["20000"]}]}]}}});
        assert_eq!(
            misfits(PoolApi::V1, &auto_mode, &w),
            [
                "its nodes come from a node class of eks.amazonaws.com and are labelled eks.amazonaws.com/instance-*, and the workers require karpenter.k8s.aws/instance-gpu-memory"
            ]
        );
        // The same worker on a self-managed Karpenter's pool is fine.
        let mut own = auto_mode.clone();
        own["spec"]["template"]["spec"]["nodeClassRef"]["group"] = json!("karpenter.k8s.aws");
        assert!(misfits(PoolApi::V1, &own, &w).is_empty());
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

    fn limited(limits: Value) -> Value {
        let mut p = pool(json!([]), json!([]));
        p["spec"]["limits"] = limits;
        p
    }

    /// Karpenter v1.14 filters out every instance type whose capacity
    /// exceeds what the pool's limits leave (scheduler.go
    /// filterByRemainingResources), whatever the pod requests.
    #[test]
    fn limits_no_gpu_instance_fits_in_are_named() {
        let w = worker(json!([]));
        assert_eq!(
            misfits(PoolApi::V1, &limited(json!({"nvidia.com/gpu": "0"})), &w),
            ["its limits allow 0 nvidia.com/gpu in all, and one worker pod needs 1"]
        );
        assert_eq!(
            misfits(PoolApi::V1, &limited(json!({"cpu": "2"})), &w),
            ["its limits allow cpu 2 in all, and one worker pod requests 6"]
        );
        let small = GpuWorker {
            cpu_milli: 500,
            ..w.clone()
        };
        assert_eq!(
            misfits(PoolApi::V1, &limited(json!({"cpu": "3500m"})), &small),
            [
                "its limits allow cpu 3500m in all, and no instance with 1 NVIDIA GPU has fewer than 4 vCPUs"
            ]
        );
        assert_eq!(
            misfits(PoolApi::V1, &limited(json!({"memory": "16Gi"})), &w),
            ["its limits allow memory 16Gi in all, and one worker pod requests 24Gi"]
        );
        let v1alpha5 = json!({"spec": {"limits": {"resources": {"nvidia.com/gpu": 0}}}});
        assert_eq!(misfits(PoolApi::V1alpha5, &v1alpha5, &w).len(), 1);
    }

    #[test]
    fn limits_a_gpu_instance_fits_in_are_not_named() {
        let w = worker(json!([]));
        let roomy = limited(json!({"nvidia.com/gpu": "1", "cpu": "8", "memory": "32Gi"}));
        assert!(misfits(PoolApi::V1, &roomy, &w).is_empty());
        assert_eq!(gpu_limit(PoolApi::V1, &roomy), Some(1));
        assert!(misfits(PoolApi::V1, &limited(json!({"cpu": "1000"})), &w).is_empty());
        assert_eq!(quantity_milli("250m"), Some(250));
        assert_eq!(quantity_milli("m"), None);
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
