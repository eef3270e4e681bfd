//! The checks themselves, one function per line of the report.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Check;
use crate::cluster::kuberay::{self, Operator};
use crate::cluster::{Access, Cluster, Kind};
use crate::karpenter::fit::{self, PoolObject};
use crate::karpenter::{ClassApi, PoolApi, automode};
use crate::observe::{api_holding, served, served_stored_first};
use crate::plan::rollout;
use crate::stack::{ResourceSpec, SecretSource, Stack, StateLocation};

pub async fn version(cluster: &Cluster) -> Check {
    let server = &cluster.id.server;
    match cluster.server_version().await {
        Ok(v) => Check::ok("cluster", format!("{server} answers, Kubernetes {v}")),
        Err(e) => Check::fail(
            "cluster",
            e.to_string(),
            "check the kubeconfig context and that the API server is up",
        ),
    }
}

pub fn kuberay_crds(cluster: &Cluster) -> Check {
    let missing: Vec<&str> = ["RayService", "RayCluster"]
        .into_iter()
        .filter(|k| cluster.kind("ray.io/v1", k).is_none())
        .collect();
    if missing.is_empty() {
        Check::ok(
            "KubeRay CRDs",
            "ray.io/v1 RayService and RayCluster are served",
        )
    } else {
        Check::fail(
            "KubeRay CRDs",
            format!("ray.io/v1 {} not served", missing.join(" and ")),
            "install KubeRay (its Helm chart kuberay-operator brings the CRDs)",
        )
    }
}

pub async fn kuberay_operator(cluster: &Cluster) -> Check {
    match kuberay::operator(cluster).await {
        Ok(Operator { found, image_tag }) => {
            // Only a running operator is worth the LIST of every RayCluster.
            let built_by = kuberay_version(cluster).await;
            let version = image_tag.or(built_by);
            let note = version_note(version.clone());
            match version.as_deref().and_then(unsupported) {
                Some(why) => Check::warn(
                    "KubeRay operator",
                    format!("{found}; {note}: {why}"),
                    Some("upgrade KubeRay to v1.3 or later".into()),
                ),
                None => Check::ok("KubeRay operator", format!("{found}; {note}")),
            }
        }
        Err(missing) => Check::fail("KubeRay operator", missing.message, missing.help),
    }
}

/// `ray.io/kuberay-version` of any RayCluster: the operator that built it.
async fn kuberay_version(cluster: &Cluster) -> Option<String> {
    let kind = cluster.kind("ray.io/v1", "RayCluster")?;
    let versions = cluster
        .list_each(&kind, None, "", |c| {
            c.pointer("/metadata/annotations/ray.io~1kuberay-version")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .await
        .ok()?;
    versions.into_iter().max()
}

/// Why rayform's wait cannot follow this KubeRay version, if it cannot.
/// Up to v1.2 KubeRay writes `status.observedGeneration` only along with a
/// change in the statuses it compares, so a spec change that moves none of
/// them (a worker group's replicas) never shows its generation observed, and
/// the wait, which needs it, times out.
fn unsupported(version: &str) -> Option<String> {
    let mut parts = version.trim_start_matches('v').split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    ((major, minor) < (1, 3)).then(|| {
        format!(
            "KubeRay {version} writes status.observedGeneration only when the statuses it compares change, \
             so a change that moves none of them (a worker group's replicas) never reads as observed and apply's wait times out (not supported; --no-wait still applies)"
        )
    })
}

fn version_note(version: Option<String>) -> String {
    match version {
        Some(v) if v.starts_with(rollout::RULES) => {
            format!("version {v}, whose rollouts plans describe")
        }
        Some(v) => format!(
            "version {v}; plans describe rollouts by the rules of {}",
            rollout::RULES
        ),
        None => "version unknown (no RayCluster carries ray.io/kuberay-version yet)".into(),
    }
}

pub fn karpenter_apis(cluster: &Cluster) -> Check {
    let served = served(cluster);
    let list: Vec<String> = served
        .pools
        .iter()
        .map(|a| format!("{} {}", a.api_version(), a.kind()))
        .chain(
            served
                .classes
                .iter()
                .map(|a| format!("{} {}", a.api_version(), a.kind())),
        )
        .collect();
    if list.is_empty() {
        return Check::warn(
            "Karpenter",
            "no Karpenter API is served: nodes will not be launched for the workers",
            Some(
                "install Karpenter, or drop the stack's [nodepool] and [nodeclass] intents".into(),
            ),
        );
    }
    if served.auto_mode {
        return Check::ok("Karpenter", auto_mode_form(&list, &served));
    }
    let release = if served.drift_off_by_default() && served.pools.len() > 1 {
        " (Karpenter v0.32: both generations served)"
    } else {
        ""
    };
    Check::ok("Karpenter", format!("{}{release}", list.join(", ")))
}

/// What an Auto Mode cluster is, and the stack form that fits it: the
/// mission stack's [nodeclass] patch of an EC2NodeClass has nothing to
/// patch there, and EKS's own pools are not to be patched.
fn auto_mode_form(list: &[String], served: &crate::karpenter::Served) -> String {
    let mut apis = list.to_vec();
    apis.push(format!(
        "{} {}",
        automode::NODECLASS_API_VERSION,
        automode::NODECLASS_KIND
    ));
    let form = if served.classes.is_empty() {
        "a stack fits that creates its own GPU NodePool and NodeClass with [gpu_nodes.NAME] (stacks/mistral-7b-automode.toml), \
         or whose [nodepool.NAME] names a NodePool of your own (GPU instances, from a NodeClass of your own sized with ephemeralStorage.size) and which has no [nodeclass]; \
         not the self-managed form of stacks/mistral-7b.toml, whose [nodeclass] patches an EC2NodeClass"
    } else {
        "EC2NodeClasses are served too (a self-managed Karpenter beside it): a stack fits whose [nodepool] and [nodeclass] name objects of that Karpenter, or a NodePool of your own"
    };
    format!(
        "{}: EKS Auto Mode, Karpenter built in; its NodePools {} and NodeClass {} are EKS's own; {form}",
        apis.join(", "),
        automode::BUILT_IN_POOLS.join(" and "),
        automode::BUILT_IN_CLASS,
    )
}

/// The objects the stack patches exist, and its pools can launch its GPU workers.
/// Long on purpose: one line of the report per intent and generation, in
/// the order a user reads the report, from one reading of the objects.
pub async fn karpenter_objects(cluster: &Cluster, stack: &Stack) -> Vec<Check> {
    let served = served_stored_first(cluster).await;
    let mut checks = Vec::new();
    let mut pools = Vec::new();
    let mut classes = Vec::new();
    for r in &stack.resources {
        let name = &r.address.name;
        let subject = r.address.to_string();
        let found = match &r.spec {
            ResourceSpec::NodeClass(_) if served.auto_mode && served.classes.is_empty() => {
                checks.push(Check::fail(
                    subject,
                    automode::class_why(name),
                    automode::HELP,
                ));
                continue;
            }
            ResourceSpec::NodePool(_) => {
                let api = api_holding(cluster, &served.pools, name, |a: PoolApi| {
                    (a.api_version(), a.kind())
                })
                .await
                .ok()
                .flatten();
                let found = find(cluster, api.map(|a| (a.api_version(), a.kind())), name).await;
                // A built-in pool fails below; whether it could launch the
                // workers is beside the point (and its labels are Auto Mode's).
                if let (Some(api), Ok(live)) = (api, &found)
                    && !automode::is_built_in_pool(live)
                {
                    pools.push(PoolObject {
                        name: name.clone(),
                        api,
                        object: live.clone(),
                    });
                }
                if found.is_ok() && api != Some(PoolApi::V1alpha5) {
                    checks.extend(provisioner_beside(cluster, &served, name, &mut pools).await);
                }
                found
            }
            ResourceSpec::NodeClass(_) => {
                classes.push(name.clone());
                let api = api_holding(cluster, &served.classes, name, |a: ClassApi| {
                    (a.api_version(), a.kind())
                })
                .await
                .ok()
                .flatten();
                find(cluster, api.map(|a| (a.api_version(), a.kind())), name).await
            }
            ResourceSpec::GpuClass(intent) => {
                checks.push(super::gpu_nodes::class(cluster, &served, name, intent).await);
                continue;
            }
            ResourceSpec::GpuPool(intent) => {
                let (check, pool) = super::gpu_nodes::pool(stack, name, intent);
                checks.push(check);
                pools.push(pool);
                classes.push(name.clone());
                continue;
            }
            _ => continue,
        };
        checks.push(match found {
            Ok(o) if automode::is_built_in_pool(&o) => {
                Check::fail(subject, automode::built_in_pool_why(name), automode::HELP)
            }
            Ok(o) => Check::ok(
                subject,
                format!(
                    "{} {} `{name}` exists",
                    o["apiVersion"].as_str().unwrap_or_default(),
                    o["kind"].as_str().unwrap_or_default()
                ),
            ),
            Err(why) => Check::fail(
                subject,
                why,
                "name an existing object in the stack, or create it first",
            ),
        });
    }
    checks.extend(workers_fit(stack, &pools, &classes));
    checks
}

/// Karpenter v0.32's Provisioner of a NodePool's name, which launches
/// nodes too and gets the intent as well: said, and a pool the workers'
/// fit is judged against.
async fn provisioner_beside(
    cluster: &Cluster,
    served: &crate::karpenter::Served,
    name: &str,
    pools: &mut Vec<PoolObject>,
) -> Option<Check> {
    let api = PoolApi::V1alpha5;
    if !served.pools.contains(&api) {
        return None;
    }
    let live = find(cluster, Some((api.api_version(), api.kind())), name)
        .await
        .ok()?;
    pools.push(PoolObject {
        name: name.to_string(),
        api,
        object: live,
    });
    Some(Check::ok(
        format!("provisioner.{name}"),
        format!(
            "{} Provisioner `{name}` exists beside the NodePool: Karpenter v0.32 launches from both, and the intent is patched into both",
            api.api_version()
        ),
    ))
}

async fn find(cluster: &Cluster, api: Option<(&str, &str)>, name: &str) -> Result<Value, String> {
    let Some((api_version, kind_name)) = api else {
        return Err("the cluster serves no Karpenter API for it".into());
    };
    let kind = cluster
        .kind(api_version, kind_name)
        .ok_or_else(|| format!("{api_version} {kind_name} is not served"))?;
    match cluster.get(&kind, None, name).await {
        Ok(Some(o)) => Ok(o),
        Ok(None) => Err(format!("{kind_name} `{name}` does not exist")),
        Err(e) => Err(e.to_string()),
    }
}

fn workers_fit(stack: &Stack, pools: &[PoolObject], classes: &[String]) -> Vec<Check> {
    let services: Vec<_> = stack
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            ResourceSpec::RayService(o) => Some((&r.address, &o.object)),
            _ => None,
        })
        .collect();
    let mut warnings = fit::class_references(pools, classes);
    for (address, rayservice) in &services {
        warnings.extend(fit::worker_fit(address, rayservice, pools));
    }
    if pools.is_empty() {
        return Vec::new();
    }
    if warnings.is_empty() {
        return vec![Check::ok(
            "GPU workers",
            "the stack's pools launch from its classes and can launch its GPU worker groups",
        )];
    }
    warnings
        .into_iter()
        .map(|w| Check::warn("GPU workers", w, None))
        .collect()
}

pub async fn gpus(cluster: &Cluster) -> Check {
    let subject = "GPUs";
    let nodes = match cluster.kind("v1", "Node") {
        Some(kind) => cluster
            .list_each(&kind, None, "", |n| {
                n.pointer("/status/capacity/nvidia.com~1gpu")
                    .and_then(Value::as_str)
                    .and_then(|g| g.parse::<u64>().ok())
                    .filter(|g| *g > 0)
            })
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    if !nodes.is_empty() {
        let total: u64 = nodes.iter().sum();
        return Check::ok(
            subject,
            format!("{} node(s) report {total} nvidia.com/gpu", nodes.len()),
        );
    }
    if served(cluster).auto_mode {
        // AWS: on Auto Mode EKS installs the GPU drivers and device plugins
        // on the GPU nodes it launches ("Manage compute for AI/ML workloads
        // with EKS Auto Mode and Karpenter"); there is no DaemonSet to find.
        return Check::ok(
            subject,
            "no GPU node now (Karpenter launches them on demand); on EKS Auto Mode, EKS brings the NVIDIA driver and device plugin on its GPU nodes",
        );
    }
    match device_plugin(cluster).await {
        Some(ds) => Check::ok(
            subject,
            format!("no GPU node now (Karpenter launches them on demand); DaemonSet {ds} runs the NVIDIA device plugin on them"),
        ),
        None => Check::warn(
            subject,
            "no node reports nvidia.com/gpu capacity, and no NVIDIA device plugin DaemonSet was found",
            Some("GPU workers stay Pending unless the nodes' image brings the plugin (Bottlerocket's NVIDIA variants do); install nvidia-device-plugin otherwise".into()),
        ),
    }
}

/// A DaemonSet whose pods run NVIDIA's device plugin image.
async fn device_plugin(cluster: &Cluster) -> Option<String> {
    let kind = cluster.kind("apps/v1", "DaemonSet")?;
    let found = cluster
        .list_each(&kind, None, "", |ds| {
            let images = ds.pointer("/spec/template/spec/containers")?.as_array()?;
            images
                .iter()
                .filter_map(|c| c["image"].as_str())
                .any(|i| i.contains("k8s-device-plugin") || i.contains("gpu-operator"))
                .then(|| crate::util::qualified(&ds))
        })
        .await
        .ok()?;
    found.into_iter().next()
}

/// Each secret value's source is there; the value itself is not shown.
pub fn secret_sources(stack: &Stack) -> Vec<Check> {
    let mut checks = Vec::new();
    for r in &stack.resources {
        let ResourceSpec::Secret(secret) = &r.spec else {
            continue;
        };
        for (key, source) in &secret.data {
            let subject = format!("{}.{key}", r.address);
            checks.push(match source {
                SecretSource::Env(var) => match std::env::var_os(var) {
                    Some(v) if !v.is_empty() => {
                        Check::ok(subject, format!("environment variable {var} is set"))
                    }
                    Some(_) => Check::fail(
                        subject,
                        format!("environment variable {var} is empty"),
                        format!("export {var}=... before running rayform"),
                    ),
                    None => Check::fail(
                        subject,
                        format!("environment variable {var} is not set"),
                        format!("export {var}=... before running rayform"),
                    ),
                },
                SecretSource::File(path) => match std::fs::metadata(path) {
                    Ok(m) if m.is_file() => {
                        Check::ok(subject, format!("file {} is there", path.display()))
                    }
                    Ok(_) => Check::fail(
                        subject,
                        format!("{} is not a regular file", path.display()),
                        "point the key at the file holding the value",
                    ),
                    Err(e) => Check::fail(
                        subject,
                        format!("{} cannot be read: {e}", path.display()),
                        "create the file, or fix the path (relative to the stack file)",
                    ),
                },
            });
        }
    }
    checks
}

/// Every verb plan, apply and destroy use, asked of the API server.
pub async fn permissions(cluster: &Cluster, stack: &Stack) -> Vec<Check> {
    let needed = needed(cluster, stack);
    let mut missing = Vec::new();
    for access in &needed {
        match cluster.may(access).await {
            Ok(true) => {}
            Ok(false) => missing.push(access),
            Err(e) => {
                return vec![Check::warn(
                    "RBAC",
                    format!("cannot ask the API server what is allowed: {e}"),
                    None,
                )];
            }
        }
    }
    if missing.is_empty() {
        return vec![Check::ok(
            "RBAC",
            format!(
                "all {} permissions plan, apply and destroy use are granted",
                needed.len()
            ),
        )];
    }
    missing
        .into_iter()
        .map(|a| {
            Check::fail(
                "RBAC",
                format!("cannot {a}"),
                format!("ask for a Role or ClusterRole granting: {a}"),
            )
        })
        .collect()
}

fn grant(
    needed: &mut BTreeSet<Access>,
    kind: Option<Kind>,
    verbs: &[&'static str],
    namespace: Option<&str>,
) {
    if let Some(kind) = kind {
        for verb in verbs {
            needed.insert(Access::on(verb, &kind, namespace));
        }
    }
}

fn needed(cluster: &Cluster, stack: &Stack) -> BTreeSet<Access> {
    const OWN: [&str; 5] = ["get", "list", "create", "patch", "delete"];
    let ns = Some(stack.namespace.as_str());
    let karpenter = served(cluster);
    let mut needed = BTreeSet::new();
    for r in &stack.resources {
        match &r.spec {
            ResourceSpec::Secret(_) => grant(&mut needed, cluster.kind("v1", "Secret"), &OWN, ns),
            ResourceSpec::RayService(o) | ResourceSpec::Manifest(o) => {
                let kind = cluster.kind(o.api_version(), o.kind());
                grant(&mut needed, kind.clone(), &OWN, ns);
                if o.kind() == "RayService" {
                    grant(&mut needed, kind, &["watch"], ns);
                }
                // The wait reads the Ray dashboard's token where the head gets it.
                if o.kind() == "RayService" && crate::readiness::reads_a_secret(&o.object) {
                    grant(&mut needed, cluster.kind("v1", "Secret"), &["get"], ns);
                }
            }
            // Karpenter v0.32 has the intent patched into its Provisioner
            // and NodePool alike: every generation served.
            ResourceSpec::NodePool(_) => {
                for a in &karpenter.pools {
                    let kind = cluster.kind(a.api_version(), a.kind());
                    grant(&mut needed, kind, &["get", "list", "patch"], None);
                }
            }
            ResourceSpec::NodeClass(_) => {
                let kind = karpenter
                    .class()
                    .and_then(|a| cluster.kind(a.api_version(), a.kind()));
                grant(&mut needed, kind, &["get", "list", "patch"], None);
            }
            ResourceSpec::GpuPool(_) => {
                let pool = cluster.kind("karpenter.sh/v1", "NodePool");
                grant(&mut needed, pool, &OWN, None);
                // Destroy waits for the pool's nodes.
                let claims = cluster.kind("karpenter.sh/v1", "NodeClaim");
                grant(&mut needed, claims, &["list"], None);
            }
            ResourceSpec::GpuClass(_) => {
                let kind = cluster.kind(automode::NODECLASS_API_VERSION, automode::NODECLASS_KIND);
                grant(&mut needed, kind, &OWN, None);
            }
            ResourceSpec::Wait(w) => {
                grant(&mut needed, cluster.kind("v1", "Pod"), &["get", "list"], ns);
                grant(
                    &mut needed,
                    cluster.kind("ray.io/v1", "RayCluster"),
                    &["get"],
                    ns,
                );
                if w.url.is_none() {
                    needed.insert(Access {
                        verb: "create",
                        group: String::new(),
                        resource: "pods".into(),
                        subresource: Some("portforward"),
                        namespace: ns.map(str::to_string),
                    });
                }
            }
        }
    }
    if let StateLocation::Kubernetes { namespace, .. } = &stack.state {
        let state_ns = Some(namespace.as_str());
        let verbs = ["get", "create", "update"];
        grant(&mut needed, cluster.kind("v1", "Secret"), &verbs, state_ns);
        grant(
            &mut needed,
            cluster.kind("coordination.k8s.io/v1", "Lease"),
            &verbs,
            state_ns,
        );
    }
    needed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kuberay_up_to_v1_2_is_named_unsupported_for_the_wait() {
        for old in ["v1.2.2", "v1.1.0", "1.0.0", "v0.6.0"] {
            let why = unsupported(old).unwrap_or_else(|| panic!("{old} is unsupported"));
            assert!(why.contains("observedGeneration"), "{why}");
        }
        for new in ["v1.3.0", "v1.5.0", "1.4.2", "v2.0.0", "nightly"] {
            assert_eq!(unsupported(new), None, "{new}");
        }
    }
}
