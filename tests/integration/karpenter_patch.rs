//! Karpenter objects rayform patches but does not own: shared between
//! stacks, reverted exactly by the last holder, guarded against edits made
//! outside, and let go when someone else deleted them.

use serde_json::json;

use crate::support::{Backend, Env, Profile, on_both_backends};

async fn two_stacks_share_karpenter_objects_and_the_last_one_reverts(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "shared").await;
    let before = env.karpenter_specs().await;
    let a = env.mission_stack("model-a");
    // Stack B: the same pool and class, another namespace-free stack name, no workload.
    let b = env.write(
        "model-b.toml",
        &format!(
            "[stack]\nname = \"model-b\"\nnamespace = \"{}\"\n\n[nodepool.{}]\nempty_ttl = \"600s\"\n\n[nodeclass.{}]\nstorage = \"200Gi\"\n",
            env.ns, env.pool, env.class
        ),
    );
    let b = b.to_str().unwrap();
    env.rayform(&["apply", &a, "--auto-approve", "--no-wait"])
        .ok();
    let patched = env.karpenter_specs().await;
    env.rayform(&["apply", b, "--auto-approve", "--no-wait"])
        .ok();
    assert_eq!(env.karpenter_specs().await, patched);

    // A's destroy only lets go: it says so, not "reverted".
    let plan = env.rayform(&["plan", &a, "--destroy"]).ok();
    assert_eq!(
        plan.line_starting(&format!("< nodepool.{} ", env.pool)),
        format!(
            "< nodepool.{} will be released (karpenter.sh/v1 NodePool {}): stack `model-b` still holds it, so its values stay",
            env.pool, env.pool
        )
    );
    assert_eq!(
        plan.line_starting("Plan: "),
        "Plan: 2 to destroy, 0 to revert, 2 to release."
    );
    let destroyed = env.rayform(&["destroy", &a, "--auto-approve"]).ok();
    destroyed.stderr_has("still holds it");
    assert_eq!(
        destroyed.line_starting("Destroy complete!"),
        "Destroy complete! Resources: 2 destroyed, 0 reverted, 2 released."
    );
    assert_eq!(
        env.karpenter_specs().await,
        patched,
        "B still holds the patch"
    );

    let last = env.rayform(&["destroy", b, "--auto-approve"]).ok();
    assert_eq!(
        last.line_starting("Destroy complete!"),
        "Destroy complete! Resources: 0 destroyed, 2 reverted."
    );
    assert_eq!(
        env.karpenter_specs().await,
        before,
        "the last holder restored the originals recorded before A"
    );
}
on_both_backends!(two_stacks_share_karpenter_objects_and_the_last_one_reverts);

#[tokio::test]
async fn a_field_changed_outside_stops_the_revert_unless_forced() {
    let env = Env::new(Profile::V1, "revert-guard").await;
    let before = env.karpenter_specs().await;
    let stack = env.mission_stack("guard");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let (api, kind) = Profile::V1.pool();
    env.merge_as(
        "someone",
        api,
        kind,
        None,
        &env.pool,
        json!({"spec": {"disruption": {"consolidateAfter": "900s"}}}),
    )
    .await;

    let refused = env.rayform(&["destroy", &stack, "--auto-approve"]).code(1);
    let text = refused.all();
    assert!(
        text.contains("recorded original \"30s\", written \"600s\", live \"900s\""),
        "{text}"
    );
    assert_eq!(
        env.pool_spec().await["disruption"]["consolidateAfter"],
        json!("900s"),
        "nothing was overwritten"
    );

    env.rayform(&["destroy", &stack, "--auto-approve", "--force"])
        .ok();
    assert_eq!(env.karpenter_specs().await, before);
}

#[tokio::test]
async fn a_v1alpha5_provisioner_with_consolidation_cannot_take_an_empty_ttl() {
    let env = Env::new(Profile::V1alpha5, "consolidation").await;
    let stack = env.mission_stack("consolidation");
    let (api, kind) = Profile::V1alpha5.pool();
    env.merge_as(
        "someone",
        api,
        kind,
        None,
        &env.pool,
        json!({"spec": {"ttlSecondsAfterEmpty": null, "consolidation": {"enabled": true}}}),
    )
    .await;
    let plan = env.rayform(&["plan", &stack]).code(1);
    plan.stdout_has("consolidation.enabled: true");
    plan.stdout_has("ttlSecondsAfterEmpty");
}

#[tokio::test]
async fn a_broken_originals_annotation_stops_the_patch_instead_of_recording_patched_values() {
    let env = Env::new(Profile::V1, "brokenorig").await;
    let stack = env.mission_stack("brokenorig");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    // Someone mangles the record of the originals while the patch is live.
    let (api, kind) = Profile::V1.pool();
    let broken = json!({"metadata": {"annotations": {"rayform.io/karpenter-original": "{\"/spec/disruption"}}});
    env.merge_as("someone", api, kind, None, &env.pool, broken)
        .await;
    let before = env.pool_spec().await;
    // A second stack on the same pool must not take the patched 600s for the original.
    let second = env.mission_stack("brokenorig2");
    let run = env
        .rayform(&["apply", &second, "--auto-approve", "--no-wait"])
        .code(1);
    let said = run.all();
    assert!(
        said.contains("rayform.io/karpenter-original") && said.contains("is not valid JSON"),
        "{said}"
    );
    assert_eq!(env.pool_spec().await, before);
    // The first stack's own destroy still restores from the state's record.
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    let after = env.pool_spec().await;
    assert_eq!(after["disruption"]["consolidateAfter"], "30s", "{after}");
}

#[tokio::test]
async fn destroy_goes_on_when_a_patched_object_was_deleted_by_someone_else() {
    let env = Env::new(Profile::V1, "gonepool").await;
    let stack = env.mission_stack("gonepool");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let (_, kind) = Profile::V1.pool();
    let pools: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(
        env.client.clone(),
        &kube::discovery::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("karpenter.sh", "v1", kind),
            "nodepools",
        ),
    );
    pools.delete(&env.pool, &Default::default()).await.unwrap();
    let run = env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    run.stdout_has("nothing to revert, so it is dropped from the state");
    assert!(
        env.get("ray.io/v1", "RayService", Some(&env.ns), "mistral-7b")
            .await
            .is_none()
    );
    assert!(
        env.state("gonepool")["resources"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}
