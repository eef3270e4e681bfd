//! A pod's line in the wait's account, read from pods, Events and
//! NodeClaims as the API server returns them.

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
