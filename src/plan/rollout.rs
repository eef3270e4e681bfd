//! What KubeRay will do with a RayService change. A diff alone cannot say:
//! the same few lines can be a Serve config sent to the running cluster, a
//! whole second RayCluster (a second set of GPU nodes until traffic moves to
//! it), or nothing at all. None of the anchors (Terraform, kubectl, Helm)
//! says which; for GPU clusters it is the line a reviewer needs most.
//!
//! The rules are those of KubeRay v1.5's RayService controller, the operator
//! the tests run: a cluster hash over `rayClusterConfig` without worker
//! replicas, worker groups appended in place, `upgradeStrategy` deciding
//! whether a changed cluster is replaced or left alone, and `serveConfigV2`
//! compared as a string. The hash is KubeRay's own (see `kuberay_hash`),
//! compared with the one on the RayCluster KubeRay compares with (the one
//! it is preparing while an upgrade is in progress, else the serving one):
//! the live RayService may hold a spec KubeRay never built (under
//! `upgradeStrategy: None`), and a respelled quantity is a diff but no
//! change to KubeRay. Without that
//! annotation, or for a spec the hash cannot be reproduced for, the live
//! and planned specs are compared instead.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::kuberay_hash;
pub use super::kuberay_hash::{
    ANNOTATION as HASH_ANNOTATION, WORKER_GROUPS as WORKER_GROUPS_ANNOTATION,
};
use crate::observe::{BuiltFrom, Compared};

/// The KubeRay minor version these rules were read from and tested against.
pub const RULES: &str = "v1.5";

/// Where rayform writes the secret checksum (see `desired`).
const CHECKSUM: &str = crate::desired::ANNOTATION_SECRET_CHECKSUM;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Rollout {
    /// The first RayCluster of a new RayService.
    FirstCluster { gpus: u64 },
    /// Only `serveConfigV2` changed: sent to Serve on the serving cluster.
    InPlaceServe,
    /// Worker groups appended: the running RayCluster is updated.
    InPlaceCluster { serve_too: bool },
    /// A second RayCluster; traffic moves to it once it serves.
    NewCluster {
        extra_gpus: u64,
        serve_too: bool,
        /// Only a referenced Secret changed (its checksum on the pod templates).
        secret_only: bool,
    },
    /// KubeRay leaves the running cluster as it is.
    NotApplied { why: String },
    /// Nothing KubeRay builds from changed (labels, thresholds).
    NoRollout,
}

/// A rollout with the operator version it was judged for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    #[serde(flatten)]
    pub rollout: Rollout,
    /// `ray.io/kuberay-version` of the RayCluster compared with, when there is one.
    pub kuberay_version: Option<String>,
    /// KubeRay is preparing a new RayCluster (an upgrade is in progress),
    /// and compares the change with that one, not the serving one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upgrade_in_progress: bool,
}

impl Assessment {
    /// The plan line, e.g. "KubeRay v1.5.0: in-place Serve update".
    pub fn describe(&self) -> String {
        let version = match &self.kuberay_version {
            Some(v) if v.starts_with(RULES) => format!("KubeRay {v}"),
            Some(v) => format!("KubeRay {v}, judged by the rules of {RULES}"),
            None => format!("KubeRay version unknown (no RayCluster yet), rules of {RULES}"),
        };
        let what = self.rollout.describe();
        match (self.upgrade_in_progress, &self.rollout) {
            (false, _) => format!("{version}: {what}"),
            (true, Rollout::NewCluster { .. }) => format!(
                "{version}: upgrade in progress, so compared with the RayCluster KubeRay is preparing: {what}, in place of the one being prepared"
            ),
            (true, _) => format!(
                "{version}: upgrade in progress, so compared with the RayCluster KubeRay is preparing: {what}"
            ),
        }
    }
}

impl Rollout {
    fn describe(&self) -> String {
        match self {
            Rollout::FirstCluster { gpus } => {
                format!("a new RayCluster ({gpus} GPU{})", plural(*gpus))
            }
            Rollout::InPlaceServe => {
                "in-place Serve update on the running RayCluster (no new pods)".into()
            }
            Rollout::InPlaceCluster { serve_too } => format!(
                "in-place RayCluster update (worker groups appended){}",
                if *serve_too {
                    ", and an in-place Serve update"
                } else {
                    ""
                }
            ),
            Rollout::NewCluster {
                extra_gpus,
                serve_too,
                secret_only,
            } => format!(
                "new RayCluster (zero-downtime upgrade: {extra_gpus} more GPU{} until promotion){}{}",
                plural(*extra_gpus),
                if *secret_only {
                    ", because a referenced Secret changed"
                } else {
                    ""
                },
                if *serve_too {
                    "; the new Serve config goes to the new cluster"
                } else {
                    ""
                }
            ),
            Rollout::NotApplied { why } => format!("not applied by KubeRay ({why})"),
            Rollout::NoRollout => "no new RayCluster and no Serve update".into(),
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The RayService as it is: its spec, and what its serving RayCluster was
/// built from (when KubeRay recorded it).
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    pub spec: &'a Value,
    pub built_from: Option<&'a BuiltFrom>,
}

/// What KubeRay does when a RayService goes from `live` to `planned`
/// (`None`: it is created).
pub fn assess(
    live: Option<Live<'_>>,
    planned: &Value,
    kuberay_version: Option<String>,
) -> Assessment {
    let upgrade_in_progress = live
        .and_then(|l| l.built_from)
        .is_some_and(|b| b.cluster == Compared::Preparing);
    let rollout = match live {
        None => Rollout::FirstCluster {
            gpus: gpus(&planned["spec"]["rayClusterConfig"]),
        },
        Some(live) => {
            // The hash is v1.5's structs; another release hashes its own.
            let ours = kuberay_version
                .as_deref()
                .is_some_and(|v| v.starts_with(RULES));
            let built_from = live.built_from.filter(|_| ours);
            changed(&live.spec["spec"], &planned["spec"], built_from)
        }
    };
    Assessment {
        rollout,
        kuberay_version,
        upgrade_in_progress,
    }
}

/// How the planned `rayClusterConfig` stands to the one the serving
/// RayCluster was built from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ClusterChange {
    Same,
    Appended,
    Changed,
}

fn changed(live: &Value, planned: &Value, built_from: Option<&BuiltFrom>) -> Rollout {
    let serve_too = live["serveConfigV2"] != planned["serveConfigV2"];
    let (old, new) = (&live["rayClusterConfig"], &planned["rayClusterConfig"]);
    let (old_hashed, new_hashed) = (hashed(old), hashed(new));
    let change = built_from
        .and_then(|built| by_hash(built, new))
        .unwrap_or_else(|| by_spec(&old_hashed, &new_hashed));
    match change {
        ClusterChange::Same if serve_too => return Rollout::InPlaceServe,
        // Equal but for what the hash leaves out: the replicas.
        ClusterChange::Same if old_hashed == new_hashed && old != new => {
            return Rollout::NotApplied {
                why: "only worker replicas, minReplicas or maxReplicas changed; KubeRay's cluster hash leaves them out, so the running RayCluster keeps its own".into(),
            };
        }
        ClusterChange::Same => return Rollout::NoRollout,
        ClusterChange::Appended => return Rollout::InPlaceCluster { serve_too },
        ClusterChange::Changed => {}
    }
    let also_serve = if serve_too {
        "; the Serve config is still updated in place"
    } else {
        ""
    };
    match planned
        .pointer("/upgradeStrategy/type")
        .and_then(Value::as_str)
    {
        Some("None") => Rollout::NotApplied {
            why: format!(
                "upgradeStrategy None: the running RayCluster is not replaced or changed{also_serve}"
            ),
        },
        Some("NewClusterWithIncrementalUpgrade") => Rollout::NotApplied {
            why: format!(
                "upgradeStrategy NewClusterWithIncrementalUpgrade needs the operator's RayServiceIncrementalUpgrade feature gate, off by default; without it the RayCluster is left as it is{also_serve}"
            ),
        },
        _ => Rollout::NewCluster {
            extra_gpus: gpus(new),
            serve_too,
            secret_only: old_hashed != new_hashed
                && without_checksum(old_hashed) == without_checksum(new_hashed),
        },
    }
}

/// KubeRay's own test: the planned config's hash against the serving
/// cluster's, whole, then over the groups it was built with. `None` when the
/// hash cannot be reproduced for this spec.
fn by_hash(built: &BuiltFrom, new: &Value) -> Option<ClusterChange> {
    if kuberay_hash::cluster_hash(new).ok()? == built.hash {
        return Some(ClusterChange::Same);
    }
    let groups = new["workerGroupSpecs"].as_array().map_or(0, Vec::len);
    if let Some(built_groups) = built.worker_groups.filter(|n| groups > *n)
        && kuberay_hash::cluster_hash_of_first(new, built_groups).ok()? == built.hash
    {
        return Some(ClusterChange::Appended);
    }
    Some(ClusterChange::Changed)
}

/// Without KubeRay's record: the live spec stands for what it built.
fn by_spec(old_hashed: &Value, new_hashed: &Value) -> ClusterChange {
    if old_hashed == new_hashed {
        ClusterChange::Same
    } else if appended_only(old_hashed, new_hashed) {
        ClusterChange::Appended
    } else {
        ClusterChange::Changed
    }
}

/// `rayClusterConfig` as KubeRay hashes it: worker replicas left out.
fn hashed(config: &Value) -> Value {
    super::kuberay_hash::without_replicas(config, None)
}

/// The new config is the old one with worker groups added at the end.
fn appended_only(old: &Value, new: &Value) -> bool {
    let groups = |v: &Value| {
        v["workerGroupSpecs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let (old_groups, new_groups) = (groups(old), groups(new));
    let rest = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("workerGroupSpecs");
        }
        v
    };
    new_groups.len() > old_groups.len()
        && new_groups.starts_with(&old_groups)
        && rest(old) == rest(new)
}

fn without_checksum(mut config: Value) -> Value {
    strip_checksum(config.pointer_mut("/headGroupSpec/template"));
    if let Some(groups) = config
        .get_mut("workerGroupSpecs")
        .and_then(Value::as_array_mut)
    {
        for group in groups {
            strip_checksum(group.get_mut("template"));
        }
    }
    config
}

fn strip_checksum(template: Option<&mut Value>) {
    if let Some(annotations) = template
        .and_then(|t| t.pointer_mut("/metadata/annotations"))
        .and_then(Value::as_object_mut)
    {
        annotations.remove(CHECKSUM);
    }
}

/// GPUs a RayCluster asks for: head plus each worker group's pods.
pub fn gpus(config: &Value) -> u64 {
    let head = pod_gpus(&config["headGroupSpec"]["template"]);
    let workers: u64 = config["workerGroupSpecs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let pods = g["replicas"]
                .as_u64()
                .or_else(|| g["minReplicas"].as_u64())
                .unwrap_or(0);
            pods * pod_gpus(&g["template"])
        })
        .sum();
    head + workers
}

fn pod_gpus(template: &Value) -> u64 {
    template["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let resources = &c["resources"];
            let gpu = |side: &str| match &resources[side]["nvidia.com/gpu"] {
                Value::String(s) => s.parse().ok(),
                v => v.as_u64(),
            };
            gpu("limits").or_else(|| gpu("requests")).unwrap_or(0)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(serve: &str, marker: &str, max: u64, strategy: Option<&str>) -> Value {
        let mut spec = json!({
            "serveConfigV2": serve,
            "rayClusterConfig": {
                "headGroupSpec": {"template": {"spec": {"containers": [{"name": "head", "env": [{"name": "M", "value": marker}]}]}}},
                "workerGroupSpecs": [{"groupName": "gpu", "replicas": 2, "minReplicas": 1, "maxReplicas": max,
                    "template": {"spec": {"containers": [{"name": "w", "resources": {"limits": {"nvidia.com/gpu": "4"}}}]}}}],
            }
        });
        if let Some(t) = strategy {
            spec["upgradeStrategy"] = json!({"type": t});
        }
        json!({ "spec": spec })
    }

    fn rollout(live: &Value, planned: &Value) -> Rollout {
        let live = Live {
            spec: live,
            built_from: None,
        };
        assess(Some(live), planned, None).rollout
    }

    #[test]
    fn a_serve_config_change_alone_is_sent_in_place() {
        let live = service("apps: a", "one", 4, None);
        assert_eq!(
            rollout(&live, &service("apps: b", "one", 4, None)),
            Rollout::InPlaceServe
        );
    }

    #[test]
    fn a_cluster_change_starts_a_second_cluster_with_its_gpus() {
        let live = service("apps: a", "one", 4, None);
        assert_eq!(
            rollout(&live, &service("apps: b", "two", 4, None)),
            Rollout::NewCluster {
                extra_gpus: 8,
                serve_too: true,
                secret_only: false
            }
        );
    }

    #[test]
    fn replicas_and_upgrade_strategy_none_are_not_applied() {
        let live = service("apps: a", "one", 4, None);
        let Rollout::NotApplied { why } = rollout(&live, &service("apps: a", "one", 8, None))
        else {
            panic!("replicas are not in the hash");
        };
        assert!(why.contains("maxReplicas"), "{why}");
        let Rollout::NotApplied { why } =
            rollout(&live, &service("apps: a", "two", 4, Some("None")))
        else {
            panic!("None leaves the cluster alone");
        };
        assert!(why.contains("upgradeStrategy None"), "{why}");
    }

    #[test]
    fn an_appended_worker_group_updates_the_cluster_in_place() {
        let live = service("apps: a", "one", 4, None);
        let mut planned = live.clone();
        let mut group = planned["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].clone();
        group["groupName"] = json!("cpu");
        planned["spec"]["rayClusterConfig"]["workerGroupSpecs"]
            .as_array_mut()
            .unwrap()
            .push(group);
        assert_eq!(
            rollout(&live, &planned),
            Rollout::InPlaceCluster { serve_too: false }
        );
    }

    #[test]
    fn a_rotated_secret_is_named_as_the_cause_of_the_new_cluster() {
        let with = |sum: &str| {
            let mut s = service("apps: a", "one", 4, None);
            s["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"] =
                json!({"annotations": {CHECKSUM: sum}});
            s
        };
        assert_eq!(
            rollout(&with("aaaa"), &with("bbbb")),
            Rollout::NewCluster {
                extra_gpus: 8,
                serve_too: false,
                secret_only: true
            }
        );
    }

    #[test]
    fn the_version_is_said_and_an_unknown_one_is_called_unknown() {
        let planned = service("apps: a", "one", 4, None);
        let first = assess(None, &planned, None);
        assert_eq!(
            first.describe(),
            "KubeRay version unknown (no RayCluster yet), rules of v1.5: a new RayCluster (8 GPUs)"
        );
        let live = Live {
            spec: &planned,
            built_from: None,
        };
        let later = assess(Some(live), &planned, Some("v1.5.0".into()));
        assert_eq!(
            later.describe(),
            "KubeRay v1.5.0: no new RayCluster and no Serve update"
        );
    }

    /// `live` as its serving RayCluster was built from `built` by KubeRay v1.5.0.
    fn rollout_from(live: &Value, built: &Value, planned: &Value) -> Rollout {
        rollout_by(live, built, planned, "v1.5.0")
    }

    fn rollout_by(live: &Value, built: &Value, planned: &Value, version: &str) -> Rollout {
        assessed(live, (built, Compared::Serving), planned, version).rollout
    }

    /// The change from `live` to `planned`, judged by KubeRay `version`
    /// against the RayCluster (serving, or being prepared) built from `built`.
    fn assessed(
        live: &Value,
        (built, cluster): (&Value, Compared),
        planned: &Value,
        version: &str,
    ) -> Assessment {
        let config = &built["spec"]["rayClusterConfig"];
        let built_from = BuiltFrom {
            hash: kuberay_hash::cluster_hash(config).expect("hashable"),
            worker_groups: config["workerGroupSpecs"].as_array().map(Vec::len),
            cluster,
        };
        let live = Live {
            spec: live,
            built_from: Some(&built_from),
        };
        assess(Some(live), planned, Some(version.into()))
    }

    #[test]
    fn during_an_upgrade_a_change_is_compared_with_the_cluster_being_prepared() {
        // Serving "one", preparing "two" (the live spec): going back to
        // "one" is not "no change" to KubeRay, but a third cluster.
        let serving = service("apps: a", "one", 4, None);
        let preparing = service("apps: a", "two", 4, None);
        let back = assessed(
            &preparing,
            (&preparing, Compared::Preparing),
            &serving,
            "v1.5.0",
        );
        assert_eq!(
            back.describe(),
            "KubeRay v1.5.0: upgrade in progress, so compared with the RayCluster KubeRay is preparing: new RayCluster (zero-downtime upgrade: 8 more GPUs until promotion), in place of the one being prepared"
        );
        assert_eq!(
            assessed(&serving, (&serving, Compared::Serving), &serving, "v1.5.0").rollout,
            Rollout::NoRollout,
            "the same spec against the serving cluster"
        );
        let mut relabelled = preparing.clone();
        relabelled["metadata"]["labels"] = json!({"team": "llm"});
        let same = assessed(
            &preparing,
            (&preparing, Compared::Preparing),
            &relabelled,
            "v1.5.0",
        );
        assert_eq!(
            same.describe(),
            "KubeRay v1.5.0: upgrade in progress, so compared with the RayCluster KubeRay is preparing: no new RayCluster and no Serve update"
        );
    }

    #[test]
    fn a_spec_kuberay_never_built_is_judged_by_the_cluster_it_did_build() {
        // Apply 1 changed the head under upgradeStrategy None: not applied,
        // the cluster still runs "one". Apply 2 only removes None.
        let built = service("apps: a", "one", 4, None);
        let live = service("apps: a", "two", 4, Some("None"));
        let planned = service("apps: a", "two", 4, None);
        assert_eq!(
            rollout(&live, &planned),
            Rollout::NoRollout,
            "the spec diff alone"
        );
        // Another release's hash is over its own structs: the diff stands in.
        assert_eq!(
            rollout_by(&live, &built, &planned, "v1.4.2"),
            Rollout::NoRollout
        );
        assert_eq!(
            rollout_from(&live, &built, &planned),
            Rollout::NewCluster {
                extra_gpus: 8,
                serve_too: false,
                secret_only: false
            }
        );
    }

    #[test]
    fn a_respelled_quantity_or_an_empty_resources_is_no_new_cluster() {
        let with_memory = |memory: Value| {
            let mut s = service("apps: a", "one", 4, None);
            let head = &mut s["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
                [0];
            head["resources"] = memory;
            s
        };
        let live = with_memory(json!({"limits": {"memory": "8Gi"}}));
        let respelled = with_memory(json!({"limits": {"memory": "8192Mi"}}));
        assert_eq!(rollout_from(&live, &live, &respelled), Rollout::NoRollout);
        let bare = with_memory(Value::Null);
        let empty = with_memory(json!({}));
        assert_eq!(rollout_from(&bare, &bare, &empty), Rollout::NoRollout);
        let more = with_memory(json!({"limits": {"memory": "16Gi"}}));
        assert!(matches!(
            rollout_from(&live, &live, &more),
            Rollout::NewCluster { .. }
        ));
    }

    #[test]
    fn by_the_hash_too_replicas_are_not_applied_and_appended_groups_update_in_place() {
        let live = service("apps: a", "one", 4, None);
        let Rollout::NotApplied { why } =
            rollout_from(&live, &live, &service("apps: a", "one", 8, None))
        else {
            panic!("replicas are not in the hash");
        };
        assert!(why.contains("maxReplicas"), "{why}");
        let mut planned = live.clone();
        let mut group = planned["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].clone();
        group["groupName"] = json!("cpu");
        planned["spec"]["rayClusterConfig"]["workerGroupSpecs"]
            .as_array_mut()
            .expect("groups")
            .push(group);
        assert_eq!(
            rollout_from(&live, &live, &planned),
            Rollout::InPlaceCluster { serve_too: false }
        );
        assert_eq!(
            rollout_from(&live, &live, &service("apps: b", "one", 4, None)),
            Rollout::InPlaceServe
        );
    }
}
