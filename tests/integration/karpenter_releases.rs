//! Karpenter releases before v1 and migrations between them: objects are
//! patched in the API they exist in, a stored v1beta1 is read as stored, and
//! a disruption annotation a release ignores is named.

use serde_json::{Value, json};

use crate::karpenter::{intents, merge_pool};
use crate::support::{Env, Profile};

#[tokio::test]
async fn on_karpenter_v0_32_objects_are_patched_in_the_api_they_exist_in() {
    let env = Env::new(Profile::V032, "v032").await;
    let before = env.karpenter_specs().await;
    let stack = env.mission_stack("v032");
    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has(&format!(
        "will be patched (karpenter.sh/v1alpha5 Provisioner {})",
        env.pool
    ));
    plan.stdout_has("reaches new nodes only: Karpenter up to v0.32");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    assert_eq!(env.pool_spec().await["ttlSecondsAfterEmpty"], json!(600));
    assert_eq!(
        env.class_spec().await["blockDeviceMappings"][0]["ebs"]["volumeSize"],
        json!("200Gi")
    );
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(env.karpenter_specs().await, before);
}

/// A NodePool of the test's Provisioner's name, as a cluster half-way
/// through the v0.32 migration has: Karpenter launches from both.
async fn nodepool_beside(env: &Env) {
    let fixture = env
        .get("karpenter.sh/v1beta1", "NodePool", None, "default")
        .await
        .expect("the v1beta1 fixture `default` exists");
    let mut spec = fixture["spec"].clone();
    spec["disruption"] = json!({"consolidationPolicy": "WhenEmpty", "consolidateAfter": "30s"});
    env.apply_as(
        "karpenter-install",
        "karpenter.sh/v1beta1",
        "NodePool",
        None,
        &env.pool,
        json!({ "spec": spec }),
    )
    .await;
}

async fn nodepool_spec(env: &Env) -> Value {
    env.get("karpenter.sh/v1beta1", "NodePool", None, &env.pool)
        .await
        .expect("the test's NodePool")["spec"]
        .clone()
}

/// A Provisioner and a NodePool of one name: the intent is patched into
/// both, each recorded under its own address, and destroy gives both back.
#[tokio::test]
async fn on_karpenter_v0_32_the_provisioner_beside_the_nodepool_is_patched_too() {
    let env = Env::new(Profile::V032, "v032-both").await;
    nodepool_beside(&env).await;
    let before = (nodepool_spec(&env).await, env.pool_spec().await);
    let stack = intents(&env, Some("600s"), None);
    let plan = env.rayform(&["plan", &stack]).ok();
    let pool = &env.pool;
    plan.stdout_has(&format!(
        "nodepool.{pool} will be patched (karpenter.sh/v1beta1 NodePool {pool})"
    ));
    plan.stdout_has(&format!(
        "provisioner.{pool} will be patched (karpenter.sh/v1alpha5 Provisioner {pool})"
    ));
    plan.stdout_has("Karpenter v0.32 launches from both");
    plan.stdout_has("2 to patch");
    env.rayform(&["doctor", &stack]).stdout_has(&format!(
        "✔ provisioner.{pool}: karpenter.sh/v1alpha5 Provisioner `{pool}` exists beside the NodePool"
    ));
    env.rayform(&["import", &stack, &format!("provisioner.{pool}")])
        .code(1)
        .stderr_has("Karpenter objects are patched, not owned");

    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    assert_eq!(
        nodepool_spec(&env).await["disruption"]["consolidateAfter"],
        json!("600s")
    );
    assert_eq!(env.pool_spec().await["ttlSecondsAfterEmpty"], json!(600));
    let list = env.rayform(&["state", "list", &stack]).ok();
    assert_eq!(
        list.stdout,
        format!("nodepool.{pool}\nprovisioner.{pool}\n")
    );
    env.rayform(&["plan", &stack]).ok().stdout_has("No changes");

    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!((nodepool_spec(&env).await, env.pool_spec().await), before);
}

/// The migration finished (the Provisioner deleted) after an apply: the
/// next plan drops it from the state, and destroy still restores the NodePool.
#[tokio::test]
async fn on_karpenter_v0_32_a_provisioner_deleted_after_the_apply_is_dropped_from_the_state() {
    let env = Env::new(Profile::V032, "v032-done").await;
    nodepool_beside(&env).await;
    let before = nodepool_spec(&env).await;
    let stack = intents(&env, Some("600s"), None);
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    let (api, kind) = Profile::V032.pool();
    env.delete(api, kind, None, &env.pool).await;
    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has(&format!(
        "provisioner.{}: Provisioner `{}` does not exist",
        env.pool, env.pool
    ));
    plan.stdout_has("nothing to revert, so it is dropped from the state");
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    let list = env.rayform(&["state", "list", &stack]).ok();
    assert_eq!(list.stdout, format!("nodepool.{}\n", env.pool));
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(nodepool_spec(&env).await, before);
}

/// The intent taken out of the stack: the next apply reverts it from both
/// objects, and says it did.
#[tokio::test]
async fn on_karpenter_v0_32_an_intent_removed_from_the_stack_is_reverted_from_both() {
    let env = Env::new(Profile::V032, "v032-removed").await;
    nodepool_beside(&env).await;
    let before = (nodepool_spec(&env).await, env.pool_spec().await);
    let stack = intents(&env, Some("600s"), None);
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    let stack = intents(&env, None, None);
    let apply = env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    apply.stdout_has(
        "Apply complete! Resources: 0 added, 0 changed, 0 destroyed, 0 patched, 2 reverted.",
    );
    assert_eq!((nodepool_spec(&env).await, env.pool_spec().await), before);
    let list = env.rayform(&["state", "list", &stack]).ok();
    assert_eq!(list.stdout, "");
}

/// Karpenter v0.33.6-v0.37 serve karpenter.sh/v1 beside the v1beta1 they
/// store, and convert with loss: the pool and class are read and patched
/// through the stored v1beta1, destroy gives back exactly what was there,
/// and do-not-evict, which those releases honour, is not said to be ignored.
#[tokio::test]
async fn on_karpenter_v0_37_the_stored_v1beta1_is_read_and_patched() {
    let env = Env::new(Profile::V037, "v037").await;
    merge_pool(
        &env,
        json!({"spec": {"disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "30s"}}}),
    )
    .await;
    let before = env.karpenter_specs().await;
    let stack = env.mission_stack("v037");
    let manifest = std::fs::read_to_string(env.path("mistral-7b.rayservice.yaml")).unwrap();
    env.write(
        "mistral-7b.rayservice.yaml",
        &manifest.replace("karpenter.sh/do-not-disrupt", "karpenter.sh/do-not-evict"),
    );
    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has(&format!(
        "will be patched (karpenter.sh/v1beta1 NodePool {})",
        env.pool
    ));
    plan.stdout_has(&format!(
        "will be patched (karpenter.k8s.aws/v1beta1 EC2NodeClass {})",
        env.class
    ));
    assert!(!plan.stdout.contains("protects nothing"), "{}", plan.stdout);

    let mark = env.audit_mark();
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let writes: Vec<String> = env
        .requests_since(mark)
        .await
        .into_iter()
        .filter(|e| e["verb"] == "patch" && e["objectRef"]["namespace"].is_null())
        .map(|e| {
            let object = &e["objectRef"];
            let field = |k: &str| object[k].as_str().unwrap_or_default().to_string();
            format!("{} {}", field("resource"), field("apiVersion"))
        })
        .collect();
    assert!(!writes.is_empty());
    assert!(
        writes.iter().all(|w| w.ends_with(" v1beta1")),
        "patched through the stored version only: {writes:?}"
    );
    let pool = env.pool_spec().await;
    assert_eq!(
        pool["disruption"]["consolidationPolicy"],
        json!("WhenEmpty")
    );
    assert_eq!(pool["disruption"]["consolidateAfter"], json!("600s"));

    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(env.karpenter_specs().await, before);
}

#[tokio::test]
async fn a_disruption_annotation_the_karpenter_release_ignores_is_named() {
    let old = Env::new(Profile::V1alpha5, "annotation-old").await;
    let stack = old.mission_stack("annotations");
    old.rayform(&["plan", &stack]).ok().stdout_has(
        "the head group's karpenter.sh/do-not-disrupt annotation protects nothing here: the cluster serves only karpenter.sh/v1alpha5",
    );

    let new = Env::new(Profile::V1, "annotation-new").await;
    let stack = new.mission_stack("annotations");
    let plan = new.rayform(&["plan", &stack]).ok();
    assert!(!plan.stdout.contains("protects nothing"), "{}", plan.stdout);
    let manifest = std::fs::read_to_string(new.path("mistral-7b.rayservice.yaml")).unwrap();
    new.write(
        "mistral-7b.rayservice.yaml",
        &manifest.replace("karpenter.sh/do-not-disrupt", "karpenter.sh/do-not-evict"),
    );
    new.rayform(&["plan", &stack]).ok().stdout_has(
        "karpenter.sh/do-not-evict annotation protects nothing here: the cluster stores karpenter.sh/v1 NodePools",
    );
}
