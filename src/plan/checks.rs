//! Checks across resources that each look fine alone: the stack patches a
//! NodePool and sizes an EC2NodeClass for a RayService's GPU workers, and
//! all three must meet. Also the Karpenter release the served APIs point to,
//! which decides whether a pod annotation protects anything.
//!
//! These are warnings: a pool outside the stack may well launch the workers,
//! and rayform cannot see Karpenter's flags.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::desired::Desired;
use crate::karpenter::{PoolApi, Served, fit};
use crate::observe::{Observed, World};
use crate::stack::{Address, ResourceType};

/// A pool of the stack: one it patches, as it is live, or one it creates,
/// as it will be.
struct Pool {
    name: String,
    api: PoolApi,
    object: Value,
}

fn pool_api(api_version: &str) -> Option<PoolApi> {
    PoolApi::ALL
        .into_iter()
        .find(|api| api.api_version() == api_version)
}

pub fn warnings(desired: &BTreeMap<Address, Desired>, world: &World) -> Vec<String> {
    let mut pools = Vec::new();
    let mut classes = Vec::new();
    let mut services = Vec::new();
    for (address, wanted) in desired {
        match (wanted, world.resources.get(address)) {
            (Desired::NodePool(_), Some(Observed::Patch(p))) => {
                if let (Some(api), Some(live)) = (pool_api(&p.api_version), &p.live) {
                    pools.push(Pool {
                        name: address.name.clone(),
                        api,
                        object: live.clone(),
                    });
                }
            }
            (Desired::NodeClass(_), _) => classes.push(address.name.clone()),
            (Desired::Object(o), _) if address.kind == ResourceType::RayService => {
                services.push((address, o.masked_body()));
            }
            (Desired::Object(o), _) if matches!(o.kind.as_str(), "NodePool" | "Provisioner") => {
                if let Some(api) = pool_api(&o.api_version) {
                    pools.push(Pool {
                        name: o.name.clone(),
                        api,
                        object: o.masked_body(),
                    });
                }
            }
            (Desired::Object(o), _)
                if matches!(o.kind.as_str(), "EC2NodeClass" | "AWSNodeTemplate") =>
            {
                classes.push(o.name.clone());
            }
            _ => {}
        }
    }
    let mut out = class_references(&pools, &classes);
    for (address, body) in &services {
        out.extend(worker_fit(address, body, &pools));
        out.extend(ignored_annotations(address, body, &world.karpenter));
    }
    out
}

/// Each pool must launch its nodes from a class the stack sizes.
fn class_references(pools: &[Pool], classes: &[String]) -> Vec<String> {
    if classes.is_empty() {
        return Vec::new();
    }
    pools
        .iter()
        .filter_map(|p| {
            let class = fit::class_of(p.api, &p.object)?;
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
fn worker_fit(address: &Address, rayservice: &Value, pools: &[Pool]) -> Vec<String> {
    if pools.is_empty() {
        return Vec::new();
    }
    fit::gpu_workers(rayservice)
        .into_iter()
        .filter_map(|worker| {
            let reasons: Vec<String> = pools
                .iter()
                .filter(|p| fit::may_use(p.api, &p.name, &worker))
                .map(|p| {
                    let why = fit::misfits(p.api, &p.object, &worker);
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
