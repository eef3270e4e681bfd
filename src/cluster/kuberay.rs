//! The KubeRay operator as the API shows it. Whether one runs decides what
//! a RayService will become: plan warns before creating one with no
//! operator to act on it, the readiness wait stops instead of sitting out
//! its timeout, and `doctor` reports it. All three ask here.

use serde_json::Value;

use super::Cluster;

/// The leader-election Lease KubeRay holds while it runs.
const OPERATOR_LEASE: &str = "ray-operator-leader";
/// The label KubeRay's Helm chart puts on its Deployment.
const OPERATOR_LABEL: &str = "app.kubernetes.io/name=kuberay-operator";
/// A Lease renewed longer ago than this has no operator behind it.
const LEASE_STALE_AFTER_SECONDS: i64 = 60;

/// A KubeRay operator seen running: where, and its image's tag if known.
pub struct Operator {
    pub found: String,
    pub image_tag: Option<String>,
}

/// Why no KubeRay operator will act on a RayService, and what to do.
pub struct NotRunning {
    pub message: String,
    pub help: String,
}

/// Whether a KubeRay operator runs (its Deployment, else the leader Lease
/// it holds when run another way). Two requests at most: plan and the
/// readiness wait ask it too.
pub async fn operator(cluster: &Cluster) -> Result<Operator, NotRunning> {
    if let Some(deployment) = operator_deployment(cluster).await {
        return deployed(&deployment);
    }
    match operator_lease(cluster).await {
        Some((lease, age)) if age <= LEASE_STALE_AFTER_SECONDS => Ok(Operator {
            found: format!("running: it holds Lease {lease}, renewed {age}s ago"),
            image_tag: None,
        }),
        Some((lease, age)) => Err(NotRunning {
            message: format!("its Lease {lease} was last renewed {age}s ago: no operator is running"),
            help: "start the KubeRay operator again, or read its logs".into(),
        }),
        None => Err(NotRunning {
            message: format!(
                "not found: no Deployment labelled {OPERATOR_LABEL} and no {OPERATOR_LEASE} Lease"
            ),
            help: "install it (Helm chart kuberay-operator); without it a RayService never gets a RayCluster".into(),
        }),
    }
}

/// Why no KubeRay operator will act on a RayService, as one message with
/// its help line; None when one runs.
pub async fn operator_missing(cluster: &Cluster) -> Option<String> {
    let missing = operator(cluster).await.err()?;
    Some(format!(
        "KubeRay operator: {}\n  help: {}",
        missing.message, missing.help
    ))
}

fn deployed(deployment: &Value) -> Result<Operator, NotRunning> {
    let name = crate::util::qualified(deployment);
    let ready = deployment
        .pointer("/status/readyReplicas")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if ready == 0 {
        return Err(NotRunning {
            message: format!("Deployment {name} has no ready replica"),
            help: format!(
                "look at its pods and events: kubectl -n {} describe deployment {}",
                crate::util::namespace_of(deployment),
                name.rsplit('/').next().unwrap_or_default()
            ),
        });
    }
    let image = deployment
        .pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Ok(Operator {
        found: format!("Deployment {name} ({image}) has {ready} ready"),
        image_tag: image.rsplit_once(':').map(|(_, t)| t.to_string()),
    })
}

async fn operator_deployment(cluster: &Cluster) -> Option<Value> {
    let kind = cluster.kind("apps/v1", "Deployment")?;
    let found = cluster.list(&kind, None, OPERATOR_LABEL).await.ok()?;
    found.into_iter().next()
}

/// The Lease KubeRay holds, and its age in seconds.
async fn operator_lease(cluster: &Cluster) -> Option<(String, i64)> {
    let kind = cluster.kind("coordination.k8s.io/v1", "Lease")?;
    let lease = cluster
        .named_anywhere(&kind, OPERATOR_LEASE)
        .await
        .ok()?
        .into_iter()
        .next()?;
    let renewed: jiff::Timestamp = lease
        .pointer("/spec/renewTime")
        .and_then(Value::as_str)?
        .parse()
        .ok()?;
    let age = jiff::Timestamp::now().as_second() - renewed.as_second();
    Some((crate::util::qualified(&lease), age))
}
