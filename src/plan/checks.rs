//! Checks across resources that each look fine alone: the stack patches a
//! NodePool and sizes an EC2NodeClass for a RayService's GPU workers, and
//! all three must meet, also while KubeRay runs a second RayCluster for a
//! zero-downtime upgrade. Also the Karpenter release the served APIs point
//! to, which decides whether a pod annotation protects anything.
//!
//! These are warnings: a pool outside the stack may well launch the workers,
//! and rayform cannot see Karpenter's flags.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Change;
use super::rollout::{self, Rollout};
use crate::desired::Desired;
use crate::karpenter::fit::{self, PoolObject};
use crate::karpenter::{PoolApi, Served};
use crate::observe::{Observed, ObservedPatch, World};
use crate::stack::{Address, ResourceType};

pub fn warnings(
    desired: &BTreeMap<Address, Desired>,
    world: &World,
    changes: &[Change],
) -> Vec<String> {
    let mut pools = Vec::new();
    let mut classes = Vec::new();
    let mut services = Vec::new();
    for (address, wanted) in desired {
        match (wanted, world.resources.get(address)) {
            (Desired::NodePool(_), Some(Observed::Patch(p))) => {
                pools.extend(pool_object(&address.name, p));
                // Karpenter v0.32 launches from the Provisioner beside it too.
                if let Some(Observed::Patch(beside)) =
                    address.beside().and_then(|b| world.resources.get(&b))
                {
                    pools.extend(pool_object(&address.name, beside));
                }
            }
            (Desired::NodeClass(_), _) => classes.push(address.name.clone()),
            (Desired::Object(o), _) if address.kind == ResourceType::RayService => {
                services.push((address, o.masked_body()));
            }
            (Desired::Object(o), _) if matches!(o.kind.as_str(), "NodePool" | "Provisioner") => {
                if let Some(api) = PoolApi::from_api_version(&o.api_version) {
                    pools.push(PoolObject {
                        name: o.name.clone(),
                        api,
                        object: o.masked_body(),
                    });
                }
            }
            (Desired::Object(o), _)
                if matches!(
                    o.kind.as_str(),
                    "EC2NodeClass" | "AWSNodeTemplate" | "NodeClass"
                ) =>
            {
                classes.push(o.name.clone());
            }
            _ => {}
        }
    }
    let mut out = fit::class_references(&pools, &classes);
    if let (Some(missing), Some((address, _))) = (&world.kuberay_operator_missing, services.first())
    {
        out.push(format!(
            "{address}: no KubeRay operator will act on it, so it would never get a RayCluster and apply would wait its whole timeout: {missing}"
        ));
    }
    for (address, body) in &services {
        out.extend(fit::worker_fit(address, body, &pools));
        out.extend(ignored_annotations(address, body, &world.karpenter));
        if let Some(need) = gpus_at_once(address, changes, world) {
            out.extend(gpu_limit_short(address, body, &pools, &need));
        }
    }
    out
}

/// A Karpenter object observed for a `[nodepool]` intent, as a pool the
/// workers' fit and GPU limits are judged against.
fn pool_object(name: &str, observed: &ObservedPatch) -> Option<PoolObject> {
    Some(PoolObject {
        name: name.to_string(),
        api: PoolApi::from_api_version(&observed.api_version)?,
        object: observed.live.clone()?,
    })
}

/// The GPUs the RayService's pods hold at once while this plan's change rolls out.
struct GpusAtOnce {
    total: u64,
    /// During a zero-downtime upgrade: the serving cluster's GPUs, kept until promotion.
    serving: Option<u64>,
}

fn gpus_at_once(address: &Address, changes: &[Change], world: &World) -> Option<GpusAtOnce> {
    let change = changes.iter().find(|c| &c.address == address)?;
    match &change.write()?.rollout.as_ref()?.rollout {
        Rollout::FirstCluster { gpus } => Some(GpusAtOnce {
            total: *gpus,
            serving: None,
        }),
        Rollout::NewCluster { extra_gpus, .. } => {
            let Some(Observed::Object(o)) = world.resources.get(address) else {
                return None;
            };
            let serving = rollout::gpus(&o.live.as_ref()?["spec"]["rayClusterConfig"]);
            Some(GpusAtOnce {
                total: serving + extra_gpus,
                serving: Some(serving),
            })
        }
        _ => None,
    }
}

/// The `nvidia.com/gpu` limits of the pools that can launch the GPU workers
/// leave no room for all of them at once: Karpenter launches nodes up to the
/// limits and leaves the rest of the pods Pending. For an upgrade the new
/// RayCluster's workers are the ones left, and the upgrade stalls.
fn gpu_limit_short(
    address: &Address,
    rayservice: &Value,
    pools: &[PoolObject],
    need: &GpusAtOnce,
) -> Option<String> {
    let workers = fit::gpu_workers(rayservice);
    let fitting: Vec<&PoolObject> = pools
        .iter()
        .filter(|p| {
            workers.iter().any(|w| {
                fit::may_use(p.api, &p.name, w) && fit::misfits(p.api, &p.object, w).is_empty()
            })
        })
        .collect();
    let limits = fitting
        .iter()
        .map(|p| fit::gpu_limit(p.api, &p.object).map(|n| (p, n)))
        .collect::<Option<Vec<_>>>()?;
    let room: u64 = limits.iter().map(|(_, n)| n).sum();
    if limits.is_empty() || room >= need.total {
        return None;
    }
    let named = limits
        .iter()
        .map(|(p, n)| {
            format!(
                "{} `{}` has limits nvidia.com/gpu {n}",
                p.api.kind(),
                p.name
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Some(match need.serving {
        Some(serving) => format!(
            "{address}: {named}, and this change is a zero-downtime upgrade: the new RayCluster's {} on top of the {serving} the serving cluster keeps until promotion, {} at once; Karpenter launches no node past the limit, so the new cluster's GPU workers stay Pending and the upgrade stalls\n  \
             help: raise the limit to at least {}, or change the RayService with upgradeStrategy None and accept downtime",
            gpus(need.total - serving),
            need.total,
            need.total
        ),
        None => format!(
            "{address}: {named}, and its RayCluster asks for {}; Karpenter launches no node past the limit, so some GPU workers stay Pending\n  \
             help: raise the limit to at least {}, or ask for fewer workers",
            gpus(need.total),
            need.total
        ),
    })
}

fn gpus(n: u64) -> String {
    format!("{n} GPU{}", if n == 1 { "" } else { "s" })
}

/// Pod annotations the Karpenter release these APIs belong to ignores.
fn ignored_annotations(address: &Address, rayservice: &Value, served: &Served) -> Vec<String> {
    let config = &rayservice["spec"]["rayClusterConfig"];
    let head = std::iter::once(("head group".to_string(), &config["headGroupSpec"]));
    let workers = config["workerGroupSpecs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let name = g["groupName"].as_str().unwrap_or("?");
            (format!("worker group `{name}`"), g)
        });
    head.chain(workers)
        .flat_map(|(group, spec)| {
            spec.pointer("/template/metadata/annotations")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|a| a.keys())
                .filter_map(|key| served.ignored_annotation(key).map(|why| (key.clone(), why)))
                .map(move |(key, why)| {
                    format!(
                        "{address}: the {group}'s {key} annotation protects nothing here: {why}"
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
