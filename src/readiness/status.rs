//! Reading a RayService's status the way it means across KubeRay versions:
//! the `Ready` condition (KubeRay ≥ 1.3) or `serviceStatus: Running` (older),
//! for the current generation, with every Serve application `RUNNING`.

use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Service {
    /// `status.observedGeneration` has caught up with `metadata.generation`.
    pub current: bool,
    pub ready: bool,
    /// The RayCluster serving (or about to serve) this RayService.
    pub cluster: Option<String>,
    /// (application, status, message), from the active cluster, else the pending one.
    pub apps: Vec<(String, String, String)>,
    /// `Type=Status (Reason): message` for each condition, for error messages.
    pub conditions: Vec<String>,
    /// A state KubeRay does not recover from by itself.
    pub failure: Option<String>,
}

impl Service {
    /// What is still missing, in the order a deploy goes through.
    pub fn waiting_for(&self) -> Option<String> {
        if !self.current {
            return Some("KubeRay to observe the current generation".into());
        }
        if self.cluster.is_none() {
            return Some("KubeRay to name a RayCluster".into());
        }
        if let Some((name, status, _)) = self.apps.iter().find(|(_, s, _)| s != "RUNNING") {
            return Some(format!("application `{name}` ({status})"));
        }
        if self.apps.is_empty() {
            return Some("Serve applications to be reported".into());
        }
        (!self.ready).then(|| "the RayService to report Ready".into())
    }
}

/// An application's message, with its deployments' messages: Serve puts the
/// replica's own error (an import error, an exception in the constructor) on
/// the deployment, and only "failed to update the deployments" on the app.
fn app_message(app: &Value) -> String {
    let mut parts: Vec<String> = app["message"]
        .as_str()
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .into_iter()
        .collect();
    if let Some(deployments) = app["serveDeploymentStatuses"].as_object() {
        for (name, d) in deployments {
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
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
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
    let ready_condition = conditions.iter().find(|c| c["type"] == "Ready");
    let ready_flag = ready_condition.is_some_and(|c| c["status"] == "True")
        || status["serviceStatus"] == "Running";
    let active = &status["activeServiceStatus"];
    let pending = &status["pendingServiceStatus"];
    let name_of = |s: &Value| {
        s.get("rayClusterName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
    };
    let cluster = name_of(pending).or_else(|| name_of(active));
    let apps_of = |s: &Value| -> Vec<(String, String, String)> {
        s.get("applicationStatuses")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(name, a)| {
                        (
                            name.clone(),
                            a["status"].as_str().unwrap_or("UNKNOWN").to_string(),
                            app_message(a),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // During a first deploy or an upgrade the interesting apps are the pending cluster's.
    let pending_apps = apps_of(pending);
    let apps = if pending_apps.is_empty() {
        apps_of(active)
    } else {
        pending_apps
    };
    let mut failure =
        apps.iter()
            .find(|(_, s, _)| s == "DEPLOY_FAILED")
            .map(|(name, _, message)| {
                format!("Serve application `{name}` failed to deploy: {message}")
            });
    if let Some(c) = ready_condition
        && matches!(
            c["reason"].as_str(),
            Some("InitializingTimeout" | "ValidationFailed")
        )
    {
        failure.get_or_insert_with(|| {
            format!(
                "KubeRay reports {}: {}",
                c["reason"].as_str().unwrap_or_default(),
                c["message"].as_str().unwrap_or_default()
            )
        });
    }
    let current = generation.is_some() && generation == observed;
    let all_running = !apps.is_empty() && apps.iter().all(|(_, s, _)| s == "RUNNING");
    Service {
        current,
        ready: current && ready_flag && all_running,
        cluster,
        apps,
        conditions: conditions
            .iter()
            .map(|c| {
                format!(
                    "{}={} ({}): {}",
                    c["type"].as_str().unwrap_or("?"),
                    c["status"].as_str().unwrap_or("?"),
                    c["reason"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                )
            })
            .collect(),
        failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_needs_the_current_generation_and_running_apps() {
        let mut rs = json!({"metadata": {"generation": 2}, "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
            "activeServiceStatus": {"rayClusterName": "llm-abcde", "applicationStatuses": {"llm": {"status": "RUNNING"}}}
        }});
        assert!(
            !read(&rs).ready,
            "an old generation's readiness does not count"
        );
        rs["status"]["observedGeneration"] = json!(2);
        assert!(read(&rs).ready);
        rs["status"]["activeServiceStatus"]["applicationStatuses"]["llm"]["status"] =
            json!("DEPLOYING");
        assert!(!read(&rs).ready);
    }

    #[test]
    fn older_kuberay_says_running_instead_of_a_condition() {
        let rs = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "serviceStatus": "Running",
            "activeServiceStatus": {"rayClusterName": "llm-raycluster-abcde", "applicationStatuses": {"llm": {"status": "RUNNING"}}}}});
        assert!(read(&rs).ready);
    }

    #[test]
    fn a_failed_deploy_is_reported_with_serves_message() {
        let rs = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
            "pendingServiceStatus": {"rayClusterName": "llm-abcde", "applicationStatuses": {"llm": {"status": "DEPLOY_FAILED", "message": "ImportError: no module"}}}}});
        assert_eq!(
            read(&rs).failure.unwrap(),
            "Serve application `llm` failed to deploy: ImportError: no module"
        );
    }
}
