//! Saved plans are applied whole or not at all: refused when stale, when a
//! secret changed, when cut or bent out of shape, and never saved with errors.

use serde_json::{Value, json};

use crate::support::{Backend, Env, Profile, Run, on_both_backends};

async fn a_stale_saved_plan_is_refused(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "stale").await;
    let stack = env.mission_stack("stale");
    // Plan never writes the state: a saved plan needs one made by `init`.
    let refused = env
        .rayform(&["plan", &stack, "--out", "first.plan"])
        .code(1);
    refused.stderr_has("has no state yet");
    refused.stderr_has("rayform init");
    assert!(!env.path("first.plan").exists());
    env.rayform(&["state", "pull", &stack])
        .code(1)
        .stderr_has("no state at");
    env.rayform(&["init", &stack])
        .ok()
        .stdout_has("Created the state");
    let created = env.state("stale");
    env.rayform(&["init", &stack])
        .ok()
        .stdout_has("already exists");
    env.rayform(&["plan", &stack, "--out", "first.plan"]).ok();
    assert_eq!(
        env.state("stale"),
        created,
        "plan --out left the state alone"
    );
    // The world moves on: the NodePool is edited after the plan was made.
    let (api, kind) = Profile::V1.pool();
    env.merge_as(
        "someone",
        api,
        kind,
        None,
        &env.pool,
        json!({"spec": {"weight": 5}}),
    )
    .await;
    let refused = env.rayform(&["apply", "first.plan", "--no-wait"]).code(1);
    let said = refused.error_line();
    assert!(
        said.starts_with("the saved plan is stale: ") && said.ends_with("; nothing was changed"),
        "{said}"
    );
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_none(),
        "nothing was applied"
    );

    // A fresh plan applies; a plan made before that apply is then stale by serial.
    env.rayform(&["plan", &stack, "--out", "second.plan"]).ok();
    env.rayform(&["plan", &stack, "--out", "third.plan"]).ok();
    let then = env.state("stale")["serial"].clone();
    env.rayform(&["apply", "second.plan", "--no-wait"]).ok();
    let now = env.state("stale")["serial"].clone();
    let refused = env.rayform(&["apply", "third.plan", "--no-wait"]).code(1);
    assert_eq!(
        refused.error_line(),
        format!(
            "the saved plan is stale: the state changed since the plan was made (serial {then} then, {now} now); nothing was changed"
        )
    );
}
on_both_backends!(a_stale_saved_plan_is_refused);

/// A saved plan pins the secret values it was made with (by fingerprint):
/// another token in the environment refuses the whole plan before its first
/// write, Karpenter patches included.
#[tokio::test]
async fn a_saved_plan_is_refused_whole_when_a_secret_value_changed() {
    let env = Env::new(Profile::V1, "stalesecret").await;
    let before = env.karpenter_specs().await;
    let stack = env.mission_stack("stalesecret");
    env.rayform(&["init", &stack]).ok();
    env.rayform(&["plan", &stack, "--out", "u.plan"]).ok();
    let refused = Run::from(
        env.command(&["apply", "u.plan", "--no-wait"])
            .env("HUGGING_FACE_HUB_TOKEN", "hf_anotherTokenEntirely")
            .output()
            .unwrap(),
    )
    .code(1);
    assert_eq!(
        refused.error_line(),
        "the saved plan is stale: secret.hf-token: the value of key `HUGGING_FACE_HUB_TOKEN` changed since the plan was made; nothing was changed"
    );
    assert!(!refused.all().contains("Patched"), "{}", refused.all());
    assert_eq!(env.karpenter_specs().await, before, "nothing was patched");
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_none()
    );
    // With the token it was made with, the same plan applies.
    env.rayform(&["apply", "u.plan", "--no-wait"]).ok();
}

#[tokio::test]
async fn a_saved_plan_missing_what_a_change_needs_is_refused_whole() {
    let env = Env::new(Profile::V1, "partplan").await;
    let stack = env.mission_stack("partplan");
    env.rayform(&["init", &stack]).ok();
    env.rayform(&["plan", &stack, "--out", "whole.plan"]).ok();
    let mut plan: Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("whole.plan")).unwrap()).unwrap();
    let secret = plan["changes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["address"] == "secret.hf-token")
        .expect("the Secret is in the plan");
    secret.as_object_mut().unwrap().remove("body");
    env.write("cut.plan", &plan.to_string());
    let refused = env.rayform(&["apply", "cut.plan", "--no-wait"]).code(1);
    // What follows is where in the file serde stopped reading.
    let said = refused.error_line();
    assert!(
        said.starts_with(
            "cut.plan is not a rayform plan: secret.hf-token: a create change without a body"
        ),
        "{said}"
    );
    for (api, kind, ns, name) in [
        ("v1", "Secret", Some(env.ns.as_str()), "hf-token"),
        (
            "ray.io/v1",
            "RayService",
            Some(env.ns.as_str()),
            "mistral-7b",
        ),
    ] {
        assert!(
            env.get(api, kind, ns, name).await.is_none(),
            "{kind} was not created"
        );
    }

    // The state a saved plan was made from cannot be stood in for by an empty one.
    std::fs::remove_file(env.path("state/partplan.json")).unwrap();
    env.rayform(&["apply", "whole.plan", "--no-wait"])
        .code(1)
        .stderr_has("the state whole.plan was made from is gone");
    assert!(!env.path("state/partplan.json").exists());
}

#[tokio::test]
async fn a_saved_plan_that_does_not_hold_together_is_refused_before_anything_is_sent() {
    let env = Env::new(Profile::V1, "shapeplan").await;
    let stack = env.mission_stack("shapeplan");
    env.rayform(&["init", &stack]).ok();
    env.rayform(&["plan", &stack, "--out", "whole.plan"]).ok();
    let whole: Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("whole.plan")).unwrap()).unwrap();
    let rayservice = "rayservice.mistral-7b";
    let bent: [(&str, &str, Value, &str); 6] = [
        (
            "secret.hf-token",
            "/body",
            json!(5),
            "secret.hf-token: a create change whose body is not an object",
        ),
        (
            rayservice,
            "/body",
            json!("a string"),
            "a create change whose body is not an object",
        ),
        (
            rayservice,
            "/body",
            json!([1, 2]),
            "a create change whose body is not an object",
        ),
        (
            rayservice,
            "/body/metadata/name",
            json!("another"),
            "rayservice.mistral-7b: a create change whose body is not the ray.io/v1 RayService `mistral-7b` it names",
        ),
        (
            rayservice,
            "/depends_on",
            json!(["manifest.nowhere"]),
            "depends on manifest.nowhere, which is not another change of the plan",
        ),
        (
            "secret.hf-token",
            "/depends_on",
            json!([rayservice]),
            "depend on each other in a cycle",
        ),
    ];
    for (address, pointer, bad, said) in bent {
        let mut plan = whole.clone();
        let change = plan["changes"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c["address"] == address)
            .expect("the change is in the plan");
        *change.pointer_mut(pointer).unwrap() = bad.clone();
        env.write("bent.plan", &plan.to_string());
        let refused = env.rayform(&["apply", "bent.plan", "--no-wait"]).code(1);
        let first = refused.error_line();
        assert!(
            first.starts_with("bent.plan is not a rayform plan: ") && first.contains(said),
            "{pointer} = {bad}: {first}"
        );
        assert!(
            !refused.stderr.contains("panicked") && !refused.stderr.contains("Patching"),
            "{pointer} = {bad}: {}",
            refused.stderr
        );
    }

    for (api, kind, name) in [
        ("v1", "Secret", "hf-token"),
        ("ray.io/v1", "RayService", "mistral-7b"),
    ] {
        assert!(
            env.get(api, kind, Some(&env.ns), name).await.is_none(),
            "{kind} was not created"
        );
    }
    let (pool, _) = env.karpenter_specs().await;
    assert_eq!(
        pool["disruption"]["consolidateAfter"], "30s",
        "the NodePool was not patched"
    );
}

#[tokio::test]
async fn a_plan_with_errors_is_not_saved() {
    let env = Env::new(Profile::V1, "errplan").await;
    let stack = env.mission_stack("errplan");
    env.apply_as(
        "kubectl",
        "v1",
        "Secret",
        Some(&env.ns),
        "hf-token",
        json!({"stringData": {"HUGGING_FACE_HUB_TOKEN": "by-hand"}}),
    )
    .await;
    env.rayform(&["init", &stack]).ok();
    let run = env.rayform(&["plan", &stack, "--out", "bad.plan"]).code(1);
    assert_eq!(
        run.error_line(),
        "the plan has errors, so it was not saved to bad.plan"
    );
    assert!(!env.path("bad.plan").exists());
}
