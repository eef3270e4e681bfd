//! The complete account of a wait (`apply -v`): every link of the chain in
//! one block, from the RayService down to the pods and back up to Serve, so
//! a user never has to run `kubectl describe` on four kinds of object.
//!
//! The quiet default says a line when the phase or a pod changes; this says
//! all that lies behind them: KubeRay's conditions and Events, each
//! RayCluster's state, each pod's containers (waiting reasons, restarts and
//! the last termination) and the Events that explain a wait, Serve's
//! applications and deployments with their replicas. The wait says it again
//! only when some of it changed: the block is rendered once without clocks
//! (`now` is `None`) to tell a change, and said with them.
//!
//! A pure rendering of what the wait already read, so each part is tested
//! without a cluster.

use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::below::Below;
use super::deployed::brief;
use super::events::{reported_by, when};
use super::pods::PodAccount;
use super::status::Service;
use super::{Seen, status};

/// Events of each object the account shows at most (the newest).
const EVENTS_SHOWN: usize = 6;

/// The block, two spaces in, one line a fact.
pub(super) fn render(
    rayservice: &str,
    seen: &Seen,
    below: &Below,
    now: Option<Timestamp>,
) -> String {
    let mut lines = rayservice_lines(rayservice, seen.service.as_ref(), below.kuberay());
    if let Some(service) = &seen.service {
        let named = [
            (service.pending.as_deref(), "pending"),
            (service.active.as_deref(), "active"),
        ];
        for (name, role) in named.into_iter().filter_map(|(n, r)| Some((n?, r))) {
            lines.extend(raycluster_lines(name, role, below, now));
        }
    }
    lines.extend(serve_lines(seen));
    lines
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn rayservice_lines(name: &str, service: Option<&Service>, kuberay: &[Event]) -> Vec<String> {
    let Some(s) = service else {
        return vec![format!("RayService {name}: not found")];
    };
    let mut lines = vec![format!(
        "RayService {name}: {}{}; active RayCluster {}, pending {}",
        if s.ready { "ready" } else { "not ready" },
        if s.current {
            ""
        } else {
            ", current generation not yet observed"
        },
        s.active.as_deref().unwrap_or("none"),
        s.pending.as_deref().unwrap_or("none"),
    )];
    lines.extend(s.conditions.iter().map(|c| format!("  condition {c}")));
    for (app, state, message) in &s.apps {
        lines.push(format!(
            "  application {app} (KubeRay's view): {state}{}",
            colon(&brief(message))
        ));
    }
    lines.extend(event_lines(about(kuberay, "RayService", name), |_| true));
    lines
}

fn raycluster_lines(name: &str, role: &str, below: &Below, now: Option<Timestamp>) -> Vec<String> {
    let object = below
        .rayclusters()
        .iter()
        .find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(name));
    let mut lines = vec![match object {
        Some(c) => format!("RayCluster {name} ({role}): {}", raycluster_state(c)),
        None => format!("RayCluster {name} ({role})"),
    }];
    if let Some(c) = object {
        let conditions = c.pointer("/status/conditions").and_then(Value::as_array);
        lines.extend(
            conditions
                .into_iter()
                .flatten()
                .map(|c| format!("  condition {}", condition(c))),
        );
    }
    lines.extend(event_lines(
        about(below.kuberay(), "RayCluster", name),
        |_| true,
    ));
    for (account, pod, events) in below.pods() {
        if account.raycluster.as_deref() == Some(name) {
            lines.extend(pod_lines(account, pod, events, now).map(|l| format!("  {l}")));
        }
    }
    lines
}

/// `state ready; workers ready 1, available 1, desired 1`, as KubeRay counts them.
fn raycluster_state(c: &Value) -> String {
    let status = &c["status"];
    let state = match (status["state"].as_str(), status["reason"].as_str()) {
        (Some(s), Some(r)) if !r.is_empty() => format!("state {s} ({r})"),
        (Some(s), _) => format!("state {s}"),
        (None, _) => "no state yet".to_string(),
    };
    let count = |key: &str| status[key].as_i64().unwrap_or(0);
    format!(
        "{state}; workers ready {}, available {}, desired {}",
        count("readyWorkerReplicas"),
        count("availableWorkerReplicas"),
        count("desiredWorkerReplicas")
    )
}

fn condition(c: &Value) -> String {
    let text = |key: &str| c[key].as_str().unwrap_or_default();
    format!(
        "{}={} ({}){}",
        text("type"),
        text("status"),
        text("reason"),
        colon(text("message"))
    )
}

/// A pod's line (a pull with its time so far, when `now` is given), its
/// containers, and the Events that explain where it is.
fn pod_lines(
    account: &PodAccount,
    pod: &Pod,
    events: &[Event],
    now: Option<Timestamp>,
) -> impl Iterator<Item = String> {
    let line = match now {
        Some(now) => account.line_at(now),
        None => account.to_string(),
    };
    let status = pod.status.clone().unwrap_or_default();
    let containers = [
        ("init container", status.init_container_statuses),
        ("container", status.container_statuses),
    ]
    .into_iter()
    .flat_map(|(what, list)| {
        list.unwrap_or_default()
            .into_iter()
            .map(move |c| format!("  {what} {}", container(&c)))
    });
    let events = event_lines(events.iter().collect(), explains);
    std::iter::once(line)
        .chain(containers)
        .chain(events)
        .collect::<Vec<_>>()
        .into_iter()
}

/// `ray-head: waiting (CrashLoopBackOff: …), 2 restarts; last: exit code 1 (Error): …`
fn container(c: &ContainerStatus) -> String {
    let state = c.state.clone().unwrap_or_default();
    let now = if let Some(w) = &state.waiting {
        let reason = w.reason.clone().unwrap_or_default();
        format!(
            "waiting ({reason}{})",
            colon(w.message.as_deref().unwrap_or_default())
        )
    } else if let Some(t) = &state.terminated {
        format!("terminated ({})", termination(t))
    } else if state.running.is_some() {
        (if c.ready {
            "running, ready"
        } else {
            "running, not ready"
        })
        .to_string()
    } else {
        "no state yet".to_string()
    };
    let mut said = format!("{}: {now}", c.name);
    if c.restart_count > 0 {
        said.push_str(&format!(", {} restarts", c.restart_count));
    }
    if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
        said.push_str(&format!("; last: {}", termination(t)));
    }
    said
}

fn termination(t: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> String {
    let reason = t
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let message = brief(t.message.as_deref().unwrap_or_default());
    format!("exit code {}{reason}{}", t.exit_code, colon(&message))
}

/// What explains a pod's wait: every warning (FailedScheduling, BackOff,
/// Failed, Unhealthy…), and Karpenter's nomination and the kubelet's pulls.
fn explains(e: &Event) -> bool {
    e.type_.as_deref() == Some("Warning")
        || matches!(
            e.reason.as_deref(),
            Some("Nominated" | "Pulling" | "Pulled")
        )
}

fn about<'e>(events: &'e [Event], kind: &str, name: &str) -> Vec<&'e Event> {
    events
        .iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some(kind)
                && e.involved_object.name.as_deref() == Some(name)
        })
        .collect()
}

/// The newest Event of each reason and component that `keep` keeps, oldest
/// first, indented under their object: a repeated Event (the kubelet's back-off) is one line, and its
/// count and time are left out so that its repeating is not a change.
fn event_lines(mut events: Vec<&Event>, keep: fn(&Event) -> bool) -> Vec<String> {
    events.retain(|e| keep(e));
    events.sort_by_key(|e| std::cmp::Reverse(when(e)));
    let mut seen = Vec::new();
    let mut lines = Vec::new();
    for e in events {
        let key = (
            e.reason.clone().unwrap_or_default(),
            reported_by(e).to_string(),
        );
        if seen.contains(&key) || lines.len() == EVENTS_SHOWN {
            continue;
        }
        lines.push(format!(
            "  event {} ({}){}",
            key.0,
            key.1,
            colon(&brief(e.message.as_deref().unwrap_or_default()))
        ));
        seen.push(key);
    }
    lines.reverse();
    lines
}

/// Serve on the head: each application of the dashboard's last answer and
/// its deployments with their replicas; then the route table and the probe.
fn serve_lines(seen: &Seen) -> Vec<String> {
    let mut lines = Vec::new();
    let apps = seen
        .serve
        .as_ref()
        .and_then(|a| a.get("applications"))
        .and_then(Value::as_object);
    match apps {
        Some(apps) if apps.is_empty() => lines.push("Serve applications: none yet".to_string()),
        Some(apps) => {
            lines.push("Serve applications:".to_string());
            for (name, app) in apps {
                lines.extend(application_lines(name, app).map(|l| format!("  {l}")));
            }
        }
        None => lines.push(format!(
            "Serve applications: {}",
            seen.serve_apps.as_deref().unwrap_or("not asked yet")
        )),
    }
    let or = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.to_string());
    lines.push(format!("endpoint: {}", or(&seen.endpoint, "none yet")));
    lines.push(format!("/-/routes: {}", or(&seen.routes, "not asked yet")));
    lines.push(format!(
        "probe: {}",
        or(&seen.probe.as_deref().map(answered), "not sent yet")
    ));
    if let Some(w) = &seen.watch {
        lines.push(format!("watch: {w}"));
    }
    lines
}

/// A probe's answer without its body: a chat completion's has an id and a
/// time of its own, which would make each answer a change.
fn answered(probe: &str) -> String {
    match probe.split_once(": ") {
        Some((what, said))
            if said.len() > 3 && said.as_bytes()[..3].iter().all(u8::is_ascii_digit) =>
        {
            format!("{what}: {}", &said[..3])
        }
        _ => probe.to_string(),
    }
}

fn application_lines(name: &str, app: &Value) -> impl Iterator<Item = String> {
    let head = format!(
        "application {name}: {}{}",
        app["status"].as_str().unwrap_or("UNKNOWN"),
        colon(&brief(app["message"].as_str().unwrap_or_default()))
    );
    let deployments = app["deployments"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, d)| format!("  {}", deployment(name, d)))
        .collect::<Vec<_>>();
    std::iter::once(head).chain(deployments)
}

/// `deployment EchoModel: UPDATING; replicas STARTING 1 (target 1): …`
fn deployment(name: &str, d: &Value) -> String {
    let mut states: Vec<(String, usize)> = Vec::new();
    for r in d["replicas"].as_array().into_iter().flatten() {
        let state = r["state"].as_str().unwrap_or("UNKNOWN").to_string();
        match states.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => states.push((state, 1)),
        }
    }
    let replicas = if states.is_empty() {
        "none".to_string()
    } else {
        states
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let target = d["target_num_replicas"]
        .as_u64()
        .map(|t| format!(" (target {t})"))
        .unwrap_or_default();
    format!(
        "deployment {name}: {}; replicas {replicas}{target}{}",
        d["status"].as_str().unwrap_or("UNKNOWN"),
        colon(&status::strip_ansi(&brief(
            d["message"].as_str().unwrap_or_default()
        )))
    )
}

/// `: message`, or nothing for an empty one.
fn colon(message: &str) -> String {
    if message.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", message.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(
        kind: &str,
        name: &str,
        reason: &str,
        warning: bool,
        message: &str,
        at: &str,
    ) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("e-{reason}-{at}")},
            "involvedObject": {"kind": kind, "name": name},
            "type": if warning { "Warning" } else { "Normal" },
            "reason": reason,
            "message": message,
            "source": {"component": if kind == "Pod" { "kubelet" } else { "ray-operator" }},
            "lastTimestamp": format!("2026-12-05T01:00:{at}Z"),
        }))
        .expect("an event")
    }

    #[test]
    fn a_container_says_its_state_restarts_and_last_termination() {
        let c: ContainerStatus = serde_json::from_value(json!({
            "name": "ray-head", "image": "x", "imageID": "", "ready": false, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "usage: ray start\nno such option: --no-such-flag"}},
        }))
        .expect("a container status");
        assert_eq!(
            container(&c),
            "ray-head: waiting (CrashLoopBackOff: back-off 20s restarting failed container), 2 restarts; \
             last: exit code 2 (Error): usage: ray start … no such option: --no-such-flag"
        );
    }

    #[test]
    fn events_are_the_newest_of_each_reason_and_their_repeats_are_not_a_change() {
        let pulling = event("Pod", "p", "Pulling", false, "Pulling image \"x\"", "01");
        let created = event("Pod", "p", "Created", false, "Created container", "02");
        let backoff = event(
            "Pod",
            "p",
            "BackOff",
            true,
            "Back-off pulling image \"x\"",
            "05",
        );
        let again = event(
            "Pod",
            "p",
            "BackOff",
            true,
            "Back-off pulling image \"x\"",
            "35",
        );
        let lines = event_lines(vec![&pulling, &created, &backoff, &again], explains);
        assert_eq!(
            lines,
            [
                "  event Pulling (kubelet): Pulling image \"x\"",
                "  event BackOff (kubelet): Back-off pulling image \"x\""
            ],
            "Created explains nothing; the back-off is said once"
        );
        assert_eq!(lines, event_lines(vec![&pulling, &backoff], explains));
    }

    #[test]
    fn serve_says_each_deployment_with_its_replicas() {
        let app = json!({"status": "DEPLOYING", "message": "", "deployments": {"EchoModel": {
            "status": "UPDATING", "target_num_replicas": 2,
            "message": "A replica failed to start with exception. Retrying 2 more time(s).\nTraceback\nRuntimeError: no weights",
            "replicas": [{"state": "STARTING"}, {"state": "RUNNING"}, {"state": "STARTING"}]}}});
        let lines: Vec<String> = application_lines("llm", &app).collect();
        assert_eq!(
            lines,
            [
                "application llm: DEPLOYING",
                "  deployment EchoModel: UPDATING; replicas STARTING 2, RUNNING 1 (target 2): \
                 A replica failed to start with exception. Retrying 2 more time(s). … RuntimeError: no weights"
            ]
        );
    }

    #[test]
    fn the_account_goes_from_the_rayservice_down_to_the_pods_and_up_to_serve() {
        let service = Service {
            current: true,
            pending: Some("echo-x".into()),
            conditions: vec!["Ready=False (Initializing): waiting".into()],
            ..Service::default()
        };
        let seen = Seen {
            service: Some(service),
            serve_apps: Some("port-forward to echo-x-head-h:8265: connection refused".into()),
            ..Seen::default()
        };
        let mut below = Below::default();
        let refused = event(
            "RayService",
            "echo",
            "InvalidRayServiceSpec",
            true,
            "The RayService spec is invalid",
            "03",
        );
        below.set_for_test(
            vec![json!({"metadata": {"name": "echo-x"}, "status": {"state": "ready",
                "readyWorkerReplicas": 0, "desiredWorkerReplicas": 1,
                "conditions": [{"type": "HeadPodReady", "status": "True", "reason": "HeadPodRunningAndReady"}]}})],
            vec![refused],
        );
        let block = render("echo", &seen, &below, None);
        assert_eq!(
            block,
            "  RayService echo: not ready; active RayCluster none, pending echo-x\n\
             \x20   condition Ready=False (Initializing): waiting\n\
             \x20   event InvalidRayServiceSpec (ray-operator): The RayService spec is invalid\n\
             \x20 RayCluster echo-x (pending): state ready; workers ready 0, available 0, desired 1\n\
             \x20   condition HeadPodReady=True (HeadPodRunningAndReady)\n\
             \x20 Serve applications: port-forward to echo-x-head-h:8265: connection refused\n\
             \x20 endpoint: none yet\n\
             \x20 /-/routes: not asked yet\n\
             \x20 probe: not sent yet"
        );
    }

    #[test]
    fn a_probe_s_answer_is_its_status_and_an_error_is_whole() {
        assert_eq!(
            answered(r#"POST /v1/chat/completions: 200 {"id":"chatcmpl-1","created":1}"#),
            "POST /v1/chat/completions: 200"
        );
        let refused = "POST /v1/chat/completions: port-forward to p:8000: connection refused";
        assert_eq!(answered(refused), refused);
    }
}
