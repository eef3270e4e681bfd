//! Intents are floors: "keep empty nodes at least 600s", "give nodes at least
//! 200Gi". A pool that already keeps empty nodes longer (or never removes
//! them), or a class whose disk is already larger, satisfies the intent, and
//! writing the intent's number would make Karpenter more aggressive or a
//! disk smaller: the opposite of what the user asked.
//!
//! Floors are judged against the values the object had before any rayform
//! stack patched it (recorded on the object), so a stack's own earlier patch
//! never reads as "already satisfied".

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::family::{self, Family};
use super::{ClassApi, FieldValue, PoolApi, recorded_originals};
use crate::stack::{NodeClassIntent, NodePoolIntent};
use crate::util::{format_duration, parse_duration};

pub const POLICY: &str = "/spec/disruption/consolidationPolicy";
pub const AFTER: &str = "/spec/disruption/consolidateAfter";
pub const TTL: &str = "/spec/ttlSecondsAfterEmpty";
pub const MAPPINGS: &str = "/spec/blockDeviceMappings";

/// What an intent asks of one Karpenter object.
#[derive(Debug, Clone, PartialEq)]
pub enum Wanted {
    /// The object's original values already meet the intent: nothing to write.
    Satisfied(String),
    /// The intent does not apply to this object as it is configured (the
    /// field it would write is not what Karpenter reads): nothing to write.
    Moot(String),
    Write {
        fields: BTreeMap<String, Value>,
        /// Said on the plan line: how the intent became these fields.
        notes: Vec<String>,
        /// What else changes for the user while the patch holds.
        warnings: Vec<String>,
    },
}

impl Wanted {
    /// The plan's note for an object the intent leaves alone.
    pub fn left_alone(&self) -> Option<String> {
        match self {
            Wanted::Satisfied(why) => Some(format!(
                "kept (longer than the stack asks), already satisfied: {why}"
            )),
            Wanted::Moot(why) => Some(format!("left alone: {why}")),
            Wanted::Write { .. } => None,
        }
    }
}

/// The object as it was before any stack patched it.
pub fn original_view(live: &Value) -> Value {
    let mut view = live.clone();
    for (ptr, value) in recorded_originals(live) {
        put(&mut view, &ptr, value);
    }
    view
}

fn put(view: &mut Value, ptr: &str, value: FieldValue) {
    let Some((parent, key)) = ptr.rsplit_once('/') else {
        return;
    };
    let key = key.replace("~1", "/").replace("~0", "~");
    match (value, view.pointer_mut(parent)) {
        (FieldValue::Absent, Some(Value::Object(map))) => {
            map.remove(&key);
        }
        (FieldValue::Value(v), Some(Value::Object(map))) => {
            map.insert(key, v);
        }
        (FieldValue::Value(v), _) => super::set_pointer(view, ptr, v),
        (FieldValue::Absent, _) => {}
    }
}

/// The empty-node TTL, per API generation, as a floor on what the pool keeps.
pub fn pool(api: PoolApi, intent: &NodePoolIntent, original: &Value) -> Result<Wanted, String> {
    match api {
        PoolApi::V1alpha5 => provisioner(intent.empty_ttl, original),
        PoolApi::V1 | PoolApi::V1beta1 => node_pool(api, intent.empty_ttl, original),
    }
}

fn provisioner(ttl: Duration, original: &Value) -> Result<Wanted, String> {
    if original.pointer("/spec/consolidation/enabled") == Some(&json!(true)) {
        return Err(
            "Provisioner has consolidation.enabled: true, and Karpenter rejects ttlSecondsAfterEmpty alongside it; \
             set spec.consolidation.enabled to false (consolidation already removes empty nodes) or drop the empty_ttl intent"
                .to_string(),
        );
    }
    let secs = ttl.as_secs();
    match original.pointer(TTL).map(Value::as_u64) {
        None => Ok(Wanted::Satisfied(
            "the Provisioner has no ttlSecondsAfterEmpty and no consolidation, so Karpenter never removes its empty nodes".into(),
        )),
        Some(Some(now)) if now >= secs => Ok(Wanted::Satisfied(format!(
            "ttlSecondsAfterEmpty is {now}, at least {secs}"
        ))),
        Some(_) => Ok(Wanted::Write {
            fields: BTreeMap::from([(TTL.into(), json!(secs))]),
            notes: Vec::new(),
            warnings: Vec::new(),
        }),
    }
}

fn node_pool(api: PoolApi, ttl: Duration, original: &Value) -> Result<Wanted, String> {
    if original.pointer(AFTER).and_then(Value::as_str) == Some("Never") {
        return Ok(Wanted::Satisfied(
            "consolidateAfter is Never, so Karpenter removes no node of this pool for being empty"
                .into(),
        ));
    }
    match api {
        PoolApi::V1beta1 => v1beta1_pool(ttl, original),
        _ => v1_pool(ttl, original),
    }
}

/// Karpenter v1 removes an empty node once it has been `consolidateAfter`
/// without a pod event, under every consolidation policy (its emptiness
/// method and the `Consolidatable` condition read only `consolidateAfter`).
/// So the policy is not the floor's business: only `consolidateAfter` is
/// raised, and underutilised nodes keep being consolidated, later.
fn v1_pool(ttl: Duration, original: &Value) -> Result<Wanted, String> {
    if original
        .pointer("/spec/replicas")
        .is_some_and(|r| !r.is_null())
    {
        return Ok(Wanted::Satisfied(
            "the NodePool is static (spec.replicas), and Karpenter removes no node of a static pool for being empty"
                .into(),
        ));
    }
    if let Some(budget) = empty_blocked_by(original) {
        return Ok(Wanted::Satisfied(format!(
            "its disruption budget {budget} allows no empty node to be removed"
        )));
    }
    let after = original.pointer(AFTER).and_then(Value::as_str);
    let policy = original
        .pointer(POLICY)
        .and_then(Value::as_str)
        .unwrap_or("WhenEmptyOrUnderutilized");
    if let Some(after) = after.filter(|a| parse_duration(a).is_some_and(|d| d >= ttl)) {
        return Ok(Wanted::Satisfied(format!(
            "consolidateAfter {after} is at least {}, and Karpenter v1 waits that long before removing an empty node under any consolidationPolicy",
            format_duration(ttl)
        )));
    }
    let secs = ttl.as_secs();
    let warnings = if policy == "WhenEmpty" {
        Vec::new()
    } else {
        vec![format!(
            "consolidateAfter {secs}s (was {}) also makes Karpenter wait {} after a node's last pod change before consolidating it as underutilised (policy {policy}), until the stack is destroyed",
            after.unwrap_or("0s"),
            format_duration(ttl)
        )]
    };
    Ok(Wanted::Write {
        fields: BTreeMap::from([(AFTER.into(), json!(format!("{secs}s")))]),
        notes: Vec::new(),
        warnings,
    })
}

/// An always-active budget of zero nodes for empty nodes (reason `Empty`,
/// or every reason): Karpenter then never disrupts an empty node of the pool.
fn empty_blocked_by(original: &Value) -> Option<String> {
    original
        .pointer("/spec/disruption/budgets")?
        .as_array()?
        .iter()
        .find(|b| {
            let always = b.get("schedule").is_none();
            let zero = matches!(b["nodes"].as_str(), Some("0" | "0%"));
            let reasons = b["reasons"].as_array();
            let for_empty = reasons.is_none_or(|r| r.iter().any(|r| r == "Empty"));
            always && zero && for_empty
        })
        .map(|b| {
            let reasons = b["reasons"].as_array().map_or_else(
                || "every reason".to_string(),
                |r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            );
            format!("nodes {} for {reasons}", b["nodes"].as_str().unwrap_or("0"))
        })
}

/// Karpenter v0.33–v0.37 (v1beta1) removes empty nodes by their own method
/// only under `WhenEmpty`; `WhenUnderutilized` consolidates empty nodes at
/// once and cannot be combined with a `consolidateAfter`. So a pool that is
/// not `WhenEmpty` has to become it.
fn v1beta1_pool(ttl: Duration, original: &Value) -> Result<Wanted, String> {
    let policy = original
        .pointer(POLICY)
        .and_then(Value::as_str)
        .unwrap_or("WhenUnderutilized");
    let after = original.pointer(AFTER).and_then(Value::as_str);
    let longer = after.filter(|a| parse_duration(a).is_some_and(|d| d >= ttl));
    if policy == "WhenEmpty"
        && let Some(after) = longer
    {
        return Ok(Wanted::Satisfied(format!(
            "consolidationPolicy is WhenEmpty and consolidateAfter {after} is at least {}",
            format_duration(ttl)
        )));
    }
    let mut notes = Vec::new();
    let after = match longer {
        Some(a) => {
            notes.push(format!(
                "consolidateAfter stays {a}, longer than the {} asked",
                format_duration(ttl)
            ));
            a.to_string()
        }
        None => format!("{}s", ttl.as_secs()),
    };
    let mut fields = BTreeMap::from([(AFTER.into(), json!(after))]);
    let mut warnings = Vec::new();
    if policy != "WhenEmpty" {
        fields.insert(POLICY.into(), json!("WhenEmpty"));
        warnings.push(format!(
            "consolidationPolicy WhenEmpty (was {policy}) stops Karpenter from consolidating underutilised nodes of this pool until the stack is destroyed (the v1beta1 API allows no consolidateAfter with {policy})"
        ));
    }
    Ok(Wanted::Write {
        fields,
        notes,
        warnings,
    })
}

/// The disk size, on the device Karpenter reads node storage from for the
/// class's AMI family, as a floor on that device's size.
/// Long on purpose: every case a class can be in (RAID0, no mappings, the
/// family's device missing or smaller or larger) reads as one list here.
pub fn class(
    api: ClassApi,
    intent: &NodeClassIntent,
    live: &Value,
    original: &Value,
) -> Result<Wanted, String> {
    if let Some(template) = original
        .pointer("/spec/launchTemplate")
        .and_then(Value::as_str)
    {
        return Err(format!(
            "the AWSNodeTemplate launches from launch template `{template}`, and Karpenter rejects blockDeviceMappings alongside launchTemplate\n  \
             help: size the volume in the launch template itself and drop the storage intent, or let Karpenter generate the launch template"
        ));
    }
    if original.pointer("/spec/instanceStorePolicy") == Some(&json!("RAID0")) {
        return Ok(Wanted::Moot(
            "the class sets instanceStorePolicy: RAID0, so Karpenter counts a node's storage from its NVMe instance store, not from an EBS volume; \
             resizing the root volume would only drift every node and replace it for nothing (choose instance types with enough instance store instead, e.g. a karpenter.k8s.aws/instance-local-nvme requirement)"
                .to_string(),
        ));
    }
    let family = Family::of(api, original);
    let mappings = |object: &Value| -> Vec<Value> {
        let list = object
            .pointer(MAPPINGS)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if list.is_empty() {
            family.default_mappings()
        } else {
            list
        }
    };
    let before = mappings(original);
    let device = family::storage_device(family, intent.device.as_deref(), &before)?;
    let size_of = |list: &[Value]| {
        list.iter()
            .find(|m| m["deviceName"] == json!(device))
            .and_then(|m| m.pointer("/ebs/volumeSize"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if let Some(size) = size_of(&before)
        && let (Some(have), Some(want)) = (quantity_bytes(&size), quantity_bytes(&intent.storage))
        && have >= want
    {
        return Ok(Wanted::Satisfied(format!(
            "{device} is {size}, at least {}",
            intent.storage
        )));
    }
    let mut notes = Vec::new();
    let listed = live.pointer(MAPPINGS).and_then(Value::as_array);
    if listed.is_none_or(Vec::is_empty) && family != Family::Custom {
        let devices: Vec<&str> = before
            .iter()
            .filter_map(|m| m["deviceName"].as_str())
            .collect();
        notes.push(format!(
            "the class lists no blockDeviceMappings: rayform writes {}'s defaults ({}) with {device} resized, as any list replaces them",
            family.name(),
            devices.join(", ")
        ));
    }
    let mut list = mappings(live);
    match list.iter_mut().find(|m| m["deviceName"] == json!(device)) {
        Some(mapping) => {
            if !mapping["ebs"].is_object() {
                mapping["ebs"] = json!({});
            }
            mapping["ebs"]["volumeSize"] = json!(intent.storage);
        }
        None => list.push(json!({
            "deviceName": device,
            "ebs": {"volumeSize": intent.storage, "volumeType": "gp3", "encrypted": true, "deleteOnTermination": true},
        })),
    }
    Ok(Wanted::Write {
        fields: BTreeMap::from([(MAPPINGS.into(), Value::Array(list))]),
        notes,
        warnings: Vec::new(),
    })
}

/// Bytes in a Kubernetes quantity (`20Gi`, `100G`, `1Ti`, `21474836480`);
/// `None` for forms rayform does not compare (decimals, exponents).
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let digits = q.len() - q.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let n: u128 = q[..digits].parse().ok()?;
    let scale: u128 = match &q[digits..] {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl(secs: u64) -> NodePoolIntent {
        NodePoolIntent {
            empty_ttl: Duration::from_secs(secs),
        }
    }

    fn disruption(policy: &str, after: &str) -> Value {
        json!({"spec": {"disruption": {"consolidationPolicy": policy, "consolidateAfter": after}}})
    }

    fn written(w: Result<Wanted, String>) -> BTreeMap<String, Value> {
        match w {
            Ok(Wanted::Write { fields, .. }) => fields,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn satisfied(w: Result<Wanted, String>) -> String {
        match w {
            Ok(Wanted::Satisfied(why)) => why,
            other => panic!("expected satisfied, got {other:?}"),
        }
    }

    #[test]
    fn a_longer_ttl_never_or_never_removed_is_left_alone() {
        let why = satisfied(pool(PoolApi::V1, &ttl(600), &disruption("WhenEmpty", "1h")));
        assert!(why.contains("1h is at least 10m"), "{why}");
        satisfied(pool(
            PoolApi::V1,
            &ttl(600),
            &disruption("WhenEmptyOrUnderutilized", "Never"),
        ));
        satisfied(pool(
            PoolApi::V1beta1,
            &ttl(600),
            &disruption("WhenUnderutilized", "Never"),
        ));
        let never = satisfied(pool(PoolApi::V1alpha5, &ttl(600), &json!({"spec": {}})));
        assert!(never.contains("never removes"), "{never}");
        satisfied(pool(
            PoolApi::V1alpha5,
            &ttl(600),
            &json!({"spec": {"ttlSecondsAfterEmpty": 900}}),
        ));
    }

    /// Karpenter v1.14's emptiness method runs under every policy and waits
    /// for the same `Consolidatable` condition, set `consolidateAfter` after
    /// the node's last pod event.
    #[test]
    fn a_v1_pool_of_any_policy_with_a_longer_consolidate_after_already_keeps_empty_nodes() {
        for policy in ["WhenEmptyOrUnderutilized", "Balanced", "WhenEmpty"] {
            let why = satisfied(pool(PoolApi::V1, &ttl(600), &disruption(policy, "2h")));
            assert!(why.contains("consolidateAfter 2h is at least 10m"), "{why}");
        }
    }

    #[test]
    fn a_v1_pool_gets_a_longer_consolidate_after_and_keeps_its_policy() {
        let Ok(Wanted::Write {
            fields, warnings, ..
        }) = pool(
            PoolApi::V1,
            &ttl(600),
            &disruption("WhenEmptyOrUnderutilized", "30s"),
        )
        else {
            panic!("consolidateAfter must be raised");
        };
        assert_eq!(fields, BTreeMap::from([(AFTER.into(), json!("600s"))]));
        assert!(
            warnings[0].contains("(was 30s) also makes Karpenter wait 10m")
                && warnings[0].contains("underutilised (policy WhenEmptyOrUnderutilized)"),
            "{warnings:?}"
        );
        let Ok(Wanted::Write {
            fields, warnings, ..
        }) = pool(PoolApi::V1, &ttl(600), &disruption("WhenEmpty", "30s"))
        else {
            panic!("consolidateAfter must be raised");
        };
        assert_eq!(fields, BTreeMap::from([(AFTER.into(), json!("600s"))]));
        assert!(warnings.is_empty(), "WhenEmpty consolidates nothing else");
        let defaulted = written(pool(PoolApi::V1, &ttl(600), &json!({"spec": {}})));
        assert_eq!(defaulted, BTreeMap::from([(AFTER.into(), json!("600s"))]));
    }

    #[test]
    fn a_v1_budget_of_zero_empty_nodes_already_keeps_them() {
        let with_budgets = |budgets: Value| {
            let mut p = disruption("WhenEmptyOrUnderutilized", "30s");
            p["spec"]["disruption"]["budgets"] = budgets;
            pool(PoolApi::V1, &ttl(600), &p)
        };
        let why = satisfied(with_budgets(
            json!([{"nodes": "10%"}, {"nodes": "0", "reasons": ["Drifted", "Empty"]}]),
        ));
        assert!(why.contains("budget nodes 0 for Drifted, Empty"), "{why}");
        let why = satisfied(with_budgets(json!([{"nodes": "0%"}])));
        assert!(why.contains("nodes 0% for every reason"), "{why}");
        // Zero only for other reasons, or only in a window: empty nodes still go.
        written(with_budgets(
            json!([{"nodes": "0", "reasons": ["Underutilized", "Drifted"]}]),
        ));
        written(with_budgets(
            json!([{"nodes": "0", "schedule": "0 9 * * mon-fri", "duration": "8h"}]),
        ));
        written(with_budgets(json!([{"nodes": "1"}])));
    }

    #[test]
    fn a_static_v1_pool_removes_no_empty_node() {
        let mut p = disruption("WhenEmptyOrUnderutilized", "0s");
        p["spec"]["replicas"] = json!(2);
        let why = satisfied(pool(PoolApi::V1, &ttl(600), &p));
        assert!(why.contains("static"), "{why}");
    }

    /// v1beta1 (Karpenter v0.33–v0.37) is another controller: emptiness only
    /// under WhenEmpty, and WhenUnderutilized refuses a consolidateAfter.
    #[test]
    fn a_v1beta1_pool_becomes_when_empty_and_a_longer_ttl_is_kept() {
        let raised = written(pool(
            PoolApi::V1beta1,
            &ttl(600),
            &disruption("WhenEmpty", "30s"),
        ));
        assert_eq!(raised, BTreeMap::from([(AFTER.into(), json!("600s"))]));
        let Ok(Wanted::Write {
            fields,
            notes,
            warnings,
        }) = pool(
            PoolApi::V1beta1,
            &ttl(600),
            &json!({"spec": {"disruption": {"consolidationPolicy": "WhenUnderutilized"}}}),
        )
        else {
            panic!("the policy must change");
        };
        assert_eq!(fields[AFTER], json!("600s"));
        assert_eq!(fields[POLICY], json!("WhenEmpty"));
        assert!(notes.is_empty(), "{notes:?}");
        assert!(warnings[0].contains("underutilised"), "{warnings:?}");
        let why = satisfied(pool(
            PoolApi::V1beta1,
            &ttl(600),
            &disruption("WhenEmpty", "2h"),
        ));
        assert!(why.contains("WhenEmpty and consolidateAfter 2h"), "{why}");
        let v1alpha5 = written(pool(
            PoolApi::V1alpha5,
            &ttl(600),
            &json!({"spec": {"ttlSecondsAfterEmpty": 30}}),
        ));
        assert_eq!(v1alpha5[TTL], json!(600));
    }

    #[test]
    fn the_floor_is_read_from_the_original_not_from_an_earlier_patch() {
        let mut live = disruption("WhenEmpty", "600s");
        live["metadata"] = json!({"annotations": {super::super::ANNOTATION_ORIGINAL:
            r#"{"/spec/disruption/consolidateAfter": {"value": "30s"}, "/spec/disruption/consolidationPolicy": {"value": "WhenEmptyOrUnderutilized"}}"#}});
        let original = original_view(&live);
        assert_eq!(original.pointer(AFTER), Some(&json!("30s")));
        written(pool(PoolApi::V1, &ttl(600), &original));
    }

    fn storage(size: &str) -> NodeClassIntent {
        NodeClassIntent {
            storage: size.into(),
            device: None,
        }
    }

    #[test]
    fn a_larger_disk_is_never_shrunk() {
        let class_of = |size: &str| json!({"spec": {"amiFamily": "AL2023", "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"volumeSize": size}}]}});
        let big = class_of("1Ti");
        let why = satisfied(class(ClassApi::V1, &storage("200Gi"), &big, &big));
        assert!(why.contains("/dev/xvda is 1Ti"), "{why}");
        let small = class_of("20Gi");
        let fields = written(class(ClassApi::V1, &storage("200Gi"), &small, &small));
        assert_eq!(fields[MAPPINGS][0]["ebs"]["volumeSize"], json!("200Gi"));
        assert!(quantity_bytes("200G") < quantity_bytes("200Gi"));
    }

    #[test]
    fn a_class_without_mappings_gets_its_familys_defaults_with_the_right_device_sized() {
        let bottlerocket = json!({"spec": {"amiFamily": "Bottlerocket"}});
        let list = written(class(
            ClassApi::V1beta1,
            &storage("200Gi"),
            &bottlerocket,
            &bottlerocket,
        ))[MAPPINGS]
            .clone();
        assert_eq!(list[0]["deviceName"], json!("/dev/xvda"));
        assert_eq!(list[0]["ebs"]["volumeSize"], json!("4Gi"));
        assert_eq!(list[1]["deviceName"], json!("/dev/xvdb"));
        assert_eq!(list[1]["ebs"]["volumeSize"], json!("200Gi"));
        let ubuntu = json!({"spec": {"amiFamily": "Ubuntu", "blockDeviceMappings": [{"deviceName": "/dev/sda1", "ebs": {"volumeSize": "20Gi"}}]}});
        let list = written(class(
            ClassApi::V1beta1,
            &storage("200Gi"),
            &ubuntu,
            &ubuntu,
        ))[MAPPINGS]
            .clone();
        assert_eq!(
            list,
            json!([{"deviceName": "/dev/sda1", "ebs": {"volumeSize": "200Gi"}}])
        );
    }

    #[test]
    fn a_raid0_class_counts_the_instance_store_and_its_ebs_volume_is_left_alone() {
        let raid0 = json!({"spec": {"amiFamily": "AL2023", "instanceStorePolicy": "RAID0",
            "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"volumeSize": "20Gi"}}]}});
        match class(ClassApi::V1, &storage("200Gi"), &raid0, &raid0) {
            Ok(Wanted::Moot(why)) => assert!(why.contains("instanceStorePolicy: RAID0"), "{why}"),
            other => panic!("expected the EBS volume left alone, got {other:?}"),
        }
    }

    #[test]
    fn a_launch_template_is_refused_with_the_reason() {
        let template = json!({"spec": {"launchTemplate": "gpu-nodes"}});
        let error = class(ClassApi::V1alpha1, &storage("200Gi"), &template, &template).unwrap_err();
        assert!(error.contains("launch template `gpu-nodes`"), "{error}");
    }
}
