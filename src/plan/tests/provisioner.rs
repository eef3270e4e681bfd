//! Karpenter v0.32 half-way through the Provisioner → NodePool migration:
//! a Provisioner and a NodePool of one name, both launching nodes. The
//! `[nodepool]` intent is patched into both, ordered, saved, reverted and
//! targeted as one, and both launch the GPU workers; a Provisioner no
//! longer beside its NodePool is let go.

use serde_json::{Value, json};

use super::builder::*;
use crate::karpenter::PoolApi;
use crate::plan::{Action, Op, Plan, Summary};

const POOL: &str = "nodepool.default";
const PROVISIONER: &str = "provisioner.default";

/// A v1beta1 NodePool `default` that removes empty nodes after `after`.
fn nodepool_v1beta1(after: &str) -> Value {
    json!({
        "apiVersion": "karpenter.sh/v1beta1", "kind": "NodePool",
        "metadata": {"name": "default", "resourceVersion": "200", "generation": 1},
        "spec": {
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": after},
            "template": {"spec": {"nodeClassRef": {"name": "default"}, "requirements": []}},
        },
    })
}

/// The v1alpha5 Provisioner `default` of the same cluster, empty nodes kept `ttl` seconds.
fn provisioner(ttl: u64) -> Value {
    json!({
        "apiVersion": "karpenter.sh/v1alpha5", "kind": "Provisioner",
        "metadata": {"name": "default", "resourceVersion": "210", "generation": 1},
        "spec": {"ttlSecondsAfterEmpty": ttl, "providerRef": {"name": "default"}},
    })
}

/// A stack with a pool intent, on a cluster serving both generations (v0.32).
fn on_v0_32(resources: &str) -> Scenario {
    let mut s = Scenario::new(resources);
    s.world.karpenter.pools = vec![PoolApi::V1beta1, PoolApi::V1alpha5];
    s
}

fn patched_field(plan: &Plan, at: &str) -> Vec<(String, Option<Value>)> {
    match &plan.change(&address(at)).expect("planned").op {
        Op::Patch(edit) | Op::Revert(edit) => edit.patch.expect.clone().into_iter().collect(),
        other => panic!("{at} writes: {other:?}"),
    }
}

#[test]
fn the_provisioner_beside_a_nodepool_is_patched_with_it_before_the_workload() {
    let mut s = on_v0_32(&format!("{NODEPOOL}{SECRET}{RAYSERVICE}"));
    s.observe_intent(POOL, nodepool_v1beta1("30s"));
    s.observe_intent(PROVISIONER, provisioner(30));
    s.applied("secret.hf-token");
    s.absent("rayservice.llm");
    let plan = s.plan();
    assert_eq!(plan.errors, Vec::<String>::new());
    assert_eq!(
        actions(&plan),
        [
            (POOL.to_string(), Action::Patch),
            (PROVISIONER.to_string(), Action::Patch),
            ("secret.hf-token".to_string(), Action::NoOp),
            ("rayservice.llm".to_string(), Action::Create),
        ]
    );
    assert_eq!(
        patched_field(&plan, PROVISIONER),
        [("/spec/ttlSecondsAfterEmpty".to_string(), Some(json!(600)))]
    );
    let twin = plan.change(&address(PROVISIONER)).expect("planned");
    assert_eq!(
        (twin.kind.as_str(), twin.reasons[0].as_str()),
        (
            "Provisioner",
            "beside the NodePool `default`: Karpenter v0.32 launches from both, so nodepool.default holds for both"
        )
    );
    let rayservice = plan.change(&address("rayservice.llm")).expect("planned");
    let mut after: Vec<String> = rayservice
        .depends_on
        .iter()
        .map(ToString::to_string)
        .collect();
    after.sort();
    assert_eq!(after, [POOL, PROVISIONER, "secret.hf-token"]);
    assert_eq!(
        plan.summary(),
        Summary {
            add: 1,
            patch: 2,
            ..Summary::default()
        }
    );
    let saved = serde_json::to_value(&plan).expect("saved");
    let read: Plan = serde_json::from_value(saved.clone()).expect("read back");
    assert_eq!(read.check_saved(), Ok(()));
    assert_eq!(serde_json::to_value(&read).expect("saved again"), saved);
}

#[test]
fn the_provisioner_recorded_beside_a_nodepool_is_a_no_op_once_patched() {
    let mut s = on_v0_32(NODEPOOL);
    let pool = s.patched(POOL, nodepool_v1beta1("30s"));
    let twin = s.patched(PROVISIONER, provisioner(30));
    s.observe_intent(POOL, pool);
    s.observe_intent(PROVISIONER, twin);
    let plan = s.plan();
    assert_eq!(
        actions(&plan),
        [
            (POOL.to_string(), Action::NoOp),
            (PROVISIONER.to_string(), Action::NoOp)
        ]
    );
    assert!(!plan.needs_approval());
}

#[test]
fn destroy_reverts_the_provisioner_beside_a_nodepool_after_every_delete() {
    let mut s = on_v0_32(&format!("{NODEPOOL}{SECRET}"));
    let pool = s.patched(POOL, nodepool_v1beta1("30s"));
    let twin = s.patched(PROVISIONER, provisioner(30));
    s.applied("secret.hf-token");
    s.options.destroy = true;
    let stored = s.stored("secret.hf-token");
    s.sees("secret.hf-token", Obj::live(stored).owned());
    s.observe_revert(POOL, pool, false);
    s.observe_revert(PROVISIONER, twin, false);
    let plan = s.plan();
    assert_eq!(
        patched_field(&plan, PROVISIONER),
        [("/spec/ttlSecondsAfterEmpty".to_string(), Some(json!(30)))]
    );
    let twin = plan.change(&address(PROVISIONER)).expect("planned");
    assert_eq!(
        (twin.action(), twin.depends_on.clone()),
        (Action::Revert, vec![address("secret.hf-token")])
    );
    assert_eq!(
        plan.summary(),
        Summary {
            destroy: 1,
            revert: 2,
            ..Summary::default()
        }
    );
}

#[test]
fn a_provisioner_no_longer_beside_its_nodepool_is_dropped_from_the_state() {
    let mut s = on_v0_32(NODEPOOL);
    let pool = s.patched(POOL, nodepool_v1beta1("30s"));
    s.patched(PROVISIONER, provisioner(30));
    s.observe_intent(POOL, pool);
    // The migration finished: the Provisioner was deleted.
    let gone = "Provisioner `default` does not exist; the cluster has: none";
    s.sees_patch(PROVISIONER, patch_problem(&provisioner(30), gone, true));
    let plan = s.plan();
    assert_eq!(
        actions(&plan),
        [
            (POOL.to_string(), Action::NoOp),
            (PROVISIONER.to_string(), Action::Forget)
        ]
    );
    assert_eq!(plan.errors, Vec::<String>::new());
    assert_eq!(
        plan.warnings,
        [format!(
            "{PROVISIONER}: {gone}; nothing to revert, so it is dropped from the state"
        )]
    );
}

#[test]
fn a_target_on_the_nodepool_covers_the_provisioner_beside_it() {
    let mut s = on_v0_32(&format!("{NODEPOOL}{NODECLASS}"));
    s.observe_intent(POOL, nodepool_v1beta1("30s"));
    s.observe_intent(PROVISIONER, provisioner(30));
    s.observe_intent("nodeclass.default", nodeclass("20Gi"));
    s.options.targets = [address(POOL)].into();
    assert_eq!(
        actions(&s.plan()),
        [
            (POOL.to_string(), Action::Patch),
            (PROVISIONER.to_string(), Action::Patch)
        ]
    );
    s.options.targets = [address(PROVISIONER)].into();
    assert_eq!(
        actions(&s.plan()),
        [(PROVISIONER.to_string(), Action::Patch)]
    );
}

#[test]
fn gpu_workers_the_provisioner_beside_a_nodepool_can_launch_are_not_warned_about() {
    let cpu_only = with(
        &nodepool_v1beta1("30s"),
        "/spec/template/spec/requirements",
        json!([{"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m"]}]),
    );
    let plan_with = |beside: Option<Value>| {
        let mut s = on_v0_32(&format!("{NODEPOOL}{SECRET}{RAYSERVICE}"));
        s.observe_intent(POOL, cpu_only.clone());
        if let Some(provisioner) = beside {
            s.observe_intent(PROVISIONER, provisioner);
        }
        s.applied("secret.hf-token");
        s.absent("rayservice.llm");
        s.plan().warnings.join("\n")
    };
    let cannot = "no pool of the stack can launch worker group `gpu`";
    assert!(plan_with(None).contains(cannot), "the NodePool alone");
    let both = plan_with(Some(provisioner(30)));
    assert!(!both.contains(cannot), "{both}");
}
