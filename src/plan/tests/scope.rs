//! What a plan covers and in which order: `--target` (with what a target
//! needs, or for a destroy what needs it), `--refresh-only`, a destroy of a
//! stack never applied, dependencies between changes, waits, cross-resource
//! warnings, and a saved plan read back.

use serde_json::json;

use super::builder::*;
use crate::plan::{Action, Keep, Op, Plan, Summary};

const SETTINGS: &str = "manifest.settings";

fn all_new(resources: &str) -> Scenario {
    let mut s = Scenario::new(resources);
    let objects: Vec<String> = s
        .desired
        .iter()
        .filter(|(_, d)| matches!(d, crate::desired::Desired::Object(_)))
        .map(|(a, _)| a.to_string())
        .collect();
    for at in objects {
        s.absent(&at);
    }
    s
}

#[test]
fn a_target_takes_what_it_needs_and_nothing_else_and_warns() {
    let mut s = all_new(&format!("{SECRET}{CONFIGMAP}{RAYSERVICE}"));
    s.options.targets.insert(address("rayservice.llm"));
    let plan = s.plan();
    assert_eq!(
        actions(&plan),
        [
            ("secret.hf-token".to_string(), Action::Create),
            ("rayservice.llm".to_string(), Action::Create),
        ]
    );
    assert_eq!(
        plan.warnings,
        [
            "resource targeting is in effect (rayservice.llm): the plan covers only those and what they depend on, so it may not show every change the stack needs; use it for exceptional cases, then run a plan without --target"
        ]
    );
}

#[test]
fn a_destroy_target_takes_what_depends_on_it() {
    let mut s = Scenario::new(&format!("{SECRET}{CONFIGMAP}{RAYSERVICE}"));
    for at in ["secret.hf-token", SETTINGS, "rayservice.llm"] {
        s.applied(at);
    }
    s.options.destroy = true;
    s.options.targets.insert(address("secret.hf-token"));
    let plan = s.plan();
    assert_eq!(
        actions(&plan),
        [
            ("rayservice.llm".to_string(), Action::Delete),
            ("secret.hf-token".to_string(), Action::Delete),
        ]
    );
    let secret = plan.change(&address("secret.hf-token")).expect("planned");
    assert_eq!(secret.depends_on, [address("rayservice.llm")]);
}

#[test]
fn refresh_only_records_a_change_made_outside_rayform_as_it_is() {
    let mut s = Scenario::new(CONFIGMAP);
    let stored = s.stored(SETTINGS);
    s.record(SETTINGS, &stored);
    s.sees(
        SETTINGS,
        Obj::live(with(&stored, "/data/mode", json!("slow"))).owned(),
    );
    s.options.refresh_only = true;
    let plan = s.plan();
    let c = plan.change(&address(SETTINGS)).expect("planned");
    let Op::NoOp(Keep::Record {
        payload,
        outside_diff,
    }) = &c.op
    else {
        panic!("a record: {:?}", c.op)
    };
    assert_eq!(
        payload.body["data"],
        json!({"mode": "fast"}),
        "what rayform wrote"
    );
    assert_eq!(
        payload.desired_fingerprint, "",
        "compared with the stack again next time"
    );
    assert_eq!(
        c.reasons,
        ["changed outside rayform: recorded as it is now"]
    );
    let outside = outside_diff.as_deref().expect("what changed");
    assert!(outside.lines().any(|l| l == "+  mode: slow"), "{outside}");
    assert_eq!((plan.has_changes(), plan.warnings.len()), (false, 0));
}

#[test]
fn refresh_only_forgets_what_was_deleted_or_taken_and_never_writes() {
    let mut s = Scenario::new(&format!("{SECRET}{CONFIGMAP}"));
    let stored = s.stored(SETTINGS);
    s.record(SETTINGS, &stored);
    let secret = s.stored("secret.hf-token");
    s.record("secret.hf-token", &secret);
    s.sees("secret.hf-token", Obj::absent());
    let taken = with(
        &stored,
        "/metadata/labels/rayform.io~1stack",
        json!("other"),
    );
    s.sees(SETTINGS, Obj::live(taken));
    s.options.refresh_only = true;
    let plan = s.plan();
    let reasons: Vec<(String, Action, Vec<String>)> = plan
        .changes
        .iter()
        .map(|c| (c.address.to_string(), c.action(), c.reasons.clone()))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "secret.hf-token".to_string(),
                Action::Forget,
                vec!["deleted outside rayform".to_string()]
            ),
            (
                SETTINGS.to_string(),
                Action::Forget,
                vec!["no longer this stack's object (another stack or owner has it)".to_string()]
            ),
        ]
    );
    assert!(!plan.has_changes());
}

#[test]
fn refresh_only_leaves_out_what_the_state_does_not_track() {
    let mut s = all_new(&format!("{SECRET}{CONFIGMAP}{RAYSERVICE}{WAIT}"));
    s.applied(SETTINGS);
    s.options.refresh_only = true;
    let plan = s.plan();
    assert_eq!(actions(&plan), [(SETTINGS.to_string(), Action::NoOp)]);
}

#[test]
fn refresh_only_forgets_a_karpenter_object_that_is_gone() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched("nodepool.default", nodepool("30s"));
    let gone = "NodePool `default` does not exist; the cluster has: none";
    s.sees_patch("nodepool.default", patch_problem(&live, gone, true));
    s.options.refresh_only = true;
    let c = s.change("nodepool.default");
    assert_eq!(
        (c.action(), c.reasons.as_slice()),
        (
            Action::Forget,
            ["deleted outside rayform".to_string()].as_slice()
        )
    );
}

#[test]
fn destroying_a_stack_never_applied_lists_nothing() {
    let mut s = Scenario::new(&format!("{SECRET}{CONFIGMAP}{RAYSERVICE}{WAIT}"));
    s.options.destroy = true;
    for at in ["secret.hf-token", SETTINGS, "rayservice.llm"] {
        s.sees(at, Obj::absent());
    }
    let plan = s.plan();
    assert!(plan.changes.is_empty(), "{:?}", actions(&plan));
    assert_eq!(
        (plan.summary(), plan.needs_approval()),
        (Summary::default(), false)
    );
}

#[test]
fn an_apply_orders_each_change_after_what_it_needs() {
    let mut s = all_new(&format!("{NODEPOOL}{SECRET}{RAYSERVICE}{WAIT}"));
    s.observe_intent("nodepool.default", nodepool("30s"));
    let plan = s.plan();
    let order: Vec<(String, Vec<String>)> = plan
        .changes
        .iter()
        .map(|c| {
            let deps = c.depends_on.iter().map(ToString::to_string).collect();
            (c.address.to_string(), deps)
        })
        .collect();
    let strings = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<String>>();
    assert_eq!(
        order,
        [
            ("nodepool.default".to_string(), vec![]),
            ("secret.hf-token".to_string(), vec![]),
            (
                "rayservice.llm".to_string(),
                strings(&["nodepool.default", "secret.hf-token"])
            ),
            ("wait.chat".to_string(), strings(&["rayservice.llm"])),
        ]
    );
    assert_eq!(plan.check_saved(), Ok(()));
}

#[test]
fn the_wait_is_a_step_of_the_plan_naming_its_rayservice() {
    let mut s = all_new(&format!("{SECRET}{RAYSERVICE}{WAIT}"));
    let c = s.change("wait.chat");
    let Op::Wait(target) = &c.op else {
        panic!("a wait: {:?}", c.op)
    };
    assert_eq!(
        (target.wait.rayservice.as_str(), target.wait.path.as_str()),
        ("llm", "/v1/chat/completions")
    );
    assert_eq!(
        (c.api_version.as_str(), c.kind.as_str(), c.name.as_str()),
        ("", "", "llm")
    );
    assert!(!c.action().is_change());
}

#[test]
fn a_destroy_has_no_wait() {
    let mut s = Scenario::new(&format!("{SECRET}{RAYSERVICE}{WAIT}"));
    s.applied("secret.hf-token");
    s.applied("rayservice.llm");
    s.options.destroy = true;
    for at in ["secret.hf-token", "rayservice.llm"] {
        let stored = s.stored(at);
        s.sees(at, Obj::live(stored).owned());
    }
    let plan = s.plan();
    assert_eq!(
        actions(&plan),
        [
            ("rayservice.llm".to_string(), Action::Delete),
            ("secret.hf-token".to_string(), Action::Delete),
        ]
    );
}

#[test]
fn a_rayservice_no_operator_will_act_on_is_warned_about() {
    let mut s = all_new(&format!("{SECRET}{RAYSERVICE}"));
    let missing = "no KubeRay operator runs in the cluster (no Deployment with the label app.kubernetes.io/name=kuberay-operator)";
    s.world.kuberay_operator_missing = Some(missing.into());
    let plan = s.plan();
    assert_eq!(
        plan.warnings,
        [format!(
            "rayservice.llm: no KubeRay operator will act on it, so it would never get a RayCluster and apply would wait its whole timeout: {missing}"
        )]
    );
}

#[test]
fn a_saved_plan_reads_back_as_it_was_made() {
    let mut s = all_new(&format!("{NODEPOOL}{SECRET}{CONFIGMAP}{RAYSERVICE}{WAIT}"));
    s.observe_intent("nodepool.default", nodepool("30s"));
    let plan = s.plan();
    let saved = serde_json::to_value(&plan).expect("saved");
    let read: Plan = serde_json::from_value(saved.clone()).expect("read back");
    assert_eq!(read.check_saved(), Ok(()));
    assert_eq!(serde_json::to_value(&read).expect("saved again"), saved);
    assert_eq!(read.summary(), plan.summary());
}

#[test]
fn a_saved_plan_whose_changes_do_not_hold_together_is_refused() {
    let mut s = all_new(&format!("{SECRET}{RAYSERVICE}"));
    let mut plan = s.plan();
    plan.changes
        .retain(|c| c.address != address("secret.hf-token"));
    assert_eq!(
        plan.check_saved(),
        Err(
            "rayservice.llm: depends on secret.hf-token, which is not another change of the plan"
                .to_string()
        )
    );
}
