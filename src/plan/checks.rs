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
use crate::karpenter::fit::{self, PoolObject};
use crate::karpenter::{PoolApi, Served};
use crate::observe::{Observed, World};
use crate::stack::{Address, ResourceType};

pub fn warnings(desired: &BTreeMap<Address, Desired>, world: &World) -> Vec<String> {
    let mut pools = Vec::new();
    let mut classes = Vec::new();
    let mut services = Vec::new();
    for (address, wanted) in desired {
        match (wanted, world.resources.get(address)) {
            (Desired::NodePool(_), Some(Observed::Patch(p))) => {
                if let (Some(api), Some(live)) =
                    (PoolApi::from_api_version(&p.api_version), &p.live)
                {
                    pools.push(PoolObject {
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
                if let Some(api) = PoolApi::from_api_version(&o.api_version) {
                    pools.push(PoolObject {
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
    }
    out
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
