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
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).expect("a pod")
    }

    fn event(reason: &str, component: &str, message: &str, at: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("e-{reason}-{at}")},
            "involvedObject": {"kind": "Pod", "name": "w"},
            "reason": reason,
            "message": message,
            "source": {"component": component},
            "lastTimestamp": format!("2026-12-05T01:00:{at}Z"),
        }))
        .expect("an event")
    }

    fn worker(spec: Value, status: Value) -> Pod {
        pod(json!({
            "metadata": {"name": "w", "labels": {"ray.io/node-type": "worker", "ray.io/group": "gpu"}},
            "spec": spec,
            "status": status,
        }))
    }

    fn unscheduled_worker() -> Pod {
        worker(
            json!({"containers": []}),
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}),
        )
    }

    fn waiting_worker(reason: &str, message: &str, restarts: i32) -> Pod {
        worker(
            json!({"nodeName": "n1", "containers": []}),
            json!({"phase": "Pending", "containerStatuses": [{
                "name": "ray-worker", "image": "rayproject/ray-llm:2.52.0", "imageID": "", "ready": false,
                "restartCount": restarts,
                "state": {"waiting": {"reason": reason, "message": message}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "CUDA out of memory"}},
            }]}),
        )
    }

    #[test]
    fn a_pod_karpenter_gave_up_on_is_stuck_with_karpenter_s_words() {
        let e = event(
            "FailedScheduling",
            "karpenter",
            "Failed to schedule pod, incompatible with nodepool \"default\"",
            "05",
        );
        let a = account(&unscheduled_worker(), &[&e], &[]);
        let stuck = a.stuck().expect("stuck");
        assert_eq!(
            stuck.cause,
            "pod w (worker group gpu) cannot be scheduled, and Karpenter cannot launch a node for it: \
             Failed to schedule pod, incompatible with nodepool \"default\""
        );
    }

    #[test]
    fn a_refusal_karpenter_took_back_with_a_nomination_is_not_a_verdict() {
        let refused = event("FailedScheduling", "karpenter", "no instance type", "05");
        let nominated = event(
            "Nominated",
            "karpenter",
            "Pod should schedule on: nodeclaim/gone",
            "07",
        );
        let a = account(&unscheduled_worker(), &[&refused, &nominated], &[]);
        assert_eq!(a.stuck(), None, "{a}");
    }

    #[test]
    fn the_scheduler_alone_saying_unschedulable_is_not_a_verdict() {
        let e = event("FailedScheduling", "default-scheduler", "0/1 nodes", "05");
        let a = account(&unscheduled_worker(), &[&e], &[]);
        assert_eq!(a.stuck(), None);
        assert_eq!(
            a.to_string(),
            "pod w (worker group gpu): unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
        );
    }

    #[test]
    fn a_nominated_pod_shows_its_nodeclaim_and_how_far_the_node_got() {
        let e = event(
            "Nominated",
            "karpenter",
            "Pod should schedule on: nodeclaim/gpu-x7k2p",
            "03",
        );
        let claim = json!({"metadata": {"name": "gpu-x7k2p", "labels": {
                "node.kubernetes.io/instance-type": "g5.xlarge", "karpenter.sh/capacity-type": "on-demand"}},
            "status": {"conditions": [{"type": "Launched", "status": "True"},
                {"type": "Registered", "status": "True"}, {"type": "Initialized", "status": "Unknown"}]}});
        let a = account(&unscheduled_worker(), &[&e], &[claim]);
        assert_eq!(
            a.to_string(),
            "pod w (worker group gpu): Karpenter is launching a node for it \
             (nodeclaim/gpu-x7k2p, g5.xlarge, on-demand; registered)"
        );
        assert_eq!(a.stuck(), None);
    }

    /// Karpenter v0.32 and older launch a Provisioner's nodes through
    /// Machines, whose conditions carry the same steps under other names.
    #[test]
    fn a_pod_nominated_to_a_provisioners_machine_shows_it_too() {
        let e = event(
            "Nominated",
            "karpenter",
            "Pod should schedule on: machine/default-4kq2m",
            "03",
        );
        let machine = json!({"metadata": {"name": "default-4kq2m", "labels": {
                "node.kubernetes.io/instance-type": "g5.2xlarge"}},
            "status": {"conditions": [{"type": "MachineLaunched", "status": "True"},
                {"type": "MachineRegistered", "status": "False"}]}});
        let a = account(&unscheduled_worker(), &[&e], &[machine]);
        assert_eq!(
            a.to_string(),
            "pod w (worker group gpu): Karpenter is launching a node for it \
             (machine/default-4kq2m, g5.2xlarge; launched)"
        );
    }

    #[test]
    fn an_image_pull_is_stuck_only_once_the_kubelet_backs_off() {
        let failed = event(
            "Failed",
            "kubelet",
            "Failed to pull image \"rayproject/ray-llm:2.52.0\": not found",
            "09",
        );
        let first = account(&waiting_worker("ErrImagePull", "", 0), &[&failed], &[]);
        assert_eq!(first.stuck(), None);
        let bare = event("Failed", "kubelet", "Error: ImagePullBackOff", "11");
        let backing_off = account(
            &waiting_worker("ImagePullBackOff", "Back-off pulling image", 0),
            &[&failed, &bare],
            &[],
        );
        assert_eq!(
            backing_off.stuck().expect("stuck").cause,
            "pod w (worker group gpu) cannot pull image rayproject/ray-llm:2.52.0: \
             Failed to pull image \"rayproject/ray-llm:2.52.0\": not found"
        );
    }

    #[test]
    fn a_pull_in_progress_is_named_and_not_stuck() {
        let e = event("Pulling", "kubelet", "Pulling image \"x\"", "04");
        let a = account(&waiting_worker("ContainerCreating", "", 0), &[&e], &[]);
        assert!(
            matches!(&a.stage, Stage::Pulling { image, since: Some(_) } if image == "rayproject/ray-llm:2.52.0"),
            "{a}"
        );
        let pulled = event(
            "Pulled",
            "kubelet",
            "Successfully pulled image \"x\" in 5s",
            "09",
        );
        let after = account(
            &waiting_worker("ContainerCreating", "", 0),
            &[&e, &pulled],
            &[],
        );
        assert!(matches!(after.stage, Stage::Starting { .. }), "{after}");
    }

    #[test]
    fn a_crash_loop_is_stuck_at_the_third_crash_with_the_last_message() {
        let twice = account(&waiting_worker("CrashLoopBackOff", "", 1), &[], &[]);
        assert_eq!(twice.stuck(), None);
        let thrice = account(&waiting_worker("CrashLoopBackOff", "", 2), &[], &[]);
        assert_eq!(
            thrice.stuck().expect("stuck").cause,
            "pod w (worker group gpu): container ray-worker keeps crashing \
             (2 restarts; last: exit code 1 (Error): CUDA out of memory)"
        );
    }

    #[test]
    fn a_worker_waiting_for_its_head_names_the_init_container() {
        let w = worker(
            json!({"nodeName": "n1", "containers": []}),
            json!({"phase": "Pending",
                "initContainerStatuses": [{"name": "wait-gcs-ready", "image": "x", "imageID": "",
                    "ready": false, "restartCount": 0, "state": {"running": {}}}],
                "containerStatuses": [{"name": "ray-worker", "image": "x", "imageID": "",
                    "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]}),
        );
        assert_eq!(
            account(&w, &[], &[]).to_string(),
            "pod w (worker group gpu) on n1: waiting for init container wait-gcs-ready to finish"
        );
    }

    #[test]
    fn a_running_pod_says_how_long_its_image_took() {
        let pulled = event(
            "Pulled",
            "kubelet",
            "Successfully pulled image \"x\" in 5.2s (5.2s including waiting)",
            "09",
        );
        let running = worker(
            json!({"nodeName": "n1", "containers": []}),
            json!({"phase": "Running", "containerStatuses": [{"name": "c", "image": "x", "imageID": "",
                "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        );
        assert_eq!(
            account(&running, &[&pulled], &[]).to_string(),
            "pod w (worker group gpu) on n1: running (Successfully pulled image \"x\" in 5.2s (5.2s including waiting))"
        );
    }

    #[test]
    fn a_pull_under_way_says_how_long_it_has_taken_so_far_but_its_line_does_not_change() {
        let first = event("Pulling", "kubelet", "Pulling image \"x\"", "04");
        let failed = event(
            "Failed",
            "kubelet",
            "Failed to pull image \"x\": i/o timeout",
            "20",
        );
        // The kubelet's retry: this attempt's clock starts at its own `Pulling`.
        let again = event("Pulling", "kubelet", "Pulling image \"x\"", "30");
        let a = account(
            &waiting_worker("ContainerCreating", "", 0),
            &[&first, &failed, &again],
            &[],
        );
        let at = |s: &str| -> Timestamp { format!("2026-12-05T01:{s}Z").parse().expect("a time") };
        assert_eq!(
            a.pulling_for(at("01:02.5")),
            Some(std::time::Duration::from_millis(32_500))
        );
        assert_eq!(
            a.line_at(at("01:02.5")),
            "pod w (worker group gpu) on n1: pulling image rayproject/ray-llm:2.52.0 for 32s"
        );
        assert_eq!(
            a.line_at(at("02:31")),
            "pod w (worker group gpu) on n1: pulling image rayproject/ray-llm:2.52.0 for 2m1s"
        );
        assert_eq!(
            a.to_string(),
            "pod w (worker group gpu) on n1: pulling image rayproject/ray-llm:2.52.0",
            "the line that tells a change has no clock in it"
        );
        // A kubelet clock ahead of ours, and a pod that pulls nothing.
        assert_eq!(a.pulling_for(at("00:29")), Some(std::time::Duration::ZERO));
        let running = account(&waiting_worker("CrashLoopBackOff", "", 0), &[&again], &[]);
        assert_eq!(running.pulling_for(at("01:02")), None);
    }
}
