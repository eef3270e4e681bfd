//! What is not, or no longer, this state's: objects without the stack's
//! label, of another stack or another state's lineage, adopted, imported;
//! and fields other field managers own.

use serde_json::json;

use super::builder::*;
use crate::observe::Unlabelled;
use crate::plan::{Action, Op, Refusal};

const SETTINGS: &str = "manifest.settings";
/// The ConfigMap with a key someone else may already have set.
const TWO_KEYS: &str = "[manifest.settings]\nobject = { apiVersion = \"v1\", kind = \"ConfigMap\", data = { mode = \"fast\", replicas = \"2\" } }\n\n";

/// The stack's object as someone else made it: same name, none of rayform's marks.
fn theirs(s: &Scenario, at: &str) -> serde_json::Value {
    let live = without(&s.stored(at), "/metadata/labels");
    without(&live, "/metadata/annotations")
}

fn relabelled(s: &Scenario, at: &str, stack: &str) -> serde_json::Value {
    with(
        &s.stored(at),
        "/metadata/labels/rayform.io~1stack",
        json!(stack),
    )
}

#[test]
fn an_existing_object_without_the_label_is_refused_unless_adopted() {
    let mut s = Scenario::new(CONFIGMAP);
    let live = theirs(&s, SETTINGS);
    s.sees(SETTINGS, Obj::live(live));
    let plan = s.plan();
    let c = plan.change(&address(SETTINGS)).expect("planned");
    assert_eq!(c.action(), Action::Update);
    assert_eq!(
        c.error(),
        Some(
            "ConfigMap `settings` already exists and was not created by rayform\n  \
             help: rayform will not take it over unless told to: `rayform plan STACK --adopt manifest.settings` shows what taking it changes"
        )
    );
    assert_eq!(plan.errors.len(), 1);
}

#[test]
fn an_adopted_object_is_taken_over_whole_by_force() {
    let mut s = Scenario::new(CONFIGMAP);
    let live = theirs(&s, SETTINGS);
    let after = merged(&live, &s.want(SETTINGS).masked_body());
    s.sees(SETTINGS, Obj::live(live).after(after));
    s.options.adopt.insert(address(SETTINGS));
    let c = s.change(SETTINGS);
    assert_eq!((c.action(), c.error()), (Action::Update, None));
    assert_eq!(c.reasons, ["adopting an object rayform did not create"]);
    let write = c.write().expect("a write");
    assert!(write.force, "adoption takes every field");
    let diff = write.diff.as_deref().expect("a diff");
    assert!(
        diff.lines().any(|l| l == "+    rayform.io/stack: llm"),
        "{diff}"
    );
}

#[test]
fn an_object_of_another_stack_is_refused_with_how_to_take_it() {
    let mut s = Scenario::new(CONFIGMAP);
    let live = relabelled(&s, SETTINGS, "other");
    s.sees(SETTINGS, Obj::live(live));
    let c = s.change(SETTINGS);
    assert_eq!(c.action(), Action::Update);
    assert_eq!(
        c.error(),
        Some(
            "ConfigMap `settings` belongs to rayform stack `other` (label rayform.io/stack=other), which declares it too\n  \
             help: change it through stack `other`, rename it in one of the stacks, or take it from stack `other` (which then no longer manages it): `rayform plan STACK --adopt manifest.settings` shows what that changes"
        )
    );
}

#[test]
fn an_object_of_another_lineage_of_this_stack_name_is_refused() {
    let mut s = Scenario::new(CONFIGMAP);
    let live = s.stored(SETTINGS);
    s.sees(SETTINGS, Obj::live(live).other_lineage("their-lineage"));
    let c = s.change(SETTINGS);
    assert_eq!(
        c.error(),
        Some(
            "ConfigMap `settings` was made by another rayform state of this stack name (lineage their-lineage; this state is lineage-of-this-state), so it is not this state's to change\n  \
             help: run with the state that made it, or take it over: `rayform plan STACK --adopt manifest.settings` shows what that changes"
        )
    );
}

#[test]
fn an_object_whose_label_was_removed_but_has_the_recorded_uid_stays_ours() {
    let mut s = Scenario::new(CONFIGMAP);
    let stored = s.stored(SETTINGS);
    s.record(SETTINGS, &stored);
    let live = without(&stored, "/metadata/labels/rayform.io~1stack");
    s.sees(
        SETTINGS,
        Obj::live(live)
            .unlabelled(Unlabelled::SameUid)
            .after(stored),
    );
    let c = s.change(SETTINGS);
    assert_eq!((c.action(), c.error()), (Action::Update, None));
    assert_eq!(
        c.reasons,
        [
            "its rayform.io/stack label was removed; the uid is the one rayform created",
            "changed outside rayform",
        ]
    );
}

#[test]
fn an_imported_object_is_updated_to_carry_rayforms_labels() {
    let mut s = Scenario::new(CONFIGMAP);
    let live = theirs(&s, SETTINGS);
    s.record(SETTINGS, &live);
    s.recorded(SETTINGS).desired_fingerprint = String::new();
    let after = merged(&live, &s.want(SETTINGS).masked_body());
    s.sees(
        SETTINGS,
        Obj::live(live).unlabelled(Unlabelled::SameUid).after(after),
    );
    let c = s.change(SETTINGS);
    assert_eq!(c.action(), Action::Update);
    assert_eq!(c.reasons, ["imported: rayform adds its labels"]);
    assert!(!c.write().expect("a write").force, "it is ours already");
}

#[test]
fn a_removed_object_that_lost_its_label_is_not_forgotten_when_its_uid_is_unknown() {
    let mut s = Scenario::new(SECRET);
    s.applied("secret.hf-token");
    let live = s.record_removed(CONFIGMAP, SETTINGS);
    s.recorded(SETTINGS).uid = None;
    let live = without(&live, "/metadata/labels/rayform.io~1stack");
    s.sees(SETTINGS, Obj::live(live).unlabelled(Unlabelled::Unknown));
    let c = s.change(SETTINGS);
    assert_eq!(c.action(), Action::Delete);
    assert_eq!(
        c.error(),
        Some(
            "ConfigMap `settings` is still there but lost its rayform.io/stack label, and this state (older than recorded uids) cannot prove it is the one rayform created; it is not forgotten while it runs\n  \
             help: put the rayform.io/stack label back on it and run again, or delete it yourself"
        )
    );
}

#[test]
fn a_removed_object_that_lost_its_label_but_has_the_recorded_uid_is_deleted() {
    let mut s = Scenario::new(SECRET);
    s.applied("secret.hf-token");
    let live = s.record_removed(CONFIGMAP, SETTINGS);
    let live = without(&live, "/metadata/labels/rayform.io~1stack");
    s.sees(SETTINGS, Obj::live(live).unlabelled(Unlabelled::SameUid));
    let c = s.change(SETTINGS);
    assert!(matches!(c.op, Op::Delete(_)), "{:?}", c.op);
}

#[test]
fn a_removed_object_replaced_by_someone_elses_is_forgotten_and_left_alone() {
    let mut s = Scenario::new(SECRET);
    s.applied("secret.hf-token");
    let live = s.record_removed(CONFIGMAP, SETTINGS);
    let live = with(
        &without(&live, "/metadata/labels/rayform.io~1stack"),
        "/metadata/uid",
        json!("uid-recreated"),
    );
    s.sees(SETTINGS, Obj::live(live).unlabelled(Unlabelled::OtherUid));
    let c = s.change(SETTINGS);
    assert_eq!(
        (c.action(), c.reasons.as_slice()),
        (
            Action::Forget,
            ["not created by rayform; left alone".to_string()].as_slice()
        )
    );
}

#[test]
fn a_removed_object_now_of_another_stack_is_forgotten_and_left_alone() {
    let mut s = Scenario::new(SECRET);
    s.applied("secret.hf-token");
    let live = s.record_removed(CONFIGMAP, SETTINGS);
    let live = with(&live, "/metadata/labels/rayform.io~1stack", json!("other"));
    s.sees(SETTINGS, Obj::live(live));
    let c = s.change(SETTINGS);
    assert_eq!(c.action(), Action::Forget);
    assert_eq!(
        c.reasons,
        ["it belongs to rayform stack `other` now; left alone"]
    );
}

#[test]
fn a_removed_object_of_another_lineage_is_forgotten_and_left_alone() {
    let mut s = Scenario::new(SECRET);
    s.applied("secret.hf-token");
    let live = s.record_removed(CONFIGMAP, SETTINGS);
    s.sees(SETTINGS, Obj::live(live).other_lineage("their-lineage"));
    let c = s.change(SETTINGS);
    assert_eq!(c.action(), Action::Forget);
    assert_eq!(
        c.reasons,
        ["made by another state of this stack name (lineage their-lineage); left alone"]
    );
}

/// The stack adds `replicas`, which kubectl set on the live object before.
fn taken_by_kubectl(replicas: &str) -> Scenario {
    let mut s = Scenario::new(TWO_KEYS);
    let old = without(&s.stored(SETTINGS), "/data/replicas");
    s.record_older(SETTINGS, &old);
    let live = with(&old, "/data/replicas", json!(replicas));
    let after = merged(&live, &s.want(SETTINGS).masked_body());
    let conflict = [(".data.replicas", "conflict with \"kubectl-edit\" using v1")];
    s.sees(
        SETTINGS,
        Obj::live(live).owned().after(after).conflicts(&conflict),
    );
    s
}

#[test]
fn fields_another_manager_owns_are_refused_without_force_conflicts() {
    let mut s = taken_by_kubectl("3");
    let plan = s.plan();
    let c = plan.change(&address(SETTINGS)).expect("planned");
    let Op::Refused(Refusal {
        action,
        error,
        diff,
        ..
    }) = &c.op
    else {
        panic!("refused: {:?}", c.op)
    };
    assert_eq!(*action, Action::Update);
    assert_eq!(
        error,
        "applying would take fields owned by another field manager: .data.replicas (conflict with \"kubectl-edit\" using v1)\n  \
         help: pass --force-conflicts to take them, or drop them from the stack"
    );
    let diff = diff.as_deref().expect("the diff is still shown");
    assert!(
        diff.lines()
            .any(|l| l == "-  replicas: '3'" || l == "-  replicas: \"3\""),
        "{diff}"
    );
    assert_eq!(plan.errors.len(), 1);
}

#[test]
fn fields_another_manager_owns_are_taken_with_force_conflicts() {
    let mut s = taken_by_kubectl("3");
    s.options.force_conflicts = true;
    let c = s.change(SETTINGS);
    assert_eq!((c.action(), c.error()), (Action::Update, None));
    assert!(c.write().expect("a write").force);
}

#[test]
fn conflict_paths_with_dotted_keys_are_found() {
    use crate::plan::object::field_in;
    let applied = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "rayform"}},
                         "data": {".dockerconfigjson": "x"}, "spec": {"a": [1]}});
    assert!(field_in(
        &applied,
        ".metadata.labels.app.kubernetes.io/managed-by"
    ));
    assert!(field_in(&applied, ".data..dockerconfigjson"));
    assert!(field_in(&applied, ".spec.a[0]"));
    assert!(!field_in(&applied, ".spec.b"));
    assert!(!field_in(&applied, ".metadata.labels.other"));
}

#[test]
fn adopting_takes_fields_other_managers_own_without_force_conflicts() {
    let mut s = Scenario::new(CONFIGMAP);
    let live = with(&theirs(&s, SETTINGS), "/data/mode", json!("slow"));
    let after = merged(&live, &s.want(SETTINGS).masked_body());
    let conflict = [(".data.mode", "conflict with \"helm\" using v1")];
    s.sees(SETTINGS, Obj::live(live).after(after).conflicts(&conflict));
    s.options.adopt.insert(address(SETTINGS));
    let c = s.change(SETTINGS);
    assert_eq!((c.action(), c.error()), (Action::Update, None));
    assert!(c.write().expect("a write").force);
}
