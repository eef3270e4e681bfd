//! Doctor's lines for a `[gpu_nodes]` table: the NodeClass it is made from
//! is there and has what is copied, and the NodePool the stack will create
//! (from its template, as apply will) is handed to the check that its GPU
//! workers can be launched.

use serde_json::Value;

use super::Check;
use crate::cluster::Cluster;
use crate::karpenter::fit::PoolObject;
use crate::karpenter::{PoolApi, Served, automode, gpu_nodes};
use crate::stack::{GPU_NODES_TABLE, GpuNodesIntent, Stack};
use crate::util::format_duration;

const SELF_MANAGED: &str = "on a self-managed Karpenter, name its NodePool and EC2NodeClass in [nodepool.NAME] and [nodeclass.NAME] (as stacks/mistral-7b.toml does)";

/// The class is made from an existing NodeClass on an Auto Mode cluster.
pub(super) async fn class(
    cluster: &Cluster,
    served: &Served,
    name: &str,
    intent: &GpuNodesIntent,
) -> Check {
    let subject = format!("gpuclass.{name}");
    let from = &intent.class_from;
    let kind = cluster
        .kind(automode::NODECLASS_API_VERSION, automode::NODECLASS_KIND)
        .filter(|_| served.auto_mode);
    let Some(kind) = kind else {
        return Check::fail(
            subject,
            format!(
                "[{GPU_NODES_TABLE}] is the stack form for EKS Auto Mode, and this cluster serves no {} {}",
                automode::NODECLASS_API_VERSION,
                automode::NODECLASS_KIND
            ),
            SELF_MANAGED,
        );
    };
    let source = match cluster.get(&kind, None, from).await {
        Ok(Some(source)) => source,
        Ok(None) => {
            return Check::fail(
                subject,
                format!("the NodeClass `{from}` it is made from does not exist"),
                "name an existing NodeClass in class_from (EKS creates `default` while a built-in NodePool is enabled)",
            );
        }
        Err(e) => return Check::fail(subject, e.to_string(), "check access to NodeClasses"),
    };
    match gpu_nodes::complete_class(&gpu_nodes::class(name, intent), &source) {
        Ok(made) => Check::ok(subject, made_from(name, from, &made)),
        Err(why) => Check::fail(
            subject,
            why,
            "name a NodeClass with a role and subnetSelectorTerms in class_from",
        ),
    }
}

fn made_from(name: &str, from: &str, made: &Value) -> String {
    let spec = &made["spec"];
    let count = |field: &str| spec[field].as_array().map_or(0, Vec::len);
    let identity = spec["role"]
        .as_str()
        .map(|r| format!("role {r}"))
        .or_else(|| {
            spec["instanceProfile"]
                .as_str()
                .map(|p| format!("instance profile {p}"))
        })
        .unwrap_or_default();
    format!(
        "NodeClass `{name}` will be made from `{from}` ({identity}, {} subnet and {} security group selector term(s)) with ephemeralStorage.size {}",
        count("subnetSelectorTerms"),
        count("securityGroupSelectorTerms"),
        spec["ephemeralStorage"]["size"]
            .as_str()
            .unwrap_or_default()
    )
}

/// The pool as the stack will create it, for the GPU workers' check.
pub(super) fn pool(stack: &Stack, name: &str, intent: &GpuNodesIntent) -> (Check, PoolObject) {
    let object = gpu_nodes::pool(name, intent, &gpu_nodes::workers_of(stack));
    let check = Check::ok(
        format!("gpupool.{name}"),
        format!(
            "NodePool `{name}` will be created: NVIDIA GPU instances from NodeClass `{name}`, empty nodes kept {}",
            format_duration(intent.empty_ttl)
        ),
    );
    let pool = PoolObject {
        name: name.to_string(),
        api: PoolApi::V1,
        object,
    };
    (check, pool)
}
