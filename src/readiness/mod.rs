//! Readiness: the terminal node. "Applied" is not "serving": a RayService is
//! ready when KubeRay says so for its current generation, Ray Serve lists a
//! route prefix that serves the path, and a real request answers.
//!
//! Why all three: Serve lists the route (and `/-/healthz` says `success`)
//! while the replica is still in its constructor; requests sent then hang
//! until it is up (with vLLM loading a 7B model, minutes). So the route is
//! necessary, not sufficient, and every request here has its own deadline.

mod http;
pub mod routes;
pub mod status;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, PodStream};
use crate::stack::WaitSpec;
use crate::util::format_duration;

/// Serve's HTTP proxy port on the head pod.
const SERVE_PORT: u16 = 8000;
const DASHBOARD_PORT: u16 = 8265;
/// After this long, look at Serve at most every `PATIENT_INTERVAL`.
const PATIENT_AFTER: Duration = Duration::from_secs(60);
const PATIENT_INTERVAL: Duration = Duration::from_secs(2);
/// Deadline of one `/-/routes` request.
const ROUTES_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("{0}")]
    Failed(String),
    #[error("rayservice.{rayservice} did not serve {path} within {}; last seen:\n{last}", format_duration(*timeout))]
    Timeout {
        rayservice: String,
        path: String,
        timeout: Duration,
        last: String,
    },
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
    Pod { namespace: String, pod: String },
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
            Endpoint::Pod { namespace, pod } => write!(
                f,
                "Reach it:      kubectl -n {namespace} port-forward pod/{pod} {SERVE_PORT}:{SERVE_PORT}   then http://localhost:{SERVE_PORT}{}\n\
                 Ray dashboard: kubectl -n {namespace} port-forward pod/{pod} {DASHBOARD_PORT}:{DASHBOARD_PORT}   then http://localhost:{DASHBOARD_PORT}",
                self.path
            ),
        }
    }
}

/// What the last look showed, for progress lines and the timeout message.
#[derive(Debug, Default)]
struct Seen {
    service: Option<status::Service>,
    endpoint: Option<String>,
    routes: Option<String>,
    probe: Option<String>,
}

impl Seen {
    fn describe(&self) -> String {
        let mut lines = Vec::new();
        match &self.service {
            None => lines.push("  RayService: not found".to_string()),
            Some(s) => {
                lines.push(format!(
                    "  RayService: {} (RayCluster {})",
                    if s.ready { "ready" } else { "not ready" },
                    s.cluster.as_deref().unwrap_or("not named yet")
                ));
                for c in &s.conditions {
                    lines.push(format!("    condition {c}"));
                }
                for (name, st, msg) in &s.apps {
                    lines.push(format!(
                        "    application {name}: {st}{}",
                        if msg.is_empty() {
                            String::new()
                        } else {
                            format!(": {msg}")
                        }
                    ));
                }
            }
        }
        lines.push(format!(
            "  endpoint: {}",
            self.endpoint.as_deref().unwrap_or("none yet")
        ));
        lines.push(format!(
            "  /-/routes: {}",
            self.routes.as_deref().unwrap_or("not asked yet")
        ));
        lines.push(format!(
            "  probe: {}",
            self.probe.as_deref().unwrap_or("not sent yet")
        ));
        lines.join("\n")
    }
}

/// Waits until the RayService serves `spec.path`, reporting each phase.
pub async fn wait(
    cluster: &Cluster,
    namespace: &str,
    spec: &WaitSpec,
    progress: Arc<dyn Fn(String) + Send + Sync>,
) -> Result<Ready, ReadinessError> {
    let kind = cluster.kind("ray.io/v1", "RayService").ok_or_else(|| {
        ReadinessError::Failed(crate::observe::missing_kind_message(
            "ray.io/v1",
            "RayService",
        ))
    })?;
    let mut watch = cluster.watch(&kind, Some(namespace), &spec.rayservice);
    let started = Instant::now();
    let mut seen = Seen::default();
    let mut reported = String::new();
    let mut next_still = Duration::from_secs(10);
    loop {
        // Mark this version seen, so that only a newer one wakes the wait early.
        let object = watch.borrow_and_update().clone();
        seen.service = object.as_ref().map(status::read);
        if let Some(failure) = seen.service.as_ref().and_then(|s| s.failure.clone()) {
            return Err(ReadinessError::Failed(format!(
                "rayservice.{}: {failure}",
                spec.rayservice
            )));
        }
        let waiting = check(cluster, namespace, spec, &mut seen).await;
        match waiting {
            Ok((route, app, endpoint)) => {
                return Ok(Ready {
                    rayservice: spec.rayservice.clone(),
                    path: spec.path.clone(),
                    route,
                    app,
                    elapsed: started.elapsed(),
                    endpoint,
                });
            }
            Err(phase) => {
                let elapsed = started.elapsed();
                if phase != reported {
                    progress(format!(
                        "Waiting for {phase} [{} elapsed]",
                        format_duration_tenths(elapsed)
                    ));
                    reported = phase;
                } else if elapsed >= next_still {
                    progress(format!(
                        "Still waiting for {reported} [{} elapsed]",
                        format_duration_tenths(elapsed)
                    ));
                    next_still += Duration::from_secs(10);
                }
                if elapsed >= spec.timeout {
                    return Err(ReadinessError::Timeout {
                        rayservice: spec.rayservice.clone(),
                        path: spec.path.clone(),
                        timeout: spec.timeout,
                        last: seen.describe(),
                    });
                }
            }
        }
        // Fast while a deploy is fresh; after that, gentler on the API server
        // (a first deploy with image pulls and model downloads takes minutes).
        let pause = if started.elapsed() < PATIENT_AFTER {
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

fn format_duration_tenths(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// One look at everything. `Ok` when all three conditions hold, else the phase waited on.
async fn check(
    cluster: &Cluster,
    namespace: &str,
    spec: &WaitSpec,
    seen: &mut Seen,
) -> Result<(String, String, Endpoint), String> {
    let Some(service) = seen.service.clone() else {
        return Err(format!("rayservice.{} to exist", spec.rayservice));
    };
    // 1. Where to talk to Serve.
    let endpoint = match &spec.url {
        Some(url) => Endpoint::Url(url.clone()),
        None => {
            let Some(raycluster) = &service.cluster else {
                return Err("KubeRay to name a RayCluster".into());
            };
            let selector = format!("ray.io/cluster={raycluster},ray.io/node-type=head");
            let pods = cluster
                .pods(namespace, &selector)
                .await
                .map_err(|e| format!("the head pod ({e})"))?;
            let running = pods.iter().find(|p| {
                p.pointer("/status/phase").and_then(|v| v.as_str()) == Some("Running")
                    && p.pointer("/metadata/deletionTimestamp").is_none()
            });
            let Some(pod) = running
                .and_then(|p| p.pointer("/metadata/name"))
                .and_then(|n| n.as_str())
            else {
                return Err(format!("a running head pod of RayCluster {raycluster}"));
            };
            Endpoint::Pod {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
            }
        }
    };
    seen.endpoint = Some(match &endpoint {
        Endpoint::Url(u) => u.clone(),
        Endpoint::Pod { pod, .. } => format!("pod/{pod}:{SERVE_PORT} (port-forward)"),
    });
    // 2. The route table.
    let answer = send(cluster, &endpoint, "GET", "/-/routes", None, ROUTES_TIMEOUT).await;
    let routes: BTreeMap<String, String> = match answer {
        Err(e) => {
            seen.routes = Some(e.clone());
            return Err(format!("Serve's HTTP proxy to listen ({e})"));
        }
        Ok(a) if a.status != 200 => {
            seen.routes = Some(format!("{} {}", a.status, a.body.trim()));
            return Err(format!("the route table ({} {})", a.status, a.body.trim()));
        }
        Ok(a) => {
            seen.routes = Some(format!("200 {}", a.body.trim()));
            serde_json::from_str(&a.body)
                .map_err(|_| format!("a route table (answer was not JSON: {})", a.body.trim()))?
        }
    };
    let Some((route, app)) = routes::serving_route(&routes, &spec.path) else {
        return Err(format!(
            "a route prefix serving {} (routes: {})",
            spec.path,
            seen.routes.as_deref().unwrap_or("{}")
        ));
    };
    // 3. A real request.
    if let Some(probe) = &spec.probe {
        let what = format!("{} {}", probe.method, probe.path);
        match send(
            cluster,
            &endpoint,
            &probe.method,
            &probe.path,
            probe.body.as_deref(),
            probe.timeout,
        )
        .await
        {
            Ok(a) if (200..300).contains(&a.status) => {
                seen.probe = Some(format!("{what}: {}", a.status))
            }
            Ok(a) => {
                let body: String = a.body.trim().chars().take(300).collect();
                seen.probe = Some(format!("{what}: {} {body}", a.status));
                return Err(format!(
                    "the probe {what} to succeed (answered {} {body})",
                    a.status
                ));
            }
            Err(e) => {
                seen.probe = Some(format!("{what}: {e}"));
                return Err(format!(
                    "the probe {what} to answer (route {route} is listed; the replica is likely still starting: {e})"
                ));
            }
        }
    }
    // All of it must hold for the current generation.
    if let Some(w) = service.waiting_for() {
        return Err(w);
    }
    Ok((route, app, endpoint))
}

async fn send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<http::Answer, String> {
    let (stream, host): (Box<dyn PodStream>, String) = match endpoint {
        Endpoint::Url(url) => {
            let authority = url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let address = if authority.contains(':') {
                authority.clone()
            } else {
                format!("{authority}:80")
            };
            let connect =
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address)).await;
            match connect {
                Ok(Ok(s)) => (Box::new(s), authority),
                Ok(Err(e)) => return Err(format!("cannot connect to {address}: {e}")),
                Err(_) => {
                    return Err(format!(
                        "cannot connect to {address} within {}",
                        format_duration(timeout)
                    ));
                }
            }
        }
        Endpoint::Pod { namespace, pod } => {
            let stream =
                tokio::time::timeout(timeout, cluster.port_forward(namespace, pod, SERVE_PORT))
                    .await
                    .map_err(|_| {
                        format!(
                            "port-forward to {pod} did not open within {}",
                            format_duration(timeout)
                        )
                    })?
                    .map_err(|e| e.to_string())?;
            (stream, "localhost".to_string())
        }
    };
    http::request(stream, &host, method, path, body, timeout).await
}
