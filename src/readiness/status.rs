//! Reading a RayService's status as KubeRay writes it (v1.5.0's
//! `rayservice_controller.go`, and v1.6.0's `ValidationFailed`), across
//! versions: the `Ready` condition (≥ 1.3) or `serviceStatus: Running`
//! (older), for the current generation, with no upgrade under way.
//!
//! What the status cannot say is whether Serve runs the *current* config:
//! KubeRay writes the new `observedGeneration` together with app statuses it
//! read before sending the new config. That is [`super::deployed`]'s job; the
//! app statuses here are shown, never trusted.

use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Service {
    /// `status.observedGeneration` has caught up with `metadata.generation`.
    pub current: bool,
    /// `Ready=True`, or `serviceStatus: Running` on older KubeRay.
    pub ready: bool,
    /// The RayCluster that serves traffic.
    pub active: Option<String>,
    /// A RayCluster being brought up: on a first deploy, or a new cluster for an upgrade.
    pub pending: Option<String>,
    /// `UpgradeInProgress=True`.
    pub upgrading: bool,
    /// (application, status, message) as KubeRay last read them, for messages only.
    pub apps: Vec<(String, String, String)>,
    /// `Type=Status (Reason): message` for each condition, for messages.
    pub conditions: Vec<String>,
    /// A state KubeRay does not recover from by itself.
    pub failure: Option<String>,
}

impl Service {
    /// The cluster whose head to look at: the one coming up, else the one serving.
    pub fn cluster(&self) -> Option<&str> {
        self.pending.as_deref().or(self.active.as_deref())
    }

    /// KubeRay has observed the current generation and serves it from the
    /// active cluster, with no other coming: what runs there is final.
    pub fn settled(&self) -> bool {
        self.current && self.pending.is_none() && !self.upgrading && self.active.is_some()
    }

    /// What KubeRay has still to say before the RayService counts as serving
    /// the current generation from the cluster it was just given.
    pub fn waiting_for(&self) -> Option<String> {
        if !self.current {
            return Some("KubeRay to observe the current generation".into());
        }
        if let Some(pending) = &self.pending {
            return Some(match &self.active {
                None => format!("KubeRay to make RayCluster {pending} the active cluster"),
                Some(active) => format!(
                    "KubeRay to switch traffic from RayCluster {active} to {pending} (upgrade in progress)"
                ),
            });
        }
        if self.upgrading {
            return Some("the upgrade to finish (UpgradeInProgress=True)".into());
        }
        if self.active.is_none() {
            return Some("KubeRay to name a RayCluster".into());
        }
        (!self.ready).then(|| "the RayService to report Ready".into())
    }
}

/// A message with its deployments' messages: Serve puts the replica's own
/// error (an import error, an exception in the constructor) on the
/// deployment, and only "failed to update the deployments" on the app.
/// `deployments` is the key holding them (KubeRay and the dashboard differ).
pub fn message_with_deployments(app: &Value, deployments: &str) -> String {
    let mut parts: Vec<String> = app["message"]
        .as_str()
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .into_iter()
        .collect();
    if let Some(list) = app[deployments].as_object() {
        for (name, d) in list {
            if let Some(m) = d["message"].as_str().filter(|m| !m.is_empty()) {
                parts.push(format!(
                    "deployment {name} ({}): {m}",
                    d["status"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    strip_ansi(&parts.join("; "))
}

/// Serve colours its tracebacks; a terminal escape has no place in an error message.
pub fn strip_ansi(text: &str) -> String {
    anstream::adapter::strip_str(text).to_string()
}

pub fn read(object: &Value) -> Service {
    let status = &object["status"];
    let generation = object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    let observed = status.get("observedGeneration").and_then(Value::as_i64);
    let conditions: Vec<&Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    let condition = |t: &str| conditions.iter().find(|c| c["type"] == t).copied();
    let ready_condition = condition("Ready");
    let name_of = |s: &Value| {
        s.get("rayClusterName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
    };
    let pending = name_of(&status["pendingServiceStatus"]);
    let apps_of = if pending.is_some() {
        &status["pendingServiceStatus"]
    } else {
        &status["activeServiceStatus"]
    };
    Service {
        current: generation.is_some() && generation == observed,
        ready: ready_condition.is_some_and(|c| c["status"] == "True")
            || status["serviceStatus"] == "Running",
        active: name_of(&status["activeServiceStatus"]),
        pending,
        upgrading: condition("UpgradeInProgress").is_some_and(|c| c["status"] == "True"),
        apps: apps(apps_of),
        conditions: conditions.iter().map(|c| describe(c)).collect(),
        failure: ready_condition.and_then(|c| {
            let current = generation.is_some() && generation == observed;
            failure(
                c,
                current,
                status_written_at(object),
                spec_written_at(object),
            )
        }),
    }
}

fn apps(service_status: &Value) -> Vec<(String, String, String)> {
    service_status
        .get("applicationStatuses")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(name, a)| {
                    (
                        name.clone(),
                        a["status"].as_str().unwrap_or("UNKNOWN").to_string(),
                        message_with_deployments(a, "serveDeploymentStatuses"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn describe(c: &Value) -> String {
    format!(
        "{}={} ({}): {}",
        c["type"].as_str().unwrap_or("?"),
        c["status"].as_str().unwrap_or("?"),
        c["reason"].as_str().unwrap_or(""),
        c["message"].as_str().unwrap_or("")
    )
}

/// A Ready condition that no retry will change, about the spec as it is now.
///
/// `InitializingTimeout` is terminal (the RayService must be recreated).
///
/// `ValidationFailed` (KubeRay v1.6) is written by a reconcile that refused
/// the spec and returned before observing its generation, with
/// `status.lastUpdateTime` set by that very write. So it is about the current
/// spec when KubeRay has not observed the current generation and the status
/// was written since the spec was: a spec that passes validation has its
/// generation in any status written after it (v1.6.0 writes none while
/// nothing else changes, so the last write then predates the fix, as seen
/// against the real operator). Its `lastTransitionTime` cannot tell:
/// `meta.SetStatusCondition` keeps it when Ready was already False (say,
/// `Initializing`), and the condition outlives a fix until endpoints appear.
fn failure(
    ready: &Value,
    current: bool,
    status_written: Option<&str>,
    spec_written: Option<&str>,
) -> Option<String> {
    let reason = ready["reason"].as_str()?;
    let fatal = match reason {
        "InitializingTimeout" => true,
        "ValidationFailed" => {
            // RFC 3339 UTC timestamps of one server compare as strings; in
            // the same second, the refusal counts (KubeRay answers a write in
            // milliseconds, and each refusal is also an Event, read apart).
            !current
                && match (status_written, spec_written) {
                    (Some(status), Some(spec)) => status >= spec,
                    (None, _) => false,
                    (Some(_), None) => true,
                }
        }
        _ => false,
    };
    fatal.then(|| {
        format!(
            "KubeRay reports {reason}: {}",
            ready["message"].as_str().unwrap_or_default()
        )
    })
}

/// When KubeRay last wrote the status: its own `lastUpdateTime`, else the
/// newest managed-fields entry of the status subresource.
fn status_written_at(object: &Value) -> Option<&str> {
    let own = object
        .pointer("/status/lastUpdateTime")
        .and_then(Value::as_str);
    let managed = object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m["subresource"] == "status")
        .filter_map(|m| m["time"].as_str())
        .max();
    own.into_iter().chain(managed).max()
}

/// When the spec was last written: the newest managed-fields entry that is
/// not a status write.
fn spec_written_at(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .filter(|m| m["subresource"].as_str().unwrap_or_default().is_empty())
        .filter_map(|m| m["time"].as_str())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn serving(generation: i64, observed: i64) -> Value {
        json!({"metadata": {"generation": generation}, "status": {
            "observedGeneration": observed,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"},
                {"type": "UpgradeInProgress", "status": "False", "reason": "NoPendingCluster"}],
            "activeServiceStatus": {"rayClusterName": "llm-abcde", "applicationStatuses": {"llm": {"status": "RUNNING"}}}
        }})
    }

    #[test]
    fn ready_needs_the_current_generation() {
        assert_eq!(
            read(&serving(2, 1)).waiting_for().as_deref(),
            Some("KubeRay to observe the current generation")
        );
        assert_eq!(read(&serving(2, 2)).waiting_for(), None);
    }

    #[test]
    fn a_pending_cluster_is_not_serving_until_kuberay_switches_to_it() {
        let mut rs = serving(3, 3);
        rs["status"]["pendingServiceStatus"] = json!({"rayClusterName": "llm-fghij",
            "applicationStatuses": {"llm": {"status": "RUNNING"}}});
        rs["status"]["conditions"][1] = json!({"type": "UpgradeInProgress", "status": "True", "reason": "BothActivePendingClustersExist"});
        let s = read(&rs);
        assert_eq!(s.cluster(), Some("llm-fghij"));
        assert_eq!(
            s.waiting_for().as_deref(),
            Some(
                "KubeRay to switch traffic from RayCluster llm-abcde to llm-fghij (upgrade in progress)"
            )
        );
        rs["status"]["pendingServiceStatus"] = json!({});
        assert_eq!(
            read(&rs).waiting_for().as_deref(),
            Some("the upgrade to finish (UpgradeInProgress=True)")
        );
    }

    #[test]
    fn older_kuberay_says_running_instead_of_a_condition() {
        let rs = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "serviceStatus": "Running",
            "activeServiceStatus": {"rayClusterName": "llm-raycluster-abcde", "applicationStatuses": {"llm": {"status": "RUNNING"}}}}});
        assert_eq!(read(&rs).waiting_for(), None);
    }

    #[test]
    fn an_app_failure_in_kuberays_status_is_shown_not_final() {
        let rs = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
            "pendingServiceStatus": {"rayClusterName": "llm-abcde", "applicationStatuses": {"llm": {"status": "DEPLOY_FAILED",
                "message": "failed", "serveDeploymentStatuses": {"EchoModel": {"status": "UNHEALTHY", "message": "ImportError: no module"}}}}}}});
        let s = read(&rs);
        assert_eq!(s.failure, None);
        assert_eq!(
            s.apps[0].2,
            "failed; deployment EchoModel (UNHEALTHY): ImportError: no module"
        );
    }

    /// KubeRay v1.6.0 on a spec it refuses, as its source writes the status:
    /// `setCondition(Ready, False, ValidationFailed)` keeps the condition's
    /// `lastTransitionTime` when Ready was already False, copies the last
    /// observed generation into it, and sets `lastUpdateTime`; it returns
    /// before `calculateStatus`, which alone writes `observedGeneration`.
    fn refused_by_v1_6(generation: i64, observed: i64, updated: &str) -> Value {
        json!({"metadata": {"generation": generation, "managedFields": [
                {"manager": "rayform/demo", "operation": "Apply", "time": "2026-11-28T10:00:05Z"},
                {"manager": "ray-operator", "operation": "Update", "subresource": "status", "time": updated}]},
            "status": {"observedGeneration": observed, "lastUpdateTime": updated, "conditions": [
                {"type": "Ready", "status": "False", "reason": "ValidationFailed", "observedGeneration": 1,
                 "message": "spec.upgradeStrategy.type value Sometimes is invalid",
                 "lastTransitionTime": "2026-11-28T09:58:00Z"},
                {"type": "UpgradeInProgress", "status": "False", "reason": "Initializing", "observedGeneration": 1,
                 "lastTransitionTime": "2026-11-28T09:58:00Z"}]}})
    }

    #[test]
    fn a_validation_failure_of_the_current_spec_fails_however_old_its_transition() {
        // Generation 1 was initializing since 09:58; generation 2, written at
        // 10:00:05, is refused at once: the transition time is still 09:58.
        let refused = refused_by_v1_6(2, 1, "2026-11-28T10:00:05Z");
        assert_eq!(
            read(&refused).failure.as_deref(),
            Some(
                "KubeRay reports ValidationFailed: spec.upgradeStrategy.type value Sometimes is invalid"
            )
        );
        // A first deploy refused: no generation was ever observed.
        let mut first = refused_by_v1_6(1, 0, "2026-11-28T10:00:06Z");
        first["status"]
            .as_object_mut()
            .map(|s| s.remove("observedGeneration"));
        assert!(read(&first).failure.is_some());
    }

    #[test]
    fn a_validation_failure_left_from_an_earlier_spec_is_not_final() {
        // The fix (generation 3) was observed: the condition stays until
        // endpoints appear, about a spec that is gone.
        let fixed = refused_by_v1_6(3, 3, "2026-11-28T10:01:00Z");
        assert_eq!(read(&fixed).failure, None);
        // The fix written after KubeRay's last word, not reconciled yet.
        let mut pending = refused_by_v1_6(3, 1, "2026-11-28T10:00:04Z");
        pending["status"]["lastUpdateTime"] = json!("2026-11-28T10:00:04Z");
        assert_eq!(read(&pending).failure, None);
    }

    #[test]
    fn a_timed_out_rayservice_stays_failed() {
        let mut rs = refused_by_v1_6(3, 3, "2026-11-28T10:01:00Z");
        rs["status"]["conditions"][0]["reason"] = json!("InitializingTimeout");
        assert!(read(&rs).failure.is_some());
    }
}
