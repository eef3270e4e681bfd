//! Karpenter objects rayform does not own: intents as floors (patched,
//! already satisfied, kept), reverts on destroy, a hold released to another
//! stack, fields changed outside rayform, objects or APIs gone, Auto Mode.

use serde_json::json;

use super::builder::*;
use crate::karpenter::{ClassApi, PoolApi, automode, floor};
use crate::plan::{Action, Keep, Op, Summary};

const POOL: &str = "nodepool.default";
const CLASS: &str = "nodeclass.default";

/// What the 600s floor does to a v1 pool that consolidates (from `floor`).
const CONSOLIDATION_WARNING: &str = "nodepool.default: consolidateAfter 600s (was 30s) also makes Karpenter wait 10m after a node's last pod change before consolidating it as underutilised (policy WhenEmptyOrUnderutilized), until the stack is destroyed";

#[test]
fn a_pool_that_removes_empty_nodes_sooner_than_the_floor_is_patched() {
    let mut s = Scenario::new(NODEPOOL);
    s.observe_intent(POOL, nodepool("30s"));
    let plan = s.plan();
    let c = plan.change(&address(POOL)).expect("planned");
    let Op::Patch(edit) = &c.op else {
        panic!("a patch: {:?}", c.op)
    };
    assert_eq!(
        edit.patch.expect,
        [(floor::AFTER.to_string(), Some(json!("600s")))].into()
    );
    assert_eq!(edit.resource_version, "200");
    assert_eq!(
        edit.patch.merge["metadata"]["resourceVersion"],
        json!("200"),
        "the patch holds only over the object the plan saw"
    );
    assert_eq!(
        (c.api_version.as_str(), c.kind.as_str(), c.name.as_str()),
        ("karpenter.sh/v1", "NodePool", "default")
    );
    assert_eq!(
        edit.diff.as_deref(),
        Some(
            "--- live\n+++ planned\n@@ -4,7 +4,7 @@\n   name: default\n spec:\n   disruption:\n-    consolidateAfter: 30s\n+    consolidateAfter: 600s\n     consolidationPolicy: WhenEmptyOrUnderutilized\n   template:\n     spec:\n"
        )
    );
    assert_eq!(plan.warnings, [CONSOLIDATION_WARNING]);
    assert_eq!(
        plan.summary(),
        Summary {
            patch: 1,
            ..Summary::default()
        }
    );
    assert_eq!(
        plan.karpenter.as_deref(),
        Some("karpenter.sh/v1 NodePool + karpenter.k8s.aws/v1 EC2NodeClass")
    );
}

#[test]
fn a_pool_that_keeps_empty_nodes_longer_is_left_alone_and_says_why() {
    let mut s = Scenario::new(NODEPOOL);
    s.observe_intent(POOL, nodepool("3600s"));
    let plan = s.plan();
    let c = plan.change(&address(POOL)).expect("planned");
    assert!(matches!(c.op, Op::NoOp(Keep::RecordPatch(_))), "{:?}", c.op);
    assert_eq!(
        c.reasons,
        [
            "kept (longer than the stack asks), already satisfied: consolidateAfter 3600s is at least 10m, and Karpenter v1 waits that long before removing an empty node under any consolidationPolicy"
        ]
    );
    assert_eq!((plan.has_changes(), plan.warnings.len()), (false, 0));
}

#[test]
fn a_pool_patched_by_the_last_apply_is_a_no_op() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched(POOL, nodepool("30s"));
    s.observe_intent(POOL, live);
    let plan = s.plan();
    let c = plan.change(&address(POOL)).expect("planned");
    assert!(matches!(c.op, Op::NoOp(Keep::Current)), "{:?}", c.op);
    assert_eq!((c.reasons.len(), plan.warnings.len()), (0, 0));
}

#[test]
fn a_pool_patched_whose_state_write_was_lost_is_recorded_again() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched(POOL, nodepool("30s"));
    s.state.resources.clear();
    s.observe_intent(POOL, live);
    let c = s.change(POOL);
    let Op::NoOp(Keep::RecordPatch(p)) = &c.op else {
        panic!("a record: {:?}", c.op)
    };
    assert_eq!(p.fields[floor::AFTER].written, json!("600s"));
    assert!(c.records_only());
}

#[test]
fn a_patched_field_lowered_outside_rayform_is_patched_back_and_said_so() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched(POOL, nodepool("30s"));
    s.observe_intent(POOL, with(&live, floor::AFTER, json!("120s")));
    let plan = s.plan();
    let c = plan.change(&address(POOL)).expect("planned");
    assert_eq!(c.action(), Action::Patch);
    assert_eq!(c.reasons, ["changed outside rayform"]);
    assert_eq!(plan.warnings, [CONSOLIDATION_WARNING]);
}

#[test]
fn a_patched_field_raised_outside_rayform_above_the_floor_is_kept() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched(POOL, nodepool("30s"));
    s.observe_intent(POOL, with(&live, floor::AFTER, json!("3600s")));
    let plan = s.plan();
    let c = plan.change(&address(POOL)).expect("planned");
    assert!(matches!(c.op, Op::NoOp(Keep::Current)), "{:?}", c.op);
    assert_eq!(
        c.reasons,
        [
            "kept (longer than the stack asks), set since the apply: consolidateAfter 3600s is at least 10m, and Karpenter v1 waits that long before removing an empty node under any consolidationPolicy"
        ]
    );
    assert_eq!(plan.warnings.len(), 0);
}

#[test]
fn destroy_reverts_a_patched_pool_to_its_recorded_original() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched(POOL, nodepool("30s"));
    s.options.destroy = true;
    s.observe_revert(POOL, live, false);
    let plan = s.plan();
    let c = plan.change(&address(POOL)).expect("planned");
    let Op::Revert(edit) = &c.op else {
        panic!("a revert: {:?}", c.op)
    };
    assert_eq!(
        edit.patch.expect,
        [(floor::AFTER.to_string(), Some(json!("30s")))].into()
    );
    assert_eq!(c.released_to(), None);
    assert_eq!(
        plan.summary(),
        Summary {
            revert: 1,
            ..Summary::default()
        }
    );
}

#[test]
fn destroy_of_a_pool_another_stack_still_holds_only_releases_it() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched(POOL, nodepool("30s"));
    let shared = held_by(&live, "other", json!({ floor::AFTER: "600s" }));
    s.options.destroy = true;
    s.observe_revert(POOL, shared, false);
    let plan = s.plan();
    let c = plan.change(&address(POOL)).expect("planned");
    assert_eq!(c.action(), Action::Revert);
    assert_eq!(c.released_to().as_deref(), Some("`other`"));
    let Op::Revert(edit) = &c.op else {
        panic!("a revert: {:?}", c.op)
    };
    assert_eq!(
        edit.patch.expect,
        [(floor::AFTER.to_string(), Some(json!("600s")))].into(),
        "the other stack's value stays"
    );
    assert_eq!(
        plan.summary(),
        Summary {
            release: 1,
            ..Summary::default()
        }
    );
}

#[test]
fn destroy_refuses_to_revert_a_field_changed_since_rayform_wrote_it() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched(POOL, nodepool("30s"));
    s.options.destroy = true;
    s.observe_revert(POOL, with(&live, floor::AFTER, json!("120s")), false);
    let plan = s.plan();
    let c = plan.change(&address(POOL)).expect("planned");
    assert_eq!(c.action(), Action::Revert);
    assert_eq!(
        c.error(),
        Some(
            "spec.disruption.consolidateAfter changed since rayform wrote it: recorded original \"30s\", written \"600s\", live \"120s\"\n  \
             help: revert it by hand, or pass --force to restore the recorded original anyway"
        )
    );
    assert_eq!(plan.errors.len(), 1);
}

#[test]
fn destroy_with_force_restores_the_original_over_a_field_changed_outside() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched(POOL, nodepool("30s"));
    s.options.destroy = true;
    s.observe_revert(POOL, with(&live, floor::AFTER, json!("120s")), true);
    let c = s.change(POOL);
    let Op::Revert(edit) = &c.op else {
        panic!("a revert: {:?}", c.op)
    };
    assert_eq!(
        edit.patch.expect,
        [(floor::AFTER.to_string(), Some(json!("30s")))].into()
    );
}

#[test]
fn destroy_forgets_a_pool_that_is_gone_and_warns() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched(POOL, nodepool("30s"));
    s.options.destroy = true;
    let gone = "NodePool `default` does not exist; the cluster has: none";
    s.sees_patch(POOL, patch_problem(&live, gone, true));
    let plan = s.plan();
    assert_eq!(actions(&plan), [(POOL.to_string(), Action::Forget)]);
    assert_eq!(
        plan.warnings,
        [
            "nodepool.default: NodePool `default` does not exist; the cluster has: none; nothing to revert, so it is dropped from the state"
        ]
    );
    assert_eq!(plan.errors.len(), 0);
}

#[test]
fn a_pool_that_does_not_exist_refuses_the_patch() {
    let mut s = Scenario::new(NODEPOOL);
    let gone = "NodePool `default` does not exist; the cluster has: gpu, general";
    s.sees_patch(POOL, patch_problem(&nodepool("30s"), gone, true));
    let plan = s.plan();
    let c = plan.change(&address(POOL)).expect("planned");
    assert_eq!((c.action(), c.error()), (Action::Patch, Some(gone)));
    assert_eq!(plan.errors, [format!("{POOL}: {gone}")]);
}

#[test]
fn an_auto_mode_built_in_pool_is_refused_and_the_cluster_named_auto_mode() {
    let mut s = Scenario::new(NODEPOOL);
    s.world.karpenter.auto_mode = true;
    let why = automode::refusal(&automode::built_in_pool_why("default"));
    s.sees_patch(POOL, patch_problem(&nodepool("30s"), &why, false));
    let plan = s.plan();
    assert_eq!(
        plan.karpenter.as_deref(),
        Some(
            "karpenter.sh/v1 NodePool + karpenter.k8s.aws/v1 EC2NodeClass (EKS Auto Mode: eks.amazonaws.com/v1 NodeClass, built-in pools)"
        )
    );
    let c = plan.change(&address(POOL)).expect("planned");
    assert_eq!((c.action(), c.error()), (Action::Patch, Some(why.as_str())));
}

#[test]
fn a_class_with_a_smaller_disk_is_patched_and_its_nodes_drift() {
    let mut s = Scenario::new(NODECLASS);
    s.observe_intent(CLASS, nodeclass("100Gi"));
    let plan = s.plan();
    let c = plan.change(&address(CLASS)).expect("planned");
    let Op::Patch(edit) = &c.op else {
        panic!("a patch: {:?}", c.op)
    };
    assert_eq!(
        edit.patch.expect[floor::MAPPINGS],
        Some(
            json!([{"deviceName": "/dev/xvda", "ebs": {"volumeSize": "200Gi", "volumeType": "gp3"}}])
        )
    );
    assert_eq!(
        plan.warnings,
        [
            "nodeclass.default: patching blockDeviceMappings of EC2NodeClass `default` makes Karpenter treat the nodes launched from it as drifted and replace them (as disruption budgets allow)"
        ]
    );
}

#[test]
fn on_karpenter_v0_32_and_older_a_class_patch_reaches_new_nodes_only() {
    let mut s = Scenario::new(NODECLASS);
    s.world.karpenter.pools = vec![PoolApi::V1alpha5];
    s.world.karpenter.classes = vec![ClassApi::V1alpha1];
    let template = json!({
        "apiVersion": "karpenter.k8s.aws/v1alpha1", "kind": "AWSNodeTemplate",
        "metadata": {"name": "default", "resourceVersion": "300"},
        "spec": {"amiFamily": "AL2",
                 "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"volumeSize": "100Gi"}}]},
    });
    s.observe_intent(CLASS, template);
    let plan = s.plan();
    assert_eq!(s.change(CLASS).action(), Action::Patch, "{:?}", plan.errors);
    assert_eq!(
        plan.warnings,
        [
            "nodeclass.default: patching blockDeviceMappings of AWSNodeTemplate `default` reaches new nodes only: Karpenter up to v0.32 (this cluster serves karpenter.sh/v1alpha5) has drift off by default, so running nodes keep their disk until they are replaced"
        ]
    );
    assert_eq!(
        plan.karpenter.as_deref(),
        Some("karpenter.sh/v1alpha5 Provisioner + karpenter.k8s.aws/v1alpha1 AWSNodeTemplate")
    );
}

#[test]
fn a_class_whose_intent_cannot_be_written_refuses_the_patch() {
    let mut s = Scenario::new(NODECLASS);
    s.world.karpenter.classes = vec![ClassApi::V1alpha1];
    let template = json!({
        "apiVersion": "karpenter.k8s.aws/v1alpha1", "kind": "AWSNodeTemplate",
        "metadata": {"name": "default", "resourceVersion": "300"},
        "spec": {"launchTemplate": "gpu-nodes"},
    });
    s.observe_intent(CLASS, template);
    let c = s.change(CLASS);
    assert_eq!(c.action(), Action::Patch);
    assert_eq!(
        c.error(),
        Some(
            "the AWSNodeTemplate launches from launch template `gpu-nodes`, and Karpenter rejects blockDeviceMappings alongside launchTemplate\n  \
             help: size the volume in the launch template itself and drop the storage intent, or let Karpenter generate the launch template"
        )
    );
}

#[test]
fn destroy_reverts_karpenter_only_after_every_delete() {
    let mut s = Scenario::new(&format!("{NODEPOOL}{SECRET}{CONFIGMAP}"));
    let live = s.patched(POOL, nodepool("30s"));
    s.applied("secret.hf-token");
    s.applied("manifest.settings");
    s.options.destroy = true;
    for at in ["secret.hf-token", "manifest.settings"] {
        let stored = s.stored(at);
        s.sees(at, Obj::live(stored).owned());
    }
    s.observe_revert(POOL, live, false);
    let plan = s.plan();
    let pool = plan.change(&address(POOL)).expect("planned");
    let mut after: Vec<String> = pool.depends_on.iter().map(ToString::to_string).collect();
    after.sort();
    assert_eq!(after, ["manifest.settings", "secret.hf-token"]);
    assert_eq!(
        plan.summary(),
        Summary {
            destroy: 2,
            revert: 1,
            ..Summary::default()
        }
    );
    assert_eq!(plan.check_saved(), Ok(()));
}

#[test]
fn a_zero_downtime_upgrade_past_the_pools_gpu_limit_is_warned_about() {
    let mut s = Scenario::new(&format!("{NODEPOOL}{SECRET}{RAYSERVICE}"));
    let pool = with(
        &nodepool("30s"),
        "/spec/limits",
        json!({"nvidia.com/gpu": "1"}),
    );
    s.observe_intent(POOL, pool);
    s.applied("secret.hf-token");
    let stored = s.stored("rayservice.llm");
    let image = "/spec/rayClusterConfig/workerGroupSpecs/0/template/spec/containers/0/image";
    let old = with(&stored, image, json!("rayproject/ray:2.59.0"));
    s.record_older("rayservice.llm", &old);
    s.sees("rayservice.llm", Obj::live(old).owned().after(stored));
    let plan = s.plan();
    let upgrade = plan.change(&address("rayservice.llm")).expect("planned");
    let rollout = upgrade.write().and_then(|w| w.rollout.as_ref());
    assert_eq!(
        rollout.map(|r| &r.rollout),
        Some(&crate::plan::rollout::Rollout::NewCluster {
            extra_gpus: 1,
            serve_too: false,
            secret_only: false
        })
    );
    assert_eq!(
        plan.warnings,
        [
            CONSOLIDATION_WARNING.to_string(),
            "rayservice.llm: NodePool `default` has limits nvidia.com/gpu 1, and this change is a zero-downtime upgrade: the new RayCluster's 1 GPU on top of the 1 the serving cluster keeps until promotion, 2 at once; Karpenter launches no node past the limit, so the new cluster's GPU workers stay Pending and the upgrade stalls\n  \
             help: raise the limit to at least 2, or change the RayService with upgradeStrategy None and accept downtime"
                .to_string(),
        ]
    );
}

#[test]
fn a_pool_intent_removed_from_the_stack_is_reverted_without_a_destroy() {
    let mut before = Scenario::new(NODEPOOL);
    let live = before.patched(POOL, nodepool("30s"));
    let mut s = Scenario::new(SECRET);
    s.applied("secret.hf-token");
    s.recorded_by(&mut before, POOL);
    s.observe_revert(POOL, live, false);
    let plan = s.plan();
    assert_eq!(
        actions(&plan),
        [
            ("secret.hf-token".to_string(), Action::NoOp),
            (POOL.to_string(), Action::Revert),
        ]
    );
    assert_eq!(
        plan.summary(),
        Summary {
            revert: 1,
            ..Summary::default()
        }
    );
}

#[test]
fn destroy_forgets_a_pool_already_back_at_its_original_values() {
    let mut s = Scenario::new(NODEPOOL);
    s.patched(POOL, nodepool("30s"));
    s.options.destroy = true;
    // Someone put the pool back by hand, bookkeeping annotations and all.
    s.observe_revert(POOL, nodepool("30s"), false);
    let plan = s.plan();
    assert_eq!(actions(&plan), [(POOL.to_string(), Action::Forget)]);
    assert_eq!(
        (plan.warnings.len(), plan.errors.len(), plan.has_changes()),
        (0, 0, false)
    );
}

#[test]
fn destroy_reverts_a_patch_whose_state_write_was_lost_from_the_objects_annotations() {
    let mut s = Scenario::new(NODEPOOL);
    let live = s.patched(POOL, nodepool("30s"));
    s.state.resources.clear();
    s.options.destroy = true;
    s.observe_revert(POOL, live, false);
    let c = s.change(POOL);
    let Op::Revert(edit) = &c.op else {
        panic!("a revert: {:?}", c.op)
    };
    assert_eq!(
        edit.patch.expect,
        [(floor::AFTER.to_string(), Some(json!("30s")))].into()
    );
}
