//! Fetches what `pods` reads: the pods of the RayClusters KubeRay's status
//! names, the Events about them and the NodeClaims Karpenter nominated them
//! to. Kept apart so the reading stays pure and the wait loop stays short.
//!
//! The look is best effort: a user who may not list Events or NodeClaims
//! still gets the wait, with less said about why it takes long.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use serde_json::Value;

use super::EVERY_LOOK;
use super::events;
use super::pods::{self, PodAccount, Stage, Stuck};
use super::progress::Detail;
use super::status::Service;
use crate::cluster::Cluster;
use crate::util::format_duration;

/// The last look below KubeRay, kept between looks to report only changes.
#[derive(Default)]
pub struct Below {
    detail: Detail,
    last: Option<Instant>,
    accounts: Vec<PodAccount>,
    /// Each pod of `accounts`, in order, with the Events about it.
    pods: Vec<(Pod, Vec<Event>)>,
    /// With the complete account: the RayClusters KubeRay named...
    rayclusters: Vec<Value>,
    /// ...and KubeRay's Events about them and the RayService.
    kuberay: Vec<Event>,
    said: BTreeMap<String, String>,
}

impl Below {
    pub fn new(detail: Detail) -> Below {
        Below {
            detail,
            ..Below::default()
        }
    }

    /// Looks again if it is time; returns the pods whose line changed since
    /// the last look, in pod order.
    pub async fn look(
        &mut self,
        cluster: &Cluster,
        namespace: &str,
        service: &Service,
        rayservice: &str,
    ) -> Vec<PodAccount> {
        if self.last.is_some_and(|t| t.elapsed() < EVERY_LOOK) {
            return Vec::new();
        }
        self.last = Some(Instant::now());
        let clusters: Vec<&str> = [service.pending.as_deref(), service.active.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        if self.detail == Detail::Complete {
            self.rayclusters = rayclusters(cluster, namespace, &clusters).await;
            self.kuberay = kuberay_events(cluster, namespace, rayservice).await;
        }
        if clusters.is_empty() {
            return Vec::new();
        }
        let Some((pods, nodeclaims)) = fetch(cluster, namespace, &clusters).await else {
            return Vec::new();
        };
        self.accounts = pods
            .iter()
            .map(|(pod, events)| {
                let about: Vec<&Event> = events.iter().collect();
                pods::account(pod, &about, &nodeclaims)
            })
            .collect();
        self.pods = pods;
        let mut changed = Vec::new();
        for a in &self.accounts {
            let line = a.to_string();
            if self.said.get(&a.pod) != Some(&line) {
                self.said.insert(a.pod.clone(), line);
                changed.push(a.clone());
            }
        }
        changed
    }

    /// The pods of the last look with the Events about each, for the complete account.
    pub fn pods(&self) -> impl Iterator<Item = (&PodAccount, &Pod, &[Event])> {
        self.accounts
            .iter()
            .zip(&self.pods)
            .map(|(a, (pod, events))| (a, pod, events.as_slice()))
    }

    /// The RayClusters of the last look (with the complete account only).
    pub fn rayclusters(&self) -> &[Value] {
        &self.rayclusters
    }

    #[cfg(test)]
    pub fn set_for_test(&mut self, rayclusters: Vec<Value>, kuberay: Vec<Event>) {
        self.rayclusters = rayclusters;
        self.kuberay = kuberay;
    }

    /// KubeRay's Events about the RayService and its RayClusters (with the complete account only).
    pub fn kuberay(&self) -> &[Event] {
        &self.kuberay
    }

    /// One line a pod, as of now: a pull under way says how long it has taken.
    pub fn lines(&self) -> Vec<String> {
        let now = Timestamp::now();
        self.accounts.iter().map(|a| a.line_at(now)).collect()
    }

    /// One line a pod, without clocks: each changes only when the pod does.
    pub fn lines_unclocked(&self) -> Vec<String> {
        self.accounts.iter().map(ToString::to_string).collect()
    }

    /// The pulls under way and how long each has taken so far, for the line
    /// that says the wait goes on (a pod's own line says it only once).
    pub fn pulls(&self) -> Option<String> {
        let now = Timestamp::now();
        let said: Vec<String> = self
            .accounts
            .iter()
            .filter_map(|a| match (&a.stage, a.pulling_for(now)) {
                (Stage::Pulling { image, .. }, Some(took)) => Some(format!(
                    "pod {} pulling image {image} for {}",
                    a.pod,
                    format_duration(Duration::from_secs(took.as_secs()))
                )),
                _ => None,
            })
            .collect();
        (!said.is_empty()).then(|| said.join("; "))
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

/// The pods of `clusters` with the Events about each, and the NodeClaims
/// when a pod may be waiting for one.
async fn fetch(
    cluster: &Cluster,
    namespace: &str,
    clusters: &[&str],
) -> Option<(Vec<(Pod, Vec<Event>)>, Vec<Value>)> {
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
    let pods = found
        .into_iter()
        .map(|pod| {
            let about: Vec<Event> = events
                .iter()
                .filter(|e| {
                    e.involved_object.uid.is_some() && e.involved_object.uid == pod.metadata.uid
                })
                .cloned()
                .collect();
            (pod, about)
        })
        .collect();
    Some((pods, nodeclaims))
}

/// The RayClusters KubeRay named, as they are now (those it has made so far).
async fn rayclusters(cluster: &Cluster, namespace: &str, names: &[&str]) -> Vec<Value> {
    let Some(kind) = cluster.kind("ray.io/v1", "RayCluster") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for name in names {
        if let Ok(Some(object)) = cluster.get(&kind, Some(namespace), name).await {
            found.push(object);
        }
    }
    found
}

/// KubeRay's Events about the RayService and about RayClusters (the
/// account keeps those of the RayService's own).
async fn kuberay_events(cluster: &Cluster, namespace: &str, rayservice: &str) -> Vec<Event> {
    let mut found = Vec::new();
    for fields in [
        format!("involvedObject.kind=RayService,involvedObject.name={rayservice}"),
        "involvedObject.kind=RayCluster".to_string(),
    ] {
        let listed: Vec<Event> = cluster
            .list_typed(namespace, &ListParams::default().fields(&fields))
            .await
            .unwrap_or_default();
        found.extend(listed);
    }
    found
}

/// What Karpenter launches nodes for: NodeClaims, through the newest
/// version served (v1 from v0.33.6, v1beta1 on v0.32 to v0.33.5), and on
/// v0.32 and older also the Machines its Provisioners launch.
async fn nodeclaims(cluster: &Cluster) -> Vec<Value> {
    let claims = ["karpenter.sh/v1", "karpenter.sh/v1beta1"]
        .into_iter()
        .find_map(|v| cluster.kind(v, "NodeClaim"));
    let machines = cluster.kind("karpenter.sh/v1alpha5", "Machine");
    let mut found = Vec::new();
    for kind in claims.iter().chain(&machines) {
        found.extend(cluster.list(kind, None, "").await.unwrap_or_default());
    }
    found
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
        .filter(|e| events::when(e).is_some_and(|t| t >= since))
        .max_by_key(events::when)
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
