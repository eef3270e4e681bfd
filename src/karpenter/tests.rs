//! Patches and reverts of each Karpenter generation, field by field.

use super::*;

/// What the TTL intent writes over a pool that removes empty nodes sooner.
fn ttl_fields(api: PoolApi, secs: u64) -> BTreeMap<String, Value> {
    match api {
        PoolApi::V1alpha5 => BTreeMap::from([(floor::TTL.into(), json!(secs))]),
        PoolApi::V1beta1 => BTreeMap::from([
            (floor::POLICY.into(), json!("WhenEmpty")),
            (floor::AFTER.into(), json!(format!("{secs}s"))),
        ]),
        PoolApi::V1 => BTreeMap::from([(floor::AFTER.into(), json!(format!("{secs}s")))]),
    }
}

fn pool() -> Value {
    json!({"metadata": {"name": "default", "resourceVersion": "7"},
           "spec": {"disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "30s"}}})
}

fn apply_merge(live: &Value, merge: &Value) -> Value {
    fn merge_into(target: &mut Value, patch: &Value) {
        if let Value::Object(p) = patch {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if v.is_null() {
                    target.as_object_mut().unwrap().remove(k);
                } else {
                    merge_into(&mut target[k.as_str()], v);
                }
            }
        } else {
            *target = patch.clone();
        }
    }
    let mut out = live.clone();
    merge_into(&mut out, merge);
    out
}

#[test]
fn the_stored_version_comes_first_and_decides_which_annotations_count() {
    let both = Served {
        pools: vec![PoolApi::V1, PoolApi::V1beta1],
        classes: vec![ClassApi::V1, ClassApi::V1beta1],
        auto_mode: false,
    };
    // Karpenter v0.33.6-v0.37: v1 served, v1beta1 stored.
    let v037 = both.clone().stored_first(Some("v1beta1"), Some("v1beta1"));
    assert_eq!(v037.pool(), Some(PoolApi::V1beta1));
    assert_eq!(v037.class(), Some(ClassApi::V1beta1));
    assert_eq!(v037.ignored_annotation("karpenter.sh/do-not-evict"), None);
    // Karpenter v1.0: v1beta1 served, v1 stored.
    let v10 = both.clone().stored_first(Some("v1"), Some("v1"));
    assert_eq!(v10.pool(), Some(PoolApi::V1));
    assert!(
        v10.ignored_annotation("karpenter.sh/do-not-evict")
            .is_some()
    );
    // v0.32: the stored NodePool version does not move the Provisioner.
    let v032 = Served {
        pools: vec![PoolApi::V1beta1, PoolApi::V1alpha5],
        classes: vec![ClassApi::V1beta1, ClassApi::V1alpha1],
        auto_mode: false,
    };
    assert_eq!(
        v032.clone().stored_first(Some("v1beta1"), Some("v1beta1")),
        v032
    );
    assert_eq!(both.clone().stored_first(None, None), both);
}

#[test]
fn a_broken_originals_annotation_is_reported_not_read_as_empty() {
    let with = |text: &str| json!({"metadata": {"annotations": {ANNOTATION_ORIGINAL: text}}});
    assert!(unreadable_originals(&with("{\"/spec/x\": {\"value\": 1")).is_some());
    assert_eq!(unreadable_originals(&with("{}")), None);
    assert_eq!(unreadable_originals(&json!({"metadata": {}})), None);
}

#[test]
fn two_stacks_share_one_original_and_the_last_restores_it() {
    let fields = ttl_fields(PoolApi::V1, 600);
    let a = patch("a", &pool(), &fields);
    let after_a = apply_merge(&pool(), &a.merge);
    let b = patch("b", &after_a, &fields);
    let after_b = apply_merge(&after_a, &b.merge);
    assert_eq!(
        recorded_originals(&after_b)["/spec/disruption/consolidateAfter"],
        FieldValue::Value(json!("30s"))
    );

    let undo_a = revert("a", &after_b, &a.fields).unwrap();
    let after_undo_a = apply_merge(&after_b, &undo_a.merge);
    assert_eq!(
        after_undo_a["spec"]["disruption"]["consolidateAfter"],
        json!("600s")
    );

    let undo_b = revert("b", &after_undo_a, &b.fields).unwrap();
    let restored = apply_merge(&after_undo_a, &undo_b.merge);
    assert_eq!(restored["spec"], pool()["spec"]);
    assert!(
        restored["metadata"]
            .get("annotations")
            .is_none_or(|a| a.as_object().unwrap().is_empty())
    );
}

#[test]
fn with_three_holders_the_live_value_stays_with_whoever_wrote_it() {
    let ttl = |s| ttl_fields(PoolApi::V1, s);
    let mut live = pool();
    let mut written = BTreeMap::new();
    for (stack, secs) in [("a", 600), ("b", 300), ("c", 900)] {
        let p = patch(stack, &live, &ttl(secs));
        live = apply_merge(&live, &p.merge);
        written.insert(stack, p.fields);
    }
    let after = |live: &Value| live["spec"]["disruption"]["consolidateAfter"].clone();
    let undo_a = revert("a", &live, &written["a"]).expect("c's value is live: nothing to refuse");
    live = apply_merge(&live, &undo_a.merge);
    assert_eq!(after(&live), json!("900s"), "c's patch stays");
    let undo_c = revert("c", &live, &written["c"]).unwrap();
    live = apply_merge(&live, &undo_c.merge);
    assert_eq!(after(&live), json!("300s"), "handed over to b");
    let undo_b = revert("b", &live, &written["b"]).unwrap();
    live = apply_merge(&live, &undo_b.merge);
    assert_eq!(live["spec"], pool()["spec"]);
}

/// A pool patched by a rayform that also switched v1 pools to
/// WhenEmpty: the next apply writes only consolidateAfter and gives the
/// policy back, and destroy still restores the pool exactly.
#[test]
fn a_field_the_intent_no_longer_writes_is_given_back() {
    let old = ttl_fields(PoolApi::V1beta1, 600);
    let first = patch("a", &pool(), &old);
    let patched = apply_merge(&pool(), &first.merge);
    assert_eq!(
        patched["spec"]["disruption"]["consolidationPolicy"],
        json!("WhenEmpty")
    );
    let again = patch("a", &patched, &ttl_fields(PoolApi::V1, 600));
    assert!(again.needed);
    let now = apply_merge(&patched, &again.merge);
    assert_eq!(
        now["spec"]["disruption"],
        json!({"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "600s"})
    );
    assert!(!recorded_originals(&now).contains_key(floor::POLICY));
    let undo = revert("a", &now, &again.fields).unwrap();
    assert_eq!(apply_merge(&now, &undo.merge)["spec"], pool()["spec"]);
}

#[test]
fn a_dropped_field_another_stack_holds_stays_theirs() {
    let old = ttl_fields(PoolApi::V1beta1, 600);
    let a = patch("a", &pool(), &old);
    let mut live = apply_merge(&pool(), &a.merge);
    let b = patch("b", &live, &old);
    live = apply_merge(&live, &b.merge);
    let again = patch("a", &live, &ttl_fields(PoolApi::V1, 600));
    live = apply_merge(&live, &again.merge);
    assert_eq!(
        live["spec"]["disruption"]["consolidationPolicy"],
        json!("WhenEmpty"),
        "b still holds it"
    );
    for (stack, fields) in [("a", &again.fields), ("b", &b.fields)] {
        let undo = revert(stack, &live, fields).unwrap();
        live = apply_merge(&live, &undo.merge);
    }
    assert_eq!(live["spec"], pool()["spec"]);
}

#[test]
fn revert_refuses_a_field_changed_outside() {
    let fields = ttl_fields(PoolApi::V1, 600);
    let a = patch("a", &pool(), &fields);
    let mut live = apply_merge(&pool(), &a.merge);
    live["spec"]["disruption"]["consolidateAfter"] = json!("900s");
    let changed = revert("a", &live, &a.fields).unwrap_err();
    assert_eq!(changed[0].live, FieldValue::Value(json!("900s")));
    let forced = revert_forced("a", &live, &a.fields);
    assert_eq!(apply_merge(&live, &forced.merge)["spec"], pool()["spec"]);
}

#[test]
fn absent_fields_are_removed_on_revert() {
    let live = json!({"metadata": {"name": "default"}, "spec": {}});
    let fields = ttl_fields(PoolApi::V1alpha5, 600);
    let p = patch("a", &live, &fields);
    let after = apply_merge(&live, &p.merge);
    assert_eq!(after["spec"]["ttlSecondsAfterEmpty"], json!(600));
    let undo = revert("a", &after, &p.fields).unwrap();
    assert_eq!(apply_merge(&after, &undo.merge)["spec"], json!({}));
}
