//! Why a RayCluster being brought up does not come: its pods stay Pending
//! when no node can take them and Karpenter will launch none (a pool's
//! limits, taints or requirements). KubeRay's status only says an upgrade is
//! in progress, for as long as the wait lasts; Karpenter says why on the
//! pods, in `FailedScheduling` events of its own.

use serde_json::Value;

use crate::cluster::Cluster;

/// Karpenter's reason for an unschedulable pod of `raycluster`, if any;
/// a pool's limits first, as the reason a user can act on.
pub async fn why(cluster: &Cluster, namespace: &str, raycluster: &str) -> Option<String> {
    let pods = cluster
        .pods(namespace, &format!("ray.io/cluster={raycluster}"))
        .await
        .ok()?;
    let mut found = None;
    for name in pods
        .iter()
        .filter(|p| unschedulable(p))
        .filter_map(|p| p.pointer("/metadata/name").and_then(Value::as_str))
    {
        let events = cluster.events_about(namespace, name).await.ok()?;
        let Some((said, limits)) = karpenter_refusal(&events) else {
            continue;
        };
        found = Some(format!(
            "pod {name} of RayCluster {raycluster} is Pending, and Karpenter launches no node for it: {said}"
        ));
        if limits {
            break;
        }
    }
    found
}

fn unschedulable(pod: &Value) -> bool {
    pod.pointer("/status/phase").and_then(Value::as_str) == Some("Pending")
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
}

/// The latest `FailedScheduling` Karpenter recorded, cut to the part naming
/// a pool's limits when there is one (its message lists a reason per pool),
/// and whether there was.
fn karpenter_refusal(events: &[Value]) -> Option<(String, bool)> {
    let event = events
        .iter()
        .filter(|e| {
            e["reason"] == "FailedScheduling"
                && e.pointer("/source/component").and_then(Value::as_str) == Some("karpenter")
        })
        .max_by_key(|e| {
            e["lastTimestamp"]
                .as_str()
                .or_else(|| e["eventTime"].as_str())
                .unwrap_or_default()
                .to_string()
        })?;
    let message = event["message"].as_str()?;
    let message = message
        .strip_prefix("Failed to schedule pod, ")
        .unwrap_or(message);
    let limits = message
        .split("; ")
        .find(|part| part.contains("exceed limits for nodepool") || part.contains("node limits"));
    Some((limits.unwrap_or(message).to_string(), limits.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_part_naming_a_pools_limits_is_kept() {
        let events = [
            json!({"reason": "FailedScheduling", "source": {"component": "default-scheduler"},
                   "message": "0/1 nodes are available", "lastTimestamp": "2026-12-05T01:00:09Z"}),
            json!({"reason": "FailedScheduling", "source": {"component": "karpenter"},
                   "message": "Failed to schedule pod, did not tolerate taint (taint=x:NoSchedule); all available instance types exceed limits for nodepool (NodePool=gpu); incompatible requirements, key karpenter.sh/nodepool",
                   "lastTimestamp": "2026-12-05T01:00:08Z"}),
        ];
        assert_eq!(
            karpenter_refusal(&events),
            Some((
                "all available instance types exceed limits for nodepool (NodePool=gpu)".into(),
                true
            ))
        );
        assert_eq!(karpenter_refusal(&events[..1]), None);
    }

    #[test]
    fn only_a_pod_the_scheduler_cannot_place_counts() {
        let pending = |reason: &str| {
            json!({"status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": reason}]}})
        };
        assert!(unschedulable(&pending("Unschedulable")));
        assert!(!unschedulable(&pending("SchedulingGated")));
        assert!(!unschedulable(&json!({"status": {"phase": "Running"}})));
    }
}
