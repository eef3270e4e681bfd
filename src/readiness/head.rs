//! Asking the head what a look needs: its pod (from the RayCluster's
//! labels, never a name pattern), the config Serve runs (the dashboard),
//! the route table and a real request (Serve's proxy), in the order that
//! ends a look soonest without ever counting a probe the config and the
//! route did not hold for.

use super::*;
use deployed::Deployed;

pub(super) struct HeadPod {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) raycluster: String,
    pub(super) dashboard_port: u16,
    /// Where its Ray gets the dashboard's token, if it runs with one.
    pub(super) auth: auth::Source,
    pub(super) token: auth::Token,
}

impl HeadPod {
    /// The head through port-forwards: the dashboard's port, and Serve's.
    pub(super) fn endpoint(&self, serve_port: u16) -> Endpoint {
        Endpoint::Pod {
            namespace: self.namespace.clone(),
            pod: self.name.clone(),
            serve_port,
            dashboard_port: self.dashboard_port,
        }
    }
}

/// Found by KubeRay's labels from the cluster the status names, never by name pattern.
pub(super) async fn head_pod(
    cluster: &Cluster,
    namespace: &str,
    raycluster: &str,
) -> Result<HeadPod, NotYet> {
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
        namespace: namespace.to_string(),
        name: pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        dashboard_port,
        auth: auth::source(pod),
        token: auth::Token::default(),
    })
}

const CONFIG_PATH: &str = "/api/serve/applications/";
const ROUTES_PATH: &str = "/-/routes";

/// Where a look's requests go: the head, and Serve (on the head or behind a URL).
pub(super) struct Asks<'a> {
    pub(super) head: &'a HeadPod,
    pub(super) endpoint: &'a Endpoint,
    pub(super) target: &'a Target,
}

impl Asks<'_> {
    fn on_head(&self) -> Endpoint {
        self.head.endpoint(self.target.serve_port)
    }

    /// Both connections of the previous look still open, to this head.
    pub(super) fn connections_open(&self, connections: &http::Connections) -> bool {
        connections.dashboard.is_open_to(&self.on_head())
            && connections.serve.is_open_to(self.endpoint)
    }
}

/// The usual order: the config, then the routes, and the probe only once
/// both hold, so that a replica still in its constructor is not sent a
/// request that would wait for it (minutes with vLLM). The dashboard and
/// Serve's proxy are different ports, so different connections: when the
/// dashboard's is open from an earlier look the config and the routes are
/// asked at once (a look costs one round trip less). While it is not, the
/// dashboard is asked alone first: a head still starting refuses both, and
/// one refused port-forward a look is enough.
pub(super) async fn config_first(
    cluster: &Cluster,
    connections: &mut http::Connections,
    asks: &Asks<'_>,
    seen: &mut Seen,
) -> Result<(String, String), NotYet> {
    let Asks {
        head,
        endpoint,
        target,
    } = asks;
    let http::Connections {
        dashboard,
        serve,
        tokens,
    } = connections;
    let config = http::Ask::get(CONFIG_PATH, LOOK_TIMEOUT).with_token(head.token.value());
    let routes = http::Ask::get(ROUTES_PATH, LOOK_TIMEOUT);
    let on_head = asks.on_head();
    let routes = if target.apps.is_empty() {
        serve.send(cluster, endpoint, routes).await
    } else if dashboard.is_open_to(&on_head) {
        let (config, routes) = tokio::join!(
            dashboard.send(cluster, &on_head, config),
            serve.send(cluster, endpoint, routes)
        );
        serve_runs_the_config((cluster, tokens), config, head, target, seen).await?;
        routes
    } else {
        let config = dashboard.send(cluster, &on_head, config).await;
        serve_runs_the_config((cluster, tokens), config, head, target, seen).await?;
        serve.send(cluster, endpoint, routes).await
    };
    seen.at = At::new(Link::Routes, served_at(endpoint));
    let (route, app) = route_for(routes, &target.wait.path, seen)?;
    if let Some(probe) = &target.probe {
        let answer = send_probe(cluster, serve, endpoint, probe, probe.request.timeout).await;
        if answer.is_err() {
            seen.replicas_running = false;
        }
        seen.at = At::new(Link::Probe, served_at(endpoint));
        probe_answers(answer, probe, &route, seen)?;
    }
    Ok((route, app))
}

/// The order once the previous look saw a replica of the stack's config
/// running (during a rolling update, before the application is `RUNNING`):
/// the routes, the probe, and the config last. The verdict is the same,
/// judged in the same order: the probe counts only if the config and the
/// route hold in this look. What changes is when the config is read: the
/// config is what turns last, and read last, the look ends one round trip
/// after it turned, not three (the probe, answered by the replica through
/// Serve's proxy, is the slowest). A replica that stopped in between could
/// hold the probe, so its deadline here is a look's, and a probe that did
/// not answer sends the next look back to the usual order.
pub(super) async fn probe_first(
    cluster: &Cluster,
    connections: &mut http::Connections,
    asks: &Asks<'_>,
    probe: &ProbeRequest,
    seen: &mut Seen,
) -> Result<(String, String), NotYet> {
    let Asks {
        head,
        endpoint,
        target,
    } = asks;
    tracing::trace!("the probe before the config: a replica of it was running");
    let http::Connections {
        dashboard,
        serve,
        tokens,
    } = connections;
    let routes = serve
        .send(cluster, endpoint, http::Ask::get(ROUTES_PATH, LOOK_TIMEOUT))
        .await;
    let deadline = probe.request.timeout.min(LOOK_TIMEOUT);
    let answer = send_probe(cluster, serve, endpoint, probe, deadline).await;
    let config = dashboard
        .send(
            cluster,
            &asks.on_head(),
            http::Ask::get(CONFIG_PATH, LOOK_TIMEOUT).with_token(head.token.value()),
        )
        .await;
    let config = serve_runs_the_config((cluster, tokens), config, head, target, seen).await;
    if answer.is_err() {
        seen.replicas_running = false;
    }
    config?;
    seen.at = At::new(Link::Routes, served_at(endpoint));
    let (route, app) = route_for(routes, &target.wait.path, seen)?;
    seen.at = At::new(Link::Probe, served_at(endpoint));
    probe_answers(answer, probe, &route, seen)?;
    Ok((route, app))
}

/// Whether the dashboard's answer says Serve runs the stack's config.
async fn serve_runs_the_config(
    (cluster, tokens): (&Cluster, &mut auth::Tokens),
    answer: Result<http::Answer, String>,
    head: &HeadPod,
    target: &Target,
    seen: &mut Seen,
) -> Result<(), NotYet> {
    seen.at = At::new(Link::ServeConfig, format!("pod/{}", head.name));
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
    seen.replicas_running = deployed::replicas_running(&target.apps, &answer);
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
                tokens
                    .kuberay_sends_a_token(
                        cluster,
                        &head.namespace,
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

/// Where Serve was asked, for the link a look stopped at.
fn served_at(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Url(u) => u.clone(),
        Endpoint::Pod { pod, .. } => format!("pod/{pod}"),
    }
}

/// The route prefix (and its application) that serves `path`, from Serve's answer.
fn route_for(
    answer: Result<http::Answer, String>,
    path: &str,
    seen: &mut Seen,
) -> Result<(String, String), NotYet> {
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

async fn send_probe(
    cluster: &Cluster,
    serve: &mut http::Slot,
    endpoint: &Endpoint,
    probe: &ProbeRequest,
    timeout: Duration,
) -> Result<http::Answer, String> {
    let p = &probe.request;
    let ask = http::Ask {
        method: &p.method,
        path: &p.path,
        body: p.body.as_deref(),
        timeout,
        token: None,
    };
    serve.send(cluster, endpoint, ask).await
}

/// Whether the probe's answer is a success, from the model the stack names.
fn probe_answers(
    answer: Result<http::Answer, String>,
    probe: &ProbeRequest,
    route: &str,
    seen: &mut Seen,
) -> Result<(), NotYet> {
    let p = &probe.request;
    let what = format!("{} {}", p.method, p.path);
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
