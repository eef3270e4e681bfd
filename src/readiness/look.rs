//! One look at a RayService, without waiting: what `rayform status` shows.
//! The same checks as the wait (KubeRay's status, Serve's config, the route,
//! a real request) and the same account of the pods below, taken once, so
//! "is it serving, and if not, why" has one answer however it is asked.

use serde::Serialize;
use serde_json::Value;

use super::{Connections, NotYet, ReadinessError, Seen, Target, below, check, status};
use crate::cluster::Cluster;

/// What one look saw of one wait's RayService.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Look {
    pub rayservice: String,
    pub namespace: String,
    pub path: String,
    /// The model answers must come from, when the stack names one.
    pub model: Option<String>,
    #[serde(flatten)]
    pub serving: Serving,
    /// One line a pod of the RayService's clusters (a pull under way says
    /// how long it has taken so far).
    pub pods: Vec<String>,
    /// The same lines without clocks: what tells a change (`status --watch`).
    #[serde(skip)]
    pub pods_unclocked: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "serving", rename_all = "lowercase")]
pub enum Serving {
    Yes {
        route: String,
        app: String,
        /// When KubeRay last turned the RayService Ready.
        since: Option<String>,
    },
    No {
        waiting_for: String,
        /// A cause that will not go away by itself.
        stuck: Option<String>,
    },
    /// No such RayService: not applied, or destroyed.
    Absent,
}

/// Looks once at the RayService of `target` in `namespace`, through
/// `connections` (kept by a caller that looks again, as `status --watch`
/// does: each port-forward is then opened once, not once a look).
pub async fn look(
    cluster: &Cluster,
    namespace: &str,
    target: &Target,
    connections: &mut Connections,
) -> Result<Look, ReadinessError> {
    let spec = &target.wait;
    let kind = super::rayservice_kind(cluster)?;
    let object = cluster
        .get(&kind, Some(namespace), &spec.rayservice)
        .await
        .map_err(|e| ReadinessError::Failed(e.to_string()))?;
    let mut look = Look {
        rayservice: spec.rayservice.clone(),
        namespace: namespace.to_string(),
        path: spec.path.clone(),
        model: target.probe.as_ref().and_then(|p| p.model.clone()),
        serving: Serving::Absent,
        pods: Vec::new(),
        pods_unclocked: Vec::new(),
    };
    let Some(object) = object else {
        return Ok(look);
    };
    let mut seen = Seen {
        service: Some(status::read(&object)),
        ..Seen::default()
    };
    let checked = check(cluster, connections, namespace, target, &mut seen).await;
    let mut below = below::Below::default();
    if let Some(service) = &seen.service {
        below
            .look(cluster, namespace, service, &spec.rayservice)
            .await;
    }
    look.pods = below.lines();
    look.pods_unclocked = below.lines_unclocked();
    look.serving = match checked {
        Ok((route, app, _)) => Serving::Yes {
            route,
            app,
            since: ready_since(&object),
        },
        Err(NotYet::Waiting(phase)) => Serving::No {
            waiting_for: phase,
            stuck: seen
                .service
                .as_ref()
                .and_then(|service| below.stuck(service))
                .map(|s| format!("{}\n  help: {}", s.cause, s.help)),
        },
        Err(NotYet::Failed(message)) => Serving::No {
            waiting_for: "a fix".into(),
            stuck: Some(message),
        },
    };
    Ok(look)
}

impl Look {
    /// What changed when this changed, for `status --watch`: all of it but
    /// the time a pull has taken, which changes at every look.
    pub fn change_key(&self) -> String {
        let mut settled = self.clone();
        settled.pods = std::mem::take(&mut settled.pods_unclocked);
        settled.to_string()
    }
}

fn ready_since(rayservice: &Value) -> Option<String> {
    rayservice
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .and_then(|c| c["lastTransitionTime"].as_str())
        .map(str::to_string)
}

impl std::fmt::Display for Look {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = format!("rayservice.{} ({})", self.rayservice, self.namespace);
        match &self.serving {
            Serving::Yes { route, app, since } => {
                write!(
                    f,
                    "{name}: serving {} (route prefix {route} → application `{app}`",
                    self.path
                )?;
                if let Some(model) = &self.model {
                    write!(f, ", model {model}")?;
                }
                if let Some(since) = since {
                    write!(f, ", ready since {since}")?;
                }
                f.write_str(")")?;
            }
            Serving::No { waiting_for, stuck } => {
                write!(
                    f,
                    "{name}: not serving {}; waiting for {waiting_for}",
                    self.path
                )?;
                if let Some(stuck) = stuck {
                    write!(f, "\n  stuck: {stuck}")?;
                }
            }
            Serving::Absent => write!(f, "{name}: not found (not applied, or destroyed)")?,
        }
        for pod in &self.pods {
            write!(f, "\n  {pod}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulling(for_: &str) -> Look {
        let line = "pod p (head) on n: pulling image i";
        Look {
            rayservice: "llm".into(),
            namespace: "ml".into(),
            path: "/v1/chat/completions".into(),
            model: None,
            serving: Serving::No {
                waiting_for: "a running head pod of RayCluster llm-x".into(),
                stuck: None,
            },
            pods: vec![format!("{line} for {for_}")],
            pods_unclocked: vec![line.into()],
        }
    }

    #[test]
    fn a_pull_s_clock_is_said_but_is_not_a_change_for_status_watch() {
        let (before, after) = (pulling("12s"), pulling("14s"));
        assert!(
            before.to_string().ends_with("pulling image i for 12s"),
            "{before}"
        );
        assert_eq!(before.change_key(), after.change_key());
        let mut running = pulling("14s");
        running.pods_unclocked = vec!["pod p (head) on n: running".into()];
        assert_ne!(before.change_key(), running.change_key());
    }
}
