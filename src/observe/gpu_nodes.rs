//! The NodeClass of a `[gpu_nodes]` table takes its IAM role, subnets and
//! security groups from a NodeClass the cluster already has (Auto Mode's
//! `default`). `desired` cannot read the cluster, so it renders the class
//! with a note of its source, and this fills the copied fields in from the
//! live source before anything is dry-run or diffed: the plan shows, and
//! apply sends, the values read now. A later change of the source is a
//! change of the stack's class at the next plan.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::cluster::{Cluster, ClusterError};
use crate::desired::Desired;
use crate::karpenter::automode::{NODECLASS_API_VERSION, NODECLASS_KIND};
use crate::karpenter::gpu_nodes;
use crate::stack::{Address, GPU_NODES_TABLE};

/// Completes every class made from another; returns why a class could not
/// be, by address (those objects are then refused by the plan).
pub async fn complete_classes(
    cluster: &Cluster,
    desired: &mut BTreeMap<Address, Desired>,
) -> Result<BTreeMap<Address, String>, ClusterError> {
    let mut problems = BTreeMap::new();
    let mut sources: BTreeMap<String, Option<Value>> = BTreeMap::new();
    for (address, wanted) in desired.iter_mut() {
        let Desired::Object(o) = wanted else { continue };
        let Some(from) = gpu_nodes::class_source(o.body()).map(str::to_string) else {
            continue;
        };
        let Some(kind) = cluster.kind(NODECLASS_API_VERSION, NODECLASS_KIND) else {
            problems.insert(address.clone(), not_auto_mode());
            continue;
        };
        if !sources.contains_key(&from) {
            let live = cluster.get(&kind, None, &from).await?;
            sources.insert(from.clone(), live);
        }
        let made = match sources.get(&from).and_then(Option::as_ref) {
            Some(source) => gpu_nodes::complete_class(o.body(), source),
            None => Err(format!(
                "the NodeClass `{from}` it is made from does not exist\n  \
                 help: name an existing NodeClass in [{GPU_NODES_TABLE}.{}] class_from \
                 (EKS creates `default` while a built-in NodePool is enabled)",
                address.name
            )),
        };
        match made {
            Ok(body) => o.complete(body),
            Err(why) => {
                problems.insert(address.clone(), why);
            }
        }
    }
    Ok(problems)
}

fn not_auto_mode() -> String {
    format!(
        "[{GPU_NODES_TABLE}] is the stack form for EKS Auto Mode, and this cluster serves no \
         {NODECLASS_API_VERSION} {NODECLASS_KIND}\n  \
         help: on a self-managed Karpenter, name its NodePool and EC2NodeClass in [nodepool.NAME] and \
         [nodeclass.NAME] (as stacks/mistral-7b.toml does)"
    )
}
