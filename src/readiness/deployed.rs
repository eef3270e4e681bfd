//! Whether Serve runs the config the stack asks for, from the dashboard's
//! `GET /api/serve/applications/` on the head of the serving cluster.
//!
//! KubeRay cannot tell us: it reads the apps' statuses before it sends a new
//! `serveConfigV2`, and writes them with the new `observedGeneration`, so its
//! first status after an in-place change shows the previous apps RUNNING. An
//! old `DEPLOY_FAILED` also outlives the fix that replaced it. Serve itself
//! reports each app's `deployed_app_config` next to its status.

use std::collections::BTreeMap;

use serde_json::Value;

use super::status::{message_with_deployments, strip_ansi};

#[derive(Debug, Clone, PartialEq)]
pub enum Deployed {
    /// Every application runs the config the stack asks for.
    Running,
    Waiting(String),
    /// Serve reports the stack's own config as failed: no point waiting.
    Failed(String),
}

/// Compares the dashboard's answer with the stack's applications.
pub fn compare(wanted: &BTreeMap<String, Value>, answer: &Value) -> Deployed {
    for (name, config) in wanted {
        let Some(app) = answer.pointer(&format!("/applications/{}", escape(name))) else {
            return Deployed::Waiting(format!("Serve to receive application `{name}`"));
        };
        if !contains(&app["deployed_app_config"], config) {
            return Deployed::Waiting(format!(
                "Serve to receive the new config of application `{name}` (it still runs the previous one)"
            ));
        }
        match app["status"].as_str().unwrap_or("UNKNOWN") {
            "RUNNING" => {}
            "DEPLOY_FAILED" => {
                return Deployed::Failed(format!(
                    "Serve application `{name}` failed to deploy: {}",
                    strip_ansi(&message_with_deployments(app, "deployments"))
                ));
            }
            other => {
                let said = brief(&message_with_deployments(app, "deployments"));
                return Deployed::Waiting(if said.is_empty() {
                    format!("application `{name}` ({other})")
                } else {
                    format!("application `{name}` ({other}: {said})")
                });
            }
        }
    }
    Deployed::Running
}

/// The HTTP port Serve's proxies listen on, from the dashboard's answer:
/// the Serve instance's `http_options`, fixed when Serve starts (Ray 2.60's
/// `serve_head.py` only logs a warning when a later config changes them).
/// Serve leaves out a port it was not given (its default); there are no
/// `http_options` before Serve runs.
pub fn serving_port(answer: &Value) -> Option<u16> {
    let options = answer.get("http_options").filter(|o| o.is_object())?;
    match options.get("port") {
        None | Some(Value::Null) => Some(crate::stack::serving::DEFAULT_SERVE_PORT),
        Some(p) => p.as_u64().and_then(|p| u16::try_from(p).ok()),
    }
}

/// Why Serve on `pod` will never answer on the port the stack asks for, if
/// it will not: it listens on another, and KubeRay is `settled` on this
/// cluster (the current generation observed, no new cluster coming), so the
/// change reached a running Serve, which keeps its port.
pub fn port_kept(answer: &Value, wanted: u16, settled: bool, pod: &str) -> Option<String> {
    let running = serving_port(answer)?;
    (settled && running != wanted).then(|| {
        format!(
            "Serve on {pod} listens on port {running}, not {wanted} (`http_options.port` of \
             serveConfigV2): Serve fixes its HTTP options when it starts and ignores a change \
             while it runs, and KubeRay applied this one in place, to the running RayCluster\n  \
             help: put http_options.port back to {running}, or change the head container's \
             `serve` port to {wanted} as well: a change to rayClusterConfig makes KubeRay start \
             a new RayCluster, whose Serve starts on the new port (`rayform plan` says whether a \
             change does)"
        )
    })
}

/// Whether Serve already runs the stack's config and every deployment of
/// each wanted application has a replica `RUNNING`, whatever the
/// application's own status: a request sent now is answered at once, not
/// queued behind a replica still in its constructor (minutes with vLLM).
/// During a rolling update this holds while the application is still
/// `DEPLOYING`, which is when a look may send its probe early.
pub fn replicas_running(wanted: &BTreeMap<String, Value>, answer: &Value) -> bool {
    !wanted.is_empty()
        && wanted.iter().all(|(name, config)| {
            let app = answer.pointer(&format!("/applications/{}", escape(name)));
            app.is_some_and(|app| {
                let deployments = app["deployments"].as_object();
                contains(&app["deployed_app_config"], config)
                    && deployments.is_some_and(|d| !d.is_empty() && d.values().all(has_running))
            })
        })
}

fn has_running(deployment: &Value) -> bool {
    deployment["replicas"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["state"] == "RUNNING"))
}

/// A Serve message in one line: its first (what Serve does about it) and,
/// for a traceback, its last (the exception), so a retry after a failed
/// start reads as such in a progress line.
pub(super) fn brief(message: &str) -> String {
    let message = strip_ansi(message);
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let said = match lines.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [first, .., last] => format!("{first} … {last}"),
    };
    said.chars().take(300).collect()
}

/// JSON pointer escaping of one path segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Maps Serve hands to user code as they are: a key missing from the wanted
/// one was removed by the change, not left out for Serve to default.
const VERBATIM: [&str; 3] = ["args", "user_config", "env_vars"];

/// Whether `deployed` holds everything `wanted` says; Serve may add defaults,
/// except inside the [`VERBATIM`] maps, which must match key for key.
fn contains(deployed: &Value, wanted: &Value) -> bool {
    match (deployed, wanted) {
        (Value::Object(d), Value::Object(w)) => w.iter().all(|(k, v)| {
            d.get(k).is_some_and(|dv| {
                if VERBATIM.contains(&k.as_str()) {
                    same(dv, v)
                } else {
                    contains(dv, v)
                }
            })
        }),
        (Value::Array(d), Value::Array(w)) => {
            d.len() == w.len() && d.iter().zip(w).all(|(dv, wv)| contains(dv, wv))
        }
        _ => same(deployed, wanted),
    }
}

/// Equality that reads `1` and `1.0` as one number: YAML, Go and Python
/// each pick their own.
fn same(deployed: &Value, wanted: &Value) -> bool {
    match (deployed, wanted) {
        (Value::Object(d), Value::Object(w)) => {
            d.len() == w.len()
                && w.iter()
                    .all(|(k, v)| d.get(k).is_some_and(|dv| same(dv, v)))
        }
        (Value::Array(d), Value::Array(w)) => {
            d.len() == w.len() && d.iter().zip(w).all(|(dv, wv)| same(dv, wv))
        }
        (Value::Number(d), Value::Number(w)) => d.as_f64() == w.as_f64(),
        _ => deployed == wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wanted(model: &str) -> BTreeMap<String, Value> {
        [(
            "llm".to_string(),
            json!({"name": "llm", "route_prefix": "/", "import_path": "echo_app:build", "args": {"model": model, "init_delay_s": 1}}),
        )]
        .into()
    }

    fn answer(model: &str, status: &str) -> Value {
        json!({"applications": {"llm": {"status": status, "message": "",
            "deployed_app_config": {"name": "llm", "route_prefix": "/", "import_path": "echo_app:build",
                "args": {"model": model, "init_delay_s": 1.0}, "runtime_env": {}},
            "deployments": {"EchoModel": {"status": "HEALTHY", "message": ""}}}}})
    }

    #[test]
    fn the_previous_config_running_is_not_the_new_one_running() {
        assert_eq!(
            compare(&wanted("echo-b"), &answer("echo-a", "RUNNING")),
            Deployed::Waiting(
                "Serve to receive the new config of application `llm` (it still runs the previous one)"
                    .into()
            )
        );
        assert_eq!(
            compare(&wanted("echo-b"), &answer("echo-b", "DEPLOYING")),
            Deployed::Waiting("application `llm` (DEPLOYING)".into())
        );
        assert_eq!(
            compare(&wanted("echo-b"), &answer("echo-b", "RUNNING")),
            Deployed::Running
        );
    }

    #[test]
    fn a_retried_start_is_waited_on_and_says_why() {
        let mut retrying = answer("echo-b", "DEPLOYING");
        retrying["applications"]["llm"]["deployments"]["EchoModel"] = json!({"status": "UPDATING",
            "message": "A replica failed to start with exception. Retrying 2 more time(s). Error:\n\
                Traceback (most recent call last):\n  File \"echo_app.py\", line 9\n\
                RuntimeError: weights download broke"});
        assert_eq!(
            compare(&wanted("echo-b"), &retrying),
            Deployed::Waiting(
                "application `llm` (DEPLOYING: deployment EchoModel (UPDATING): A replica failed to start \
                 with exception. Retrying 2 more time(s). Error: … RuntimeError: weights download broke)"
                    .into()
            )
        );
    }

    #[test]
    fn only_a_failure_of_the_wanted_config_is_final() {
        let mut failed = answer("broken", "DEPLOY_FAILED");
        failed["applications"]["llm"]["deployments"]["EchoModel"]["message"] =
            json!("\u{1b}[31mRuntimeError: no GPU\u{1b}[0m");
        assert_eq!(
            compare(&wanted("fixed"), &failed),
            Deployed::Waiting(
                "Serve to receive the new config of application `llm` (it still runs the previous one)"
                    .into()
            ),
            "an old failure says nothing about the fixed config"
        );
        let Deployed::Failed(message) = compare(&wanted("broken"), &failed) else {
            panic!("the wanted config failed");
        };
        assert!(message.contains("RuntimeError: no GPU"), "{message}");
        assert!(!message.contains('\u{1b}'), "{message}");
    }

    #[test]
    fn an_argument_the_change_removed_still_running_is_the_previous_config() {
        let mut failed = answer("echo-a", "DEPLOY_FAILED");
        failed["applications"]["llm"]["deployed_app_config"]["args"]["fail_on_init"] =
            json!("no GPU in this test");
        assert_eq!(
            compare(&wanted("echo-a"), &failed),
            Deployed::Waiting(
                "Serve to receive the new config of application `llm` (it still runs the previous one)"
                    .into()
            ),
            "the fix removed fail_on_init; Serve still runs the config that had it"
        );
    }

    /// The Serve instance as Ray 2.60's `get_serve_instance_details` reports
    /// it (`http_options` dumped with `exclude_unset`).
    fn instance(http_options: Value) -> Value {
        let mut a = answer("echo-a", "RUNNING");
        a["http_options"] = http_options;
        a["proxy_location"] = json!("HeadOnly");
        a
    }

    #[test]
    fn a_port_change_a_running_serve_ignored_is_final_once_kuberay_settled() {
        let kept = instance(json!({"host": "0.0.0.0", "port": 8000, "request_timeout_s": null}));
        let said = port_kept(&kept, 8123, true, "echo-x-head-1").expect("kept its port");
        assert!(
            said.starts_with("Serve on echo-x-head-1 listens on port 8000, not 8123"),
            "{said}"
        );
        assert!(
            said.contains("help: put http_options.port back to 8000"),
            "{said}"
        );
        // KubeRay may yet start a new cluster for the change: not final.
        assert_eq!(port_kept(&kept, 8123, false, "echo-x-head-1"), None);
        assert_eq!(port_kept(&kept, 8000, true, "echo-x-head-1"), None);
    }

    #[test]
    fn serve_s_port_is_its_default_when_unset_and_unknown_before_it_runs() {
        assert_eq!(
            serving_port(&instance(json!({"host": "0.0.0.0"}))),
            Some(8000)
        );
        assert_eq!(serving_port(&instance(json!({"port": 9001}))), Some(9001));
        // Ray's empty schema, before any config reached Serve.
        let empty = json!({"controller_info": {}, "proxies": {}, "applications": {}, "target_capacity": null});
        assert_eq!(serving_port(&empty), None);
        assert_eq!(port_kept(&empty, 8123, true, "p"), None);
    }

    fn replicas(answer: &mut Value, states: &[&str]) {
        let replicas: Vec<Value> = states.iter().map(|s| json!({"state": s})).collect();
        answer["applications"]["llm"]["deployments"]["EchoModel"]["replicas"] = json!(replicas);
    }

    #[test]
    fn a_running_replica_of_the_stack_s_config_takes_requests_before_the_app_is_running() {
        // As Serve 2.60 reports a rolling update of `args`, in order.
        let mut update = answer("echo-b", "DEPLOYING");
        replicas(&mut update, &["RUNNING"]);
        assert!(replicas_running(&wanted("echo-b"), &update));
        replicas(&mut update, &["STOPPING", "STARTING"]);
        assert!(
            !replicas_running(&wanted("echo-b"), &update),
            "a request now would wait for the new replica's constructor"
        );
        replicas(&mut update, &["STOPPING", "RUNNING"]);
        assert!(replicas_running(&wanted("echo-b"), &update));
    }

    #[test]
    fn no_replica_listed_or_the_previous_config_is_not_running_replicas() {
        let mut previous = answer("echo-a", "RUNNING");
        replicas(&mut previous, &["RUNNING"]);
        assert!(!replicas_running(&wanted("echo-b"), &previous));
        assert!(!replicas_running(
            &wanted("echo-a"),
            &answer("echo-a", "RUNNING")
        ));
        assert!(!replicas_running(&BTreeMap::new(), &previous));
    }

    #[test]
    fn a_missing_application_is_waited_for() {
        assert_eq!(
            compare(&wanted("x"), &json!({"applications": {}})),
            Deployed::Waiting("Serve to receive application `llm`".into())
        );
    }
}
