//! Below KubeRay: what each pod of the RayService's clusters is waiting on.
//!
//! On a real cluster most of the minutes before "serving" are spent here, in
//! places KubeRay's status does not mention: a pod no node can take, a GPU
//! node Karpenter is launching, an 11 GB image being pulled, a container
//! that crashes. A user would run `kubectl describe` on four kinds of object
//! to find out; the wait reads the same pods, Events and NodeClaims and says
//! it in one line a pod, and stops at once when the cause is one that will
//! not go away by itself.
//!
//! Everything here is a pure reading of objects fetched elsewhere, so each
//! case is tested without a cluster.

use std::fmt;

use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::events::{latest, latest_of, pull_failure, pull_started};
use crate::util::format_duration;

/// Restarts after which a container in back-off is a crash loop rather than
/// a hiccup: it crashed a third time (a Ray worker may fail once while its
/// head comes up). With the kubelet's 10 s, 20 s back-off that is about 30 s
/// after the first crash.
const CRASH_LOOP_RESTARTS: i32 = 2;

/// What one pod is doing, as far as the wait is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// No node can take it; `karpenter` holds Karpenter's own verdict when it gave one.
    Unschedulable {
        why: String,
        karpenter: Option<String>,
    },
    /// Karpenter launches a node for it.
    NodeLaunching(NodeClaim),
    Pulling {
        image: String,
        /// When the kubelet started this pull (its `Pulling` event), so a
        /// line can say how long it has taken so far.
        since: Option<Timestamp>,
    },
    /// The kubelet could not pull an image; `backing_off` once it waits to retry.
    PullFailing {
        image: String,
        message: String,
        backing_off: bool,
    },
    Starting {
        reason: String,
    },
    CrashLooping {
        container: String,
        restarts: i32,
        last: String,
    },
    Running {
        ready: bool,
        pulled: Option<String>,
    },
    Terminating,
    Ended {
        phase: String,
    },
}

/// A NodeClaim Karpenter nominated a pod to, and how far its node got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeClaim {
    /// `nodeclaim`, or `machine` for a Provisioner's (Karpenter v0.32 and older).
    pub kind: &'static str,
    pub name: String,
    /// `g5.xlarge, on-demand` once Karpenter chose; empty before.
    pub instance: String,
    /// The last of Launched, Registered, Initialized that holds.
    pub progress: Option<&'static str>,
}

/// One pod's line in the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAccount {
    pub pod: String,
    /// `head` or `worker group gpu`.
    pub role: String,
    /// The RayCluster it belongs to (`ray.io/cluster`).
    pub raycluster: Option<String>,
    pub node: Option<String>,
    pub stage: Stage,
}

/// A cause that will not go away by itself, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// The pod it is about.
    pub pod: String,
    pub cause: String,
    pub help: &'static str,
}

/// Reads one pod with the Events about it and the NodeClaims of the cluster.
pub fn account(pod: &Pod, events: &[&Event], nodeclaims: &[Value]) -> PodAccount {
    let meta = &pod.metadata;
    let labels = meta.labels.clone().unwrap_or_default();
    let role = match labels.get("ray.io/node-type").map(String::as_str) {
        Some("head") => "head".to_string(),
        _ => format!(
            "worker group {}",
            labels.get("ray.io/group").map_or("?", String::as_str)
        ),
    };
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let stage = if meta.deletion_timestamp.is_some() {
        Stage::Terminating
    } else if node.is_none() {
        unscheduled(pod, events, nodeclaims)
    } else {
        scheduled(pod, events)
    };
    PodAccount {
        pod: meta.name.clone().unwrap_or_default(),
        role,
        raycluster: labels.get("ray.io/cluster").cloned(),
        node,
        stage,
    }
}

fn unscheduled(pod: &Pod, events: &[&Event], nodeclaims: &[Value]) -> Stage {
    if let Some(claim) = nominated(events).and_then(|n| nodeclaim(n, nodeclaims)) {
        return Stage::NodeLaunching(claim);
    }
    let why = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            c.message
                .clone()
                .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
        });
    // Karpenter's word counts only while it is its last: a nomination after
    // a refusal means it found a way after all.
    let refused = latest_of(
        events,
        &["FailedScheduling", "Nominated"],
        Some("karpenter"),
    )
    .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
    .and_then(|e| e.message.clone());
    match why {
        Some(why) => Stage::Unschedulable {
            why,
            karpenter: refused,
        },
        None => Stage::Starting {
            reason: "the scheduler".into(),
        },
    }
}

/// The NodeClaim (or, up to Karpenter v0.32, the Machine) named by
/// Karpenter's latest `Nominated` event: its kind and name.
fn nominated(events: &[&Event]) -> Option<(&'static str, String)> {
    let message = latest(events, "Nominated", Some("karpenter"))?;
    message
        .split(|c: char| c == ',' || c.is_whitespace())
        .find_map(|w| {
            ["nodeclaim", "machine"].into_iter().find_map(|kind| {
                let name = w.strip_prefix(kind)?.strip_prefix('/')?;
                Some((kind, name.to_string()))
            })
        })
}

fn nodeclaim((kind, name): (&'static str, String), nodeclaims: &[Value]) -> Option<NodeClaim> {
    let claim = nodeclaims
        .iter()
        .find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(&name))?;
    let label = |key: &str| {
        claim
            .pointer("/metadata/labels")
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let instance = [
        label("node.kubernetes.io/instance-type"),
        label("karpenter.sh/capacity-type"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    // A Machine's conditions are the same, named MachineLaunched and so on.
    let holds = |t: &str| {
        claim
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                let named = c["type"].as_str().map(|n| n.trim_start_matches("Machine"));
                named == Some(t) && c["status"] == "True"
            })
    };
    let progress = ["Initialized", "Registered", "Launched"]
        .into_iter()
        .find(|t| holds(t));
    Some(NodeClaim {
        kind,
        name,
        instance,
        progress,
    })
}

fn scheduled(pod: &Pod, events: &[&Event]) -> Stage {
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return Stage::Ended { phase };
    }
    let inits = status.init_container_statuses.unwrap_or_default();
    if let Some(stage) = inits.iter().find_map(|c| waiting(c, events)) {
        return stage;
    }
    // KubeRay's workers wait in `wait-gcs-ready` until their head answers.
    if let Some(init) = inits
        .iter()
        .find(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
    {
        return Stage::Starting {
            reason: format!("init container {} to finish", init.name),
        };
    }
    let containers = status.container_statuses.unwrap_or_default();
    if let Some(stage) = containers.iter().find_map(|c| waiting(c, events)) {
        return stage;
    }
    if phase == "Running" {
        let ready = containers.iter().all(|c| c.ready);
        return Stage::Running {
            ready,
            pulled: latest(events, "Pulled", None),
        };
    }
    Stage::Starting {
        reason: "the kubelet to start its containers".into(),
    }
}

/// The stage a container that is not running puts its pod in.
fn waiting(c: &ContainerStatus, events: &[&Event]) -> Option<Stage> {
    let w = c.state.as_ref()?.waiting.as_ref()?;
    let reason = w.reason.clone().unwrap_or_default();
    let message = w.message.clone().unwrap_or_default();
    Some(match reason.as_str() {
        "ErrImagePull" | "ImagePullBackOff" => Stage::PullFailing {
            image: c.image.clone(),
            message: pull_failure(events).unwrap_or(message),
            backing_off: reason == "ImagePullBackOff",
        },
        "CrashLoopBackOff" => Stage::CrashLooping {
            container: c.name.clone(),
            restarts: c.restart_count,
            last: last_termination(c),
        },
        "ContainerCreating" | "PodInitializing" => match pull_started(events) {
            Some(since) => Stage::Pulling {
                image: c.image.clone(),
                since,
            },
            None => Stage::Starting { reason },
        },
        _ => Stage::Starting {
            reason: if reason.is_empty() {
                "its containers to start".into()
            } else {
                reason
            },
        },
    })
}

fn last_termination(c: &ContainerStatus) -> String {
    let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) else {
        return "no termination recorded".into();
    };
    let mut said = format!("exit code {}", t.exit_code);
    if let Some(reason) = &t.reason {
        said.push_str(&format!(" ({reason})"));
    }
    if let Some(message) = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        said.push_str(&format!(": {message}"));
    }
    said
}

impl PodAccount {
    /// The cause, when this pod will not get anywhere without a change.
    pub fn stuck(&self) -> Option<Stuck> {
        let pod = format!("pod {} ({})", self.pod, self.role);
        match &self.stage {
            Stage::PullFailing {
                image,
                message,
                backing_off: true,
            } => Some(Stuck {
                pod: self.pod.clone(),
                cause: format!("{pod} cannot pull image {image}: {message}"),
                help: "check the image name and tag in the RayService, and that the nodes can reach its registry (imagePullSecrets)",
            }),
            Stage::Unschedulable {
                karpenter: Some(verdict),
                ..
            } => Some(Stuck {
                pod: self.pod.clone(),
                cause: format!(
                    "{pod} cannot be scheduled, and Karpenter cannot launch a node for it: {verdict}"
                ),
                help: "`rayform plan` names the NodePool requirements, taints or limits that keep the workers out; change the pool or the worker group",
            }),
            Stage::CrashLooping {
                container,
                restarts,
                last,
            } if *restarts >= CRASH_LOOP_RESTARTS => Some(Stuck {
                pod: self.pod.clone(),
                cause: format!(
                    "{pod}: container {container} keeps crashing ({restarts} restarts; last: {last})"
                ),
                help: "read its log with `kubectl logs --previous` on that pod",
            }),
            _ => None,
        }
    }
}

impl PodAccount {
    /// How long the pull under way has taken by `now`, when one is.
    pub fn pulling_for(&self, now: Timestamp) -> Option<std::time::Duration> {
        let Stage::Pulling {
            since: Some(since), ..
        } = &self.stage
        else {
            return None;
        };
        // A kubelet clock a little ahead of ours is not a negative pull.
        let took = now
            .duration_since(*since)
            .max(k8s_openapi::jiff::SignedDuration::ZERO);
        std::time::Duration::try_from(took).ok()
    }

    /// The line as of `now`: with how long a pull has taken so far. The
    /// line without it is what tells a change, so a pull does not make one
    /// every second.
    pub fn line_at(&self, now: Timestamp) -> String {
        match self.pulling_for(now) {
            Some(took) => format!("{self} for {}", format_duration(whole_seconds(took))),
            None => self.to_string(),
        }
    }
}

fn whole_seconds(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs())
}

impl fmt::Display for PodAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pod {} ({})", self.pod, self.role)?;
        if let Some(node) = &self.node {
            write!(f, " on {node}")?;
        }
        write!(f, ": {}", self.stage)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Unschedulable {
                why,
                karpenter: None,
            } => write!(f, "unschedulable: {why}"),
            Stage::Unschedulable {
                why,
                karpenter: Some(k),
            } => write!(f, "unschedulable: {why}; Karpenter: {k}"),
            Stage::NodeLaunching(c) => {
                write!(
                    f,
                    "Karpenter is launching a node for it ({}/{}",
                    c.kind, c.name
                )?;
                if !c.instance.is_empty() {
                    write!(f, ", {}", c.instance)?;
                }
                match c.progress {
                    Some(p) => write!(f, "; {})", p.to_lowercase()),
                    None => write!(f, ")"),
                }
            }
            Stage::Pulling { image, .. } => write!(f, "pulling image {image}"),
            Stage::PullFailing {
                image,
                message,
                backing_off,
            } => write!(
                f,
                "{} image {image}: {message}",
                if *backing_off {
                    "backing off pulling"
                } else {
                    "failed to pull"
                }
            ),
            Stage::Starting { reason } => write!(f, "waiting for {reason}"),
            Stage::CrashLooping {
                container,
                restarts,
                last,
            } => write!(
                f,
                "container {container} crashing ({restarts} restarts; last: {last})"
            ),
            Stage::Running {
                ready,
                pulled: Some(p),
            } => write!(
                f,
                "{} ({p})",
                if *ready {
                    "running"
                } else {
                    "running, not ready"
                }
            ),
            Stage::Running {
                ready,
                pulled: None,
            } => f.write_str(if *ready {
                "running"
            } else {
                "running, not ready"
            }),
            Stage::Terminating => f.write_str("terminating"),
            Stage::Ended { phase } => write!(f, "ended ({phase})"),
        }
    }
}

#[cfg(test)]
mod tests;
