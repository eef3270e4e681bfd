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
//!
//! All of it holds in one look, or the look does not count. The requests
//! of a look that do not depend on each other may go at once (the deployed
//! config and the route table are on different ports); what they answer is
//! judged in the order above, and the probe is only sent once the config
//! and the route hold in that look, so a replica still starting is not sent
//! requests that would hang.

mod account;
mod auth;
mod below;
mod deployed;
mod events;
mod head;
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
pub use http::Connections;
pub use look::{Look, Serving, look};
pub use progress::{Detail, Link, Progress, Said, Sink};

use crate::cluster::{Cluster, Followed, WatchTrouble};
use crate::util::format_duration;
use head::{Asks, config_first, head_pod, probe_first};
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
    /// Serve runs a replica of the stack's config in every deployment, and
    /// the probe (if sent) answered: the next look may send its probe early.
    replicas_running: bool,
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
    let scope = Scope {
        cluster,
        namespace,
        spec,
        on_stuck,
    };
    let mut asked = Asked::default();
    let mut seen = Seen::default();
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
        let look_started = Instant::now();
        let checked = check(cluster, &mut connections, namespace, target, &mut seen).await;
        tracing::trace!(took = ?look_started.elapsed(), ok = checked.is_ok(), "readiness look");
        let phase = match checked {
            Ok((route, app, endpoint)) => {
                tracing::debug!(rayservice = %spec.rayservice, look = ?look_started.elapsed(), "serving");
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
        look_below(&scope, &mut below, &mut seen, &mut say).await?;
        ask_kuberay(&scope, &phase, since, &mut asked, &seen, &mut say).await?;
        let phase = asked.with_a_quiet_operator(phase);
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
        let next = next_look(look_started, elapsed, spec.interval);
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            changed = watch.changed() => {
                if changed.is_err() {
                    tokio::time::sleep_until(next.into()).await;
                }
            }
        }
    }
}

/// What one wait looks at, and how it treats a cause that will not go away.
struct Scope<'a> {
    cluster: &'a Cluster,
    namespace: &'a str,
    spec: &'a crate::stack::WaitSpec,
    on_stuck: OnStuck,
}

/// When the wait last asked KubeRay's own words, whether it asked for the
/// operator, and since when only the operator could have moved.
#[derive(Default)]
struct Asked {
    refusal_at: Option<Instant>,
    operator: bool,
    operator_alone_since: Option<Instant>,
}

impl Asked {
    /// The phase, with a word on the operator once only it could have
    /// moved the RayService for `OPERATOR_QUIET` and has not: from here, an
    /// operator that runs but is stuck, or backlogged behind other work,
    /// looks like one at work, and the wait would otherwise sit out its
    /// timeout saying only "still waiting".
    fn with_a_quiet_operator(&mut self, phase: String) -> String {
        if !only_the_operator_moves(&phase) {
            self.operator_alone_since = None;
            return phase;
        }
        let since = *self.operator_alone_since.get_or_insert_with(Instant::now);
        if since.elapsed() < OPERATOR_QUIET {
            return phase;
        }
        format!(
            "{phase} (the KubeRay operator runs, but has not acted on this RayService for over {}: it may be stuck, or busy with other work; its log says which)",
            format_duration(OPERATOR_QUIET)
        )
    }
}

/// What lies below the phase: a line for each pod when it changes, and a
/// cause that will not go away by itself (the wait stops on it, unless told
/// to keep waiting).
async fn look_below(
    scope: &Scope<'_>,
    below: &mut below::Below,
    seen: &mut Seen,
    say: &mut Reporter,
) -> Result<(), ReadinessError> {
    let Some(service) = seen.service.clone() else {
        return Ok(());
    };
    let rayservice = &scope.spec.rayservice;
    for pod in below
        .look(scope.cluster, scope.namespace, &service, rayservice)
        .await
    {
        say.pod(&seen.at, &pod);
    }
    seen.pods = below.lines();
    match below.stuck(&service) {
        Some(stuck) if scope.on_stuck == OnStuck::Fail => {
            let at = At::new(seen.at.link, format!("pod/{}", stuck.pod));
            Err(say.fail(&at, stuck.cause, Some(stuck.help.to_string())))
        }
        _ => Ok(()),
    }
}

/// KubeRay's own word while only it can move the RayService: a spec it
/// refused (its Events, once a second), or no operator at all (once, after
/// a grace period: a missing operator would otherwise cost the whole timeout).
async fn ask_kuberay(
    scope: &Scope<'_>,
    phase: &str,
    since: jiff::Timestamp,
    asked: &mut Asked,
    seen: &Seen,
    say: &mut Reporter,
) -> Result<(), ReadinessError> {
    if !only_the_operator_moves(phase) {
        return Ok(());
    }
    let (cluster, rayservice) = (scope.cluster, &scope.spec.rayservice);
    if asked.refusal_at.is_none_or(|t| t.elapsed() >= EVERY_LOOK) {
        asked.refusal_at = Some(Instant::now());
        if scope.on_stuck == OnStuck::Fail
            && let Some(refusal) = below::refused(cluster, scope.namespace, rayservice, since).await
        {
            return Err(say.fail(
                &seen.at,
                format!("KubeRay refused the spec: {refusal}"),
                Some(format!(
                    "fix the RayService manifest; `kubectl describe rayservice {rayservice}` shows KubeRay's events"
                )),
            ));
        }
    }
    if !asked.operator && say.elapsed() >= OPERATOR_GRACE {
        asked.operator = true;
        if let Some(missing) = crate::cluster::kuberay::operator_missing(cluster).await {
            let message = format!("waiting for {phase}, but {missing}");
            return Err(say.fail(&seen.at, message, None));
        }
    }
    Ok(())
}

/// When the next look starts: one period after the start of this one, not
/// after its end, as a ticker would (a look's own round trips do not
/// stretch the period; a look longer than it is followed at once). The
/// period is `interval` while a deploy is fresh; after that, gentler on the
/// API server (a first deploy with image pulls and model downloads takes
/// minutes).
fn next_look(look_started: Instant, elapsed: Duration, interval: Duration) -> Instant {
    let period = if elapsed < PATIENT_AFTER {
        interval
    } else {
        interval.max(PATIENT_INTERVAL)
    };
    look_started + period
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

/// How long only the operator may have been able to move the RayService
/// before the wait says it has not: a healthy one acts within seconds.
const OPERATOR_QUIET: Duration = Duration::from_secs(30);

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
    // What the previous look showed; this look says it anew.
    let early = std::mem::take(&mut seen.replicas_running);
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
        None => head.endpoint(target.serve_port),
    };
    seen.endpoint = Some(match &endpoint {
        Endpoint::Url(u) => u.clone(),
        Endpoint::Pod {
            pod, serve_port, ..
        } => format!("pod/{pod}:{serve_port} (port-forward)"),
    });
    // 2. Serve on that head runs the stack's config, not the previous one;
    // 3. a route prefix serves the path; 4. a real request answers.
    let asks = Asks {
        head: &head,
        endpoint: &endpoint,
        target,
    };
    let (route, app) = match &target.probe {
        Some(probe) if early && asks.connections_open(connections) => {
            probe_first(cluster, connections, &asks, probe, seen).await?
        }
        _ => config_first(cluster, connections, &asks, seen).await?,
    };
    // 5. All of it for the current generation, on the cluster that serves.
    seen.at = At::new(Link::Kuberay, &rayservice);
    if let Some(w) = service.waiting_for() {
        return Err(w.into());
    }
    Ok((route, app, endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_only_the_operator_can_end_says_so_once_it_has_lasted() {
        let mut asked = Asked::default();
        let phase = "KubeRay to observe the current generation".to_string();
        assert_eq!(asked.with_a_quiet_operator(phase.clone()), phase);
        asked.operator_alone_since = Instant::now().checked_sub(OPERATOR_QUIET);
        assert_eq!(
            asked.with_a_quiet_operator(phase.clone()),
            "KubeRay to observe the current generation (the KubeRay operator runs, but has not acted on this RayService for over 30s: it may be stuck, or busy with other work; its log says which)"
        );
        let ready = "the RayService to report Ready".to_string();
        assert_eq!(asked.with_a_quiet_operator(ready.clone()), ready);
        assert_eq!(asked.with_a_quiet_operator(phase.clone()), phase);
    }

    #[test]
    fn looks_start_an_interval_apart_whatever_a_look_took() {
        let start = Instant::now();
        let interval = Duration::from_millis(100);
        let next = next_look(start, Duration::from_secs(5), interval);
        assert_eq!(next - start, interval);
        // A look that took longer than the interval is followed at once.
        let late = start + Duration::from_millis(150);
        assert!(next_look(start, Duration::from_secs(5), interval) < late);
    }

    #[test]
    fn after_the_first_minute_looks_are_at_least_two_seconds_apart() {
        let start = Instant::now();
        let next = next_look(start, PATIENT_AFTER, Duration::from_millis(100));
        assert_eq!(next - start, PATIENT_INTERVAL);
        let next = next_look(start, PATIENT_AFTER, Duration::from_secs(5));
        assert_eq!(next - start, Duration::from_secs(5));
    }
}
