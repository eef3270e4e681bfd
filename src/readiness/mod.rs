//! Readiness: the terminal node. "Applied" is not "serving": a RayService is
//! ready when KubeRay says so for its current generation with no upgrade
//! under way, Serve on the serving cluster's head runs the config the stack
//! asks for, it lists a route prefix that serves the path, and a real
//! request answers, from the model the stack names.
//!
//! Why all of it: KubeRay's first status of a new generation can carry the
//! previous apps' statuses (it reads them before sending the new config),
//! Serve lists a route while the replica is still in its constructor, and
//! requests sent then hang until it is up (minutes with vLLM). So each
//! signal is necessary, none is sufficient, and every request has its own
//! deadline.

mod account;
mod auth;
mod below;
mod deployed;
mod events;
mod http;
mod look;
pub mod pods;
pub mod progress;
pub mod routes;
pub mod status;

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::stack::serving::{ProbeRequest, Target};
pub use auth::reads_a_secret;
pub use look::{Look, Serving, look};
pub use progress::{Detail, Link, Progress, Said, Sink};

use crate::cluster::{Cluster, Followed, WatchTrouble};
use crate::util::format_duration;
use deployed::Deployed;
use progress::{At, Reporter};

/// Where the dashboard listens when the head container names no `dashboard` port.
const DEFAULT_DASHBOARD_PORT: u16 = 8265;
/// After this long, look at Serve at most every `PATIENT_INTERVAL`.
const PATIENT_AFTER: Duration = Duration::from_secs(60);
const PATIENT_INTERVAL: Duration = Duration::from_secs(2);
/// How often the wait asks the API server about what lies below its phase:
/// pods change on the scale of seconds, and the loop may run every 100 ms.
const EVERY_LOOK: Duration = Duration::from_secs(1);
/// Deadline of one request to the route table or the dashboard.
const LOOK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("{0}")]
    Failed(String),
    #[error("rayservice.{rayservice} did not serve {path} within {}; held up by: {held_up_by}\nlast seen:\n{last}", format_duration(*timeout))]
    Timeout {
        rayservice: String,
        path: String,
        timeout: Duration,
        /// The link of the chain the wait was on when time ran out.
        held_up_by: String,
        last: String,
    },
}

/// What the wait does about a cause that will not go away by itself (an
/// image that cannot be pulled, a crash loop, a spec KubeRay refuses, a
/// failed deploy): say so and stop, or say so and wait on for someone to fix
/// it by hand (`apply --keep-waiting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStuck {
    Fail,
    KeepWaiting,
}

/// Where the service answered, and how to reach it.
#[derive(Debug, Clone)]
pub struct Ready {
    pub rayservice: String,
    pub path: String,
    pub route: String,
    pub app: String,
    pub elapsed: Duration,
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone)]
pub enum Endpoint {
    Url(String),
    Pod {
        namespace: String,
        pod: String,
        serve_port: u16,
        dashboard_port: u16,
    },
}

impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rayservice.{} serves {} (route prefix {} → application `{}`), ready after {:.1}s.",
            self.rayservice,
            self.path,
            self.route,
            self.app,
            self.elapsed.as_secs_f64()
        )?;
        match &self.endpoint {
            Endpoint::Url(url) => write!(f, "Reach it at {url}{}", self.path),
            Endpoint::Pod {
                namespace,
                pod,
                serve_port: s,
                dashboard_port: d,
            } => write!(
                f,
                "Reach it:      kubectl -n {namespace} port-forward pod/{pod} {s}:{s}   then http://localhost:{s}{}\n\
                 Ray dashboard: kubectl -n {namespace} port-forward pod/{pod} {d}:{d}   then http://localhost:{d}",
                self.path
            ),
        }
    }
}

/// What the last look showed, for progress lines and the timeout message.
#[derive(Debug, Default)]
struct Seen {
    service: Option<status::Service>,
    watch: Option<String>,
    endpoint: Option<String>,
    serve_apps: Option<String>,
    routes: Option<String>,
    probe: Option<String>,
    /// One line a pod of the clusters KubeRay named, from the last look below it.
    pods: Vec<String>,
    /// The dashboard's last answer on Serve's applications, for the complete account.
    serve: Option<Value>,
    /// The link of the chain the last look stopped at.
    at: At,
}

impl Seen {
    fn describe(&self) -> String {
        let mut lines = Vec::new();
        match &self.service {
            None => lines.push("  RayService: not found".to_string()),
            Some(s) => {
                lines.push(format!(
                    "  RayService: {}{} (active RayCluster {}{})",
                    if s.ready { "ready" } else { "not ready" },
                    if s.current {
                        ""
                    } else {
                        ", current generation not yet observed"
                    },
                    s.active.as_deref().unwrap_or("none"),
                    s.pending
                        .as_deref()
                        .map(|p| format!(", pending {p}"))
                        .unwrap_or_default()
                ));
                for c in &s.conditions {
                    lines.push(format!("    condition {c}"));
                }
                for (name, st, msg) in &s.apps {
                    let msg = if msg.is_empty() {
                        String::new()
                    } else {
                        format!(": {msg}")
                    };
                    lines.push(format!(
                        "    application {name} (KubeRay's view): {st}{msg}"
                    ));
                }
            }
        }
        let or = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.to_string());
        if let Some(w) = &self.watch {
            lines.push(format!("  watch: {w}"));
        }
        lines.push(format!("  endpoint: {}", or(&self.endpoint, "none yet")));
        lines.push(format!(
            "  Serve applications: {}",
            or(&self.serve_apps, "not asked yet")
        ));
        lines.push(format!(
            "  /-/routes: {}",
            or(&self.routes, "not asked yet")
        ));
        lines.push(format!("  probe: {}", or(&self.probe, "not sent yet")));
        for pod in &self.pods {
            lines.push(format!("  {pod}"));
        }
        lines.join("\n")
    }
}

/// Why one look did not end the wait.
enum NotYet {
    Waiting(String),
    Failed(String),
}

impl From<String> for NotYet {
    fn from(phase: String) -> NotYet {
        NotYet::Waiting(phase)
    }
}

/// Waits until the RayService serves `target.wait.path`, reporting each phase.
///
/// One loop on purpose: the watch, each look, the progress lines and the
/// deadline share its state (the phase last reported, when to say "still").
pub async fn wait(
    cluster: &Cluster,
    namespace: &str,
    target: &Target,
    on_stuck: OnStuck,
    detail: Detail,
    progress: Sink,
) -> Result<Ready, ReadinessError> {
    let spec = &target.wait;
    let kind = rayservice_kind(cluster)?;
    let mut watch = cluster.watch(&kind, Some(namespace), &spec.rayservice);
    let mut say = Reporter::new(progress, &spec.rayservice);
    // Event times have whole seconds; one second back keeps KubeRay's first
    // word on this spec, which may come before the wait starts.
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    let mut asked_kuberay = None::<Instant>;
    let mut seen = Seen::default();
    let mut operator_asked = false;
    let mut below = below::Below::new(detail);
    let mut connections = http::Connections::default();
    loop {
        // Mark this version seen, so that only a newer one wakes the wait early.
        let Followed { object, trouble } = watch.borrow_and_update().clone();
        seen.watch = match trouble {
            Some(WatchTrouble::Fatal(message)) => return Err(ReadinessError::Failed(message)),
            Some(WatchTrouble::Retrying(message)) => Some(format!("{message} (retrying)")),
            None => None,
        };
        seen.service = object.as_ref().map(status::read);
        let phase = match check(cluster, &mut connections, namespace, target, &mut seen).await {
            Ok((route, app, endpoint)) => {
                return Ok(Ready {
                    rayservice: spec.rayservice.clone(),
                    path: spec.path.clone(),
                    route,
                    app,
                    elapsed: say.elapsed(),
                    endpoint,
                });
            }
            Err(NotYet::Failed(message)) if on_stuck == OnStuck::Fail => {
                return Err(say.fail(&seen.at, message, None));
            }
            Err(NotYet::Failed(message)) => format!("a fix for: {message}"),
            Err(NotYet::Waiting(phase)) => match &seen.watch {
                Some(w) => format!("{phase}; watch: {w}"),
                None => phase,
            },
        };
        if let Some(service) = seen.service.clone() {
            for pod in below
                .look(cluster, namespace, &service, &spec.rayservice)
                .await
            {
                say.pod(&seen.at, &pod);
            }
            seen.pods = below.lines();
            if let Some(stuck) = below.stuck(&service).filter(|_| on_stuck == OnStuck::Fail) {
                let at = At::new(seen.at.link, format!("pod/{}", stuck.pod));
                return Err(say.fail(&at, stuck.cause, Some(stuck.help.to_string())));
            }
        }
        if only_the_operator_moves(&phase)
            && asked_kuberay.is_none_or(|t| t.elapsed() >= EVERY_LOOK)
        {
            asked_kuberay = Some(Instant::now());
            if on_stuck == OnStuck::Fail
                && let Some(refusal) =
                    below::refused(cluster, namespace, &spec.rayservice, since).await
            {
                return Err(say.fail(
                    &seen.at,
                    format!("KubeRay refused the spec: {refusal}"),
                    Some(format!(
                        "fix the RayService manifest; `kubectl describe rayservice {}` shows KubeRay's events",
                        spec.rayservice
                    )),
                ));
            }
        }
        if !operator_asked && say.elapsed() >= OPERATOR_GRACE && only_the_operator_moves(&phase) {
            // Once: nothing else moves a RayService that KubeRay has not
            // picked up, so a missing operator would otherwise cost the
            // whole timeout.
            operator_asked = true;
            if let Some(missing) = crate::cluster::kuberay::operator_missing(cluster).await {
                return Err(say.fail(
                    &seen.at,
                    format!("waiting for {phase}, but {missing}"),
                    None,
                ));
            }
        }
        say.phase(&seen.at, &phase, below.pulls());
        if detail == Detail::Complete {
            let key = account::render(&spec.rayservice, &seen, &below, None);
            say.account(&seen.at, key, || {
                account::render(
                    &spec.rayservice,
                    &seen,
                    &below,
                    Some(jiff::Timestamp::now()),
                )
            });
        }
        let elapsed = say.elapsed();
        if elapsed >= spec.timeout {
            return Err(ReadinessError::Timeout {
                rayservice: spec.rayservice.clone(),
                path: spec.path.clone(),
                timeout: spec.timeout,
                held_up_by: say.reported().to_string(),
                last: seen.describe(),
            });
        }
        // Fast while a deploy is fresh; after that, gentler on the API server
        // (a first deploy with image pulls and model downloads takes minutes).
        let pause = if elapsed < PATIENT_AFTER {
            spec.interval
        } else {
            spec.interval.max(PATIENT_INTERVAL)
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            changed = watch.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// The RayService kind as the cluster serves it, or why there is none.
fn rayservice_kind(cluster: &Cluster) -> Result<crate::cluster::Kind, ReadinessError> {
    cluster.kind("ray.io/v1", "RayService").ok_or_else(|| {
        ReadinessError::Failed(crate::cluster::missing_kind_message(
            "ray.io/v1",
            "RayService",
        ))
    })
}

/// How long a RayService may sit untouched by KubeRay before rayform asks
/// whether an operator runs at all (a healthy one acts within a second).
const OPERATOR_GRACE: Duration = Duration::from_secs(5);

/// Phases that only the KubeRay operator can end.
fn only_the_operator_moves(phase: &str) -> bool {
    phase.starts_with("KubeRay to name a RayCluster")
        || phase.starts_with("KubeRay to observe the current generation")
}

/// One look at everything. `Ok` when all of it holds, else the phase waited on.
async fn check(
    cluster: &Cluster,
    connections: &mut http::Connections,
    namespace: &str,
    target: &Target,
    seen: &mut Seen,
) -> Result<(String, String, Endpoint), NotYet> {
    let spec = &target.wait;
    let rayservice = format!("rayservice/{}", spec.rayservice);
    seen.at = At::new(Link::Rayservice, &rayservice);
    let Some(service) = seen.service.clone() else {
        return Err(format!("rayservice.{} to exist", spec.rayservice).into());
    };
    seen.at = At::new(Link::Kuberay, &rayservice);
    if let Some(failure) = &service.failure {
        return Err(NotYet::Failed(failure.clone()));
    }
    // 1. The head pod of the cluster KubeRay is bringing up or serving from.
    let Some(raycluster) = service.cluster() else {
        return Err("KubeRay to name a RayCluster".to_string().into());
    };
    seen.at = At::new(Link::HeadPod, format!("raycluster/{raycluster}"));
    let mut head = head_pod(cluster, namespace, raycluster).await?;
    head.token = connections
        .tokens
        .token(cluster, namespace, &head.name, &head.auth)
        .await?;
    let endpoint = match &spec.url {
        Some(url) => Endpoint::Url(url.clone()),
        None => Endpoint::Pod {
            namespace: namespace.to_string(),
            pod: head.name.clone(),
            serve_port: target.serve_port,
            dashboard_port: head.dashboard_port,
        },
    };
    seen.endpoint = Some(match &endpoint {
        Endpoint::Url(u) => u.clone(),
        Endpoint::Pod {
            pod, serve_port, ..
        } => format!("pod/{pod}:{serve_port} (port-forward)"),
    });
    // 2. Serve on that head runs the stack's config, not the previous one.
    if !target.apps.is_empty() {
        seen.at = At::new(Link::ServeConfig, format!("pod/{}", head.name));
        serve_runs_the_config(cluster, connections, namespace, &head, target, seen).await?;
    }
    // 3. The route table.
    let served_at = match &endpoint {
        Endpoint::Url(u) => u.clone(),
        Endpoint::Pod { pod, .. } => format!("pod/{pod}"),
    };
    seen.at = At::new(Link::Routes, &served_at);
    let (route, app) = route_for(cluster, connections, &endpoint, &spec.path, seen).await?;
    // 4. A real request.
    if let Some(probe) = &target.probe {
        seen.at = At::new(Link::Probe, &served_at);
        probe_answers(cluster, connections, &endpoint, probe, &route, seen).await?;
    }
    // 5. All of it for the current generation, on the cluster that serves.
    seen.at = At::new(Link::Kuberay, &rayservice);
    if let Some(w) = service.waiting_for() {
        return Err(w.into());
    }
    Ok((route, app, endpoint))
}

struct HeadPod {
    name: String,
    raycluster: String,
    dashboard_port: u16,
    /// Where its Ray gets the dashboard's token, if it runs with one.
    auth: auth::Source,
    token: auth::Token,
}

/// Found by KubeRay's labels from the cluster the status names, never by name pattern.
async fn head_pod(cluster: &Cluster, namespace: &str, raycluster: &str) -> Result<HeadPod, NotYet> {
    let selector = format!("ray.io/cluster={raycluster},ray.io/node-type=head");
    let pods = cluster
        .pods(namespace, &selector)
        .await
        .map_err(|e| format!("the head pod ({e})"))?;
    let running = pods.iter().find(|p| {
        p.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
            && p.pointer("/status/podIP").is_some()
            && p.pointer("/metadata/deletionTimestamp").is_none()
    });
    let Some(pod) = running else {
        return Err(format!("a running head pod of RayCluster {raycluster}").into());
    };
    let ports = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["ports"].as_array())
        .flatten();
    let dashboard_port = ports
        .filter(|p| p["name"] == "dashboard")
        .find_map(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(DEFAULT_DASHBOARD_PORT);
    Ok(HeadPod {
        raycluster: raycluster.to_string(),
        name: pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        dashboard_port,
        auth: auth::source(pod),
        token: auth::Token::default(),
    })
}

async fn serve_runs_the_config(
    cluster: &Cluster,
    connections: &mut http::Connections,
    namespace: &str,
    head: &HeadPod,
    target: &Target,
    seen: &mut Seen,
) -> Result<(), NotYet> {
    let dashboard = Endpoint::Pod {
        namespace: namespace.to_string(),
        pod: head.name.clone(),
        serve_port: target.serve_port,
        dashboard_port: head.dashboard_port,
    };
    let answer = connections
        .send(
            cluster,
            &dashboard,
            http::Port::Dashboard,
            http::Ask::get("/api/serve/applications/", LOOK_TIMEOUT).with_token(head.token.value()),
        )
        .await;
    let body = match answer {
        Err(e) => {
            seen.serve_apps = Some(e.clone());
            return Err(format!("the Ray dashboard on {} to answer ({e})", head.name).into());
        }
        // Final only on the head KubeRay chose for the current spec: a
        // spec change may be about to replace it (and its token setup).
        Ok(a) if a.status == 401 || a.status == 403 => {
            let said = format!("{} {}", a.status, head.token.redact(a.body.trim()));
            seen.serve_apps = Some(said.clone());
            return Err(match &seen.service {
                Some(s) if s.current => {
                    NotYet::Failed(head.token.refused(a.status, &a.body, &head.name))
                }
                _ => NotYet::Waiting(format!("the Ray dashboard on {} ({said})", head.name)),
            });
        }
        Ok(a) if a.status != 200 => {
            let said = format!("{} {}", a.status, head.token.redact(a.body.trim()));
            seen.serve_apps = Some(said.clone());
            return Err(format!("the Ray dashboard on {} ({said})", head.name).into());
        }
        Ok(a) => head.token.redact(&a.body),
    };
    let Ok(answer) = serde_json::from_str::<Value>(&body) else {
        return Err(format!("the Ray dashboard to answer JSON (it said {})", body.trim()).into());
    };
    seen.serve = Some(answer.clone());
    let settled = seen.service.as_ref().is_some_and(status::Service::settled);
    if let Some(kept) = deployed::port_kept(&answer, target.serve_port, settled, &head.name) {
        return Err(NotYet::Failed(kept));
    }
    match deployed::compare(&target.apps, &answer) {
        Deployed::Running => {
            seen.serve_apps = Some("the stack's config is RUNNING".into());
            Ok(())
        }
        Deployed::Waiting(phase) => {
            seen.serve_apps = Some(phase.clone());
            // Serve without any application: KubeRay may be unable to send one.
            if answer["applications"]
                .as_object()
                .is_none_or(serde_json::Map::is_empty)
            {
                connections
                    .tokens
                    .kuberay_sends_a_token(
                        cluster,
                        namespace,
                        &head.raycluster,
                        &head.name,
                        &head.auth,
                    )
                    .await?;
            }
            Err(phase.into())
        }
        Deployed::Failed(message) => Err(NotYet::Failed(message)),
    }
}

async fn route_for(
    cluster: &Cluster,
    connections: &mut http::Connections,
    endpoint: &Endpoint,
    path: &str,
    seen: &mut Seen,
) -> Result<(String, String), NotYet> {
    let answer = connections
        .send(
            cluster,
            endpoint,
            http::Port::Serve,
            http::Ask::get("/-/routes", LOOK_TIMEOUT),
        )
        .await;
    let routes: std::collections::BTreeMap<String, String> = match answer {
        Err(e) => {
            seen.routes = Some(e.clone());
            return Err(format!("Serve's HTTP proxy to listen ({e})").into());
        }
        Ok(a) if a.status != 200 => {
            seen.routes = Some(format!("{} {}", a.status, a.body.trim()));
            return Err(format!("the route table ({} {})", a.status, a.body.trim()).into());
        }
        Ok(a) => {
            seen.routes = Some(format!("200 {}", a.body.trim()));
            serde_json::from_str(&a.body)
                .map_err(|_| format!("a route table (answer was not JSON: {})", a.body.trim()))?
        }
    };
    routes::serving_route(&routes, path).ok_or_else(|| {
        format!(
            "a route prefix serving {path} (routes: {})",
            seen.routes.as_deref().unwrap_or("{}")
        )
        .into()
    })
}

async fn probe_answers(
    cluster: &Cluster,
    connections: &mut http::Connections,
    endpoint: &Endpoint,
    probe: &ProbeRequest,
    route: &str,
    seen: &mut Seen,
) -> Result<(), NotYet> {
    let p = &probe.request;
    let what = format!("{} {}", p.method, p.path);
    let answer = connections
        .send(
            cluster,
            endpoint,
            http::Port::Serve,
            http::Ask {
                method: &p.method,
                path: &p.path,
                body: p.body.as_deref(),
                timeout: p.timeout,
                token: None,
            },
        )
        .await;
    let a = match answer {
        Err(e) => {
            seen.probe = Some(format!("{what}: {e}"));
            return Err(format!(
                "the probe {what} to answer (route {route} is listed; the replica is likely still starting: {e})"
            )
            .into());
        }
        Ok(a) => a,
    };
    let body: String = a.body.trim().chars().take(300).collect();
    seen.probe = Some(format!("{what}: {} {body}", a.status));
    if !(200..300).contains(&a.status) {
        return Err(format!("the probe {what} to succeed (answered {} {body})", a.status).into());
    }
    if let Some(model) = &probe.model {
        let answered = serde_json::from_str::<Value>(&a.body)
            .ok()
            .and_then(|v| v["model"].as_str().map(str::to_string));
        if answered.as_deref() != Some(model.as_str()) {
            return Err(format!(
                "model {model} to answer the probe {what} (answered by {})",
                answered
                    .as_deref()
                    .unwrap_or("no model named in the answer")
            )
            .into());
        }
    }
    Ok(())
}
