//! Fetches what `pods` reads: the pods of the RayClusters KubeRay's status
//! names, the Events about them and the NodeClaims Karpenter nominated them
//! to. Kept apart so the reading stays pure and the wait loop stays short.
//!
//! The look is best effort: a user who may not list Events or NodeClaims
//! still gets the wait, with less said about why it takes long.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::ListParams;
use serde_json::Value;

use super::EVERY_LOOK;
use super::pods::{self, PodAccount, Stage, Stuck};
use super::status::Service;
use crate::cluster::Cluster;

/// The last look below KubeRay, kept between looks to report only changes.
#[derive(Default)]
pub struct Below {
    last: Option<Instant>,
    accounts: Vec<PodAccount>,
    said: BTreeMap<String, String>,
}

impl Below {
    /// Looks again if it is time; returns the lines that changed since the
    /// last look, in pod order.
    pub async fn look(
        &mut self,
        cluster: &Cluster,
        namespace: &str,
        service: &Service,
    ) -> Vec<String> {
        if self.last.is_some_and(|t| t.elapsed() < EVERY_LOOK) {
            return Vec::new();
        }
        self.last = Some(Instant::now());
        let clusters: Vec<&str> = [service.pending.as_deref(), service.active.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        if clusters.is_empty() {
            return Vec::new();
        }
        let Some(accounts) = fetch(cluster, namespace, &clusters).await else {
            return Vec::new();
        };
        self.accounts = accounts;
        let mut changed = Vec::new();
        for a in &self.accounts {
            let line = a.to_string();
            if self.said.get(&a.pod) != Some(&line) {
                self.said.insert(a.pod.clone(), line.clone());
                changed.push(line);
            }
        }
        changed
    }

    pub fn lines(&self) -> Vec<String> {
        self.accounts.iter().map(ToString::to_string).collect()
    }

    /// The first pod that will not get anywhere without a change.
    pub fn stuck(&self, service: &Service) -> Option<Stuck> {
        self.accounts.iter().find_map(|a| {
            let mut stuck = a.stuck()?;
            if let Some(upgrade) = upgrade_past_limit(a, service) {
                stuck.cause = format!("{}\n  {upgrade}", stuck.cause);
            }
            Some(stuck)
        })
    }
}

/// A pod of an upgrade's new RayCluster that Karpenter refused for a pool's
/// limits: KubeRay's status says only "upgrade in progress", and a limit
/// that held one cluster's GPUs does not hold two.
fn upgrade_past_limit(account: &PodAccount, service: &Service) -> Option<String> {
    let Stage::Unschedulable {
        karpenter: Some(verdict),
        ..
    } = &account.stage
    else {
        return None;
    };
    let (pending, active) = (service.pending.as_deref()?, service.active.as_deref()?);
    if account.raycluster.as_deref() != Some(pending) {
        return None;
    }
    let pool = verdict
        .split("exceed limits for nodepool (NodePool=")
        .nth(1)?
        .split(')')
        .next()?;
    Some(format!(
        "it belongs to RayCluster {pending}, the new cluster of a zero-downtime upgrade: until promotion its nodes come on top of those of RayCluster {active}, and NodePool `{pool}`'s limits leave no room for them; raise them (`rayform plan` says to how much), or upgrade with upgradeStrategy None and accept the downtime"
    ))
}

async fn fetch(cluster: &Cluster, namespace: &str, clusters: &[&str]) -> Option<Vec<PodAccount>> {
    let selector = format!("ray.io/cluster in ({})", clusters.join(","));
    let mut found: Vec<Pod> = cluster
        .list_typed(namespace, &ListParams::default().labels(&selector))
        .await
        .ok()?;
    found.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let events: Vec<Event> = cluster
        .list_typed(
            namespace,
            &ListParams::default().fields("involvedObject.kind=Pod"),
        )
        .await
        .unwrap_or_default();
    // Only a pod without a node can be waiting for one Karpenter launches.
    let unbound = found
        .iter()
        .any(|p| p.spec.as_ref().is_none_or(|s| s.node_name.is_none()));
    let nodeclaims = if unbound {
        nodeclaims(cluster).await
    } else {
        Vec::new()
    };
    Some(
        found
            .iter()
            .map(|pod| {
                let about: Vec<&Event> = events
                    .iter()
                    .filter(|e| {
                        e.involved_object.uid.is_some() && e.involved_object.uid == pod.metadata.uid
                    })
                    .collect();
                pods::account(pod, &about, &nodeclaims)
            })
            .collect(),
    )
}

/// Karpenter's NodeClaims, where the cluster runs Karpenter v1.
async fn nodeclaims(cluster: &Cluster) -> Vec<Value> {
    let Some(kind) = cluster.kind("karpenter.sh/v1", "NodeClaim") else {
        return Vec::new();
    };
    cluster.list(&kind, None, "").await.unwrap_or_default()
}

/// KubeRay's refusal of the RayService's spec, if it said so since `since`.
///
/// KubeRay v1.3–v1.5 write no status for a spec they reject: the word is
/// only an Event (`InvalidRayServiceSpec`, or `InvalidRayServiceMetadata`
/// for its annotations), repeated at each retry, so a fresh one is about the
/// spec the wait is for. v1.6 sends the same Event once and also writes
/// `Ready=False (ValidationFailed)`, which [`super::status`] reads.
pub async fn refused(
    cluster: &Cluster,
    namespace: &str,
    rayservice: &str,
    since: jiff::Timestamp,
) -> Option<String> {
    let fields = format!("involvedObject.kind=RayService,involvedObject.name={rayservice}");
    let events: Vec<Event> = cluster
        .list_typed(namespace, &ListParams::default().fields(&fields))
        .await
        .ok()?;
    events
        .into_iter()
        .filter(|e| {
            matches!(
                e.reason.as_deref(),
                Some("InvalidRayServiceSpec" | "InvalidRayServiceMetadata")
            )
        })
        .filter(|e| pods::when(e).is_some_and(|t| t >= since))
        .max_by_key(pods::when)
        .and_then(|e| e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_pod(raycluster: &str) -> PodAccount {
        PodAccount {
            pod: format!("{raycluster}-gpu-group-worker-x"),
            role: "worker group gpu-group".into(),
            raycluster: Some(raycluster.into()),
            node: None,
            stage: Stage::Unschedulable {
                why: "0/1 nodes are available".into(),
                karpenter: Some(
                    "Failed to schedule pod, all available instance types exceed limits for nodepool (NodePool=gpu); incompatible requirements".into(),
                ),
            },
        }
    }

    #[test]
    fn a_new_cluster_of_an_upgrade_refused_for_a_pool_limit_names_both() {
        let upgrading = Service {
            active: Some("llm-a".into()),
            pending: Some("llm-b".into()),
            ..Service::default()
        };
        let said = upgrade_past_limit(&refused_pod("llm-b"), &upgrading).expect("named");
        assert!(
            said.contains("RayCluster llm-b, the new cluster of a zero-downtime upgrade")
                && said.contains("those of RayCluster llm-a, and NodePool `gpu`'s limits"),
            "{said}"
        );
        let first_deploy = Service {
            pending: Some("llm-b".into()),
            ..Service::default()
        };
        assert_eq!(
            upgrade_past_limit(&refused_pod("llm-b"), &first_deploy),
            None
        );
        assert_eq!(upgrade_past_limit(&refused_pod("llm-a"), &upgrading), None);
    }
}
