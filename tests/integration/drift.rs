//! Changes made outside rayform: reported and restored, a field another
//! manager owns, refresh-only, and forgetting what is already gone.

use serde_json::json;

use crate::support::{Backend, Env, Profile, on_both_backends};

async fn a_change_by_another_field_manager_is_reported_and_restored(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "drift").await;
    let stack = env.mission_stack("drift");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let rs = env
        .get("ray.io/v1", "RayService", Some(&env.ns), "mistral-7b")
        .await
        .unwrap();
    let original = rs["spec"]["serveConfigV2"].clone();
    env.merge_as(
        "kubectl-edit",
        "ray.io/v1",
        "RayService",
        Some(&env.ns),
        "mistral-7b",
        json!({"spec": {"serveConfigV2": "applications: []\n"}}),
    )
    .await;

    let plan = env
        .rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(2);
    assert_eq!(
        plan.line_starting("~ rayservice.mistral-7b "),
        format!(
            "~ rayservice.mistral-7b will be updated in place (ray.io/v1 RayService {}/mistral-7b)",
            env.ns
        )
    );
    plan.stdout_has("changed outside rayform");
    // Each diff says what its sides are: what happened outside, then what apply does.
    plan.stdout_has("--- last applied by rayform");
    plan.stdout_has("+++ live");
    plan.stdout_has("--- live");
    plan.stdout_has("+++ planned");
    assert!(
        plan.stdout.contains("applications: []"),
        "the outside change is shown: {}",
        plan.stdout
    );

    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let rs = env
        .get("ray.io/v1", "RayService", Some(&env.ns), "mistral-7b")
        .await
        .unwrap();
    assert_eq!(rs["spec"]["serveConfigV2"], original);
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
}
on_both_backends!(a_change_by_another_field_manager_is_reported_and_restored);

/// The server refusing the new version of an object that exists is a change
/// that cannot be made, not a create (nor "1 to add").
#[tokio::test]
async fn an_update_the_server_refuses_is_not_planned_as_a_create() {
    let env = Env::new(Profile::V1, "refusedupdate").await;
    let stack = env.mission_stack("refusedupdate");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let manifest = env.path("mistral-7b.rayservice.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("        replicas: 1", "        replicas: many"),
    )
    .unwrap();
    let plan = env.rayform(&["plan", &stack]).code(1);
    assert!(!plan.stdout.contains("will be created"), "{}", plan.stdout);
    assert!(!plan.stdout.contains("1 to add"), "{}", plan.stdout);
    plan.stdout_has("rayservice.mistral-7b will be updated");
}

/// `--refresh-only` writes nothing to the cluster: the state records a field
/// changed outside rayform as it is, forgets what was deleted outside, and
/// the next ordinary plan puts the stack's values back.
#[tokio::test]
async fn refresh_only_records_what_is_live_and_changes_nothing() {
    let env = Env::new(Profile::V1, "refreshonly").await;
    env.write(
        "refreshonly.toml",
        &format!(
            "[stack]\nname = \"refreshonly\"\nnamespace = \"{ns}\"\n\n[manifest.kept]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ a = \"1\" }} }}\n\n[manifest.gone]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ b = \"1\" }} }}\n",
            ns = env.ns
        ),
    );
    env.rayform(&["apply", "refreshonly.toml", "--auto-approve"])
        .ok();
    env.merge_as(
        "someone",
        "v1",
        "ConfigMap",
        Some(&env.ns),
        "kept",
        json!({"data": {"a": "2"}}),
    )
    .await;
    let configmaps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    configmaps
        .delete("gone", &Default::default())
        .await
        .unwrap();

    let plan = env
        .rayform(&["plan", "refreshonly.toml", "--refresh-only"])
        .ok();
    plan.stdout_has("changed outside rayform: recorded as it is now");
    assert_eq!(
        plan.line_starting("x manifest.gone "),
        format!(
            "x manifest.gone will be removed from state (nothing left to revert) (v1 ConfigMap {}/gone)",
            env.ns
        )
    );
    assert!(!plan.stdout.contains("will be updated"), "{}", plan.stdout);
    assert!(!plan.stdout.contains("will be created"), "{}", plan.stdout);
    env.rayform(&[
        "apply",
        "refreshonly.toml",
        "--refresh-only",
        "--auto-approve",
    ])
    .ok();
    let kept = env
        .get("v1", "ConfigMap", Some(&env.ns), "kept")
        .await
        .unwrap();
    assert_eq!(kept["data"]["a"], json!("2"), "nothing was written");
    assert!(
        env.get("v1", "ConfigMap", Some(&env.ns), "gone")
            .await
            .is_none()
    );
    let state = env.state("refreshonly");
    assert!(state["resources"].get("manifest.gone").is_none(), "{state}");

    // The stack still says "1" and still has `gone`: an ordinary plan restores both.
    let plan = env.rayform(&["plan", "refreshonly.toml"]).ok();
    let ns = &env.ns;
    assert_eq!(
        plan.line_starting("~ manifest.kept "),
        format!("~ manifest.kept will be updated in place (v1 ConfigMap {ns}/kept)")
    );
    assert_eq!(
        plan.line_starting("+ manifest.gone "),
        format!("+ manifest.gone will be created (v1 ConfigMap {ns}/gone)")
    );
    assert!(
        !plan.stdout.contains("changed outside rayform"),
        "{}",
        plan.stdout
    );
}

#[tokio::test]
async fn a_field_another_manager_owns_is_a_conflict_until_forced() {
    let env = Env::new(Profile::V1, "conflict").await;
    let stack = env.mission_stack("conflict");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    // Someone else takes charge of a field rayform never wrote...
    env.merge_as(
        "autoscaler-tuner",
        "ray.io/v1",
        "RayService",
        Some(&env.ns),
        "mistral-7b",
        json!({"spec": {"rayClusterConfig": {"enableInTreeAutoscaling": false}}}),
    )
    .await;
    // ...and the stack now wants it too.
    let manifest = std::fs::read_to_string(env.path("mistral-7b.rayservice.yaml")).unwrap();
    env.write(
        "mistral-7b.rayservice.yaml",
        &manifest.replace(
            "    rayVersion: \"2.52.0\"\n",
            "    rayVersion: \"2.52.0\"\n    enableInTreeAutoscaling: true\n",
        ),
    );

    let plan = env.rayform(&["plan", &stack]).code(1);
    plan.stdout_has("applying would take fields owned by another field manager");
    plan.stdout_has("enableInTreeAutoscaling");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .code(1);
    env.rayform(&[
        "apply",
        &stack,
        "--auto-approve",
        "--no-wait",
        "--force-conflicts",
    ])
    .ok();
    let rs = env
        .get("ray.io/v1", "RayService", Some(&env.ns), "mistral-7b")
        .await
        .unwrap();
    assert_eq!(
        rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"],
        json!(true)
    );
}

#[tokio::test]
async fn forgetting_what_is_already_gone_is_saved_even_with_nothing_else_to_do() {
    let env = Env::new(Profile::V1, "forgetonly").await;
    let secret =
        |name: &str| format!("[secret.{name}.data]\nK = {{ env = \"HUGGING_FACE_HUB_TOKEN\" }}\n");
    let head = format!(
        "[stack]\nname = \"forgetonly\"\nnamespace = \"{}\"\n\n",
        env.ns
    );
    env.write(
        "forgetonly.toml",
        &format!("{head}{}{}", secret("kept"), secret("dropped")),
    );
    env.rayform(&["apply", "forgetonly.toml", "--auto-approve"])
        .ok();
    let state = || std::fs::read_to_string(env.path("state/forgetonly.json")).unwrap();
    assert!(state().contains("secret.dropped"));
    // Deleted by hand, then removed from the stack: only the state has it.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    secrets
        .delete("dropped", &Default::default())
        .await
        .unwrap();
    env.write("forgetonly.toml", &format!("{head}{}", secret("kept")));
    // A stack without a wait node: the plan holds one forget and nothing else.
    let plan = env.rayform(&["plan", "forgetonly.toml"]).ok();
    assert_eq!(
        plan.line_starting("Plan: "),
        "Plan: 0 to add, 0 to change, 0 to destroy, 0 to patch, 1 to forget."
    );
    // Forgetting is a change a person approves: the state lets go of it.
    let unasked = env.rayform(&["apply", "forgetonly.toml"]).code(1);
    assert_eq!(
        unasked.line_starting("rayform apply "),
        "rayform apply needs confirmation, but standard input is not a terminal."
    );
    assert!(state().contains("secret.dropped"));
    let applied = env
        .rayform(&["apply", "forgetonly.toml", "--auto-approve"])
        .ok();
    assert_eq!(
        applied.line_starting("Apply complete!"),
        "Apply complete! Resources: 0 added, 0 changed, 0 destroyed, 0 patched, 1 forgotten."
    );
    assert!(!state().contains("secret.dropped"), "{}", state());
}
