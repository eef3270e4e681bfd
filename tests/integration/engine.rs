//! The engine against a real API server: plan, apply, drift, delete,
//! shared Karpenter objects, stale plans, locks, crashes and secrets.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Backend, Env, OwnCluster, Profile, Run, Running, assert_no_token, on_both_backends,
};

async fn mission_round_trip(profile: Profile, backend: Backend) {
    let env = Env::on(backend, profile, &format!("mission-{}", profile.name())).await;
    let before = env.karpenter_specs().await;
    let stack = env.mission_stack("mistral-7b");

    let plan = env
        .rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(2);
    plan.stdout_has("Plan: 2 to add, 0 to change, 0 to destroy, 2 to patch.");
    let (pool_api, pool_kind) = profile.pool();
    plan.stdout_has(&format!("Karpenter API: {pool_api} {pool_kind}"));

    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let pool = env.pool_spec().await;
    match profile {
        Profile::V1alpha5 => assert_eq!(pool["ttlSecondsAfterEmpty"], json!(600)),
        // Karpenter v1 removes empty nodes after consolidateAfter under any
        // policy: the fixture's WhenEmptyOrUnderutilized stays.
        Profile::V1 | Profile::Nodes => {
            assert_eq!(
                pool["disruption"]["consolidationPolicy"],
                json!("WhenEmptyOrUnderutilized")
            );
            assert_eq!(pool["disruption"]["consolidateAfter"], json!("600s"));
        }
        _ => {
            assert_eq!(
                pool["disruption"]["consolidationPolicy"],
                json!("WhenEmpty")
            );
            assert_eq!(pool["disruption"]["consolidateAfter"], json!("600s"));
        }
    }
    assert_eq!(
        env.class_spec().await["blockDeviceMappings"][0]["ebs"]["volumeSize"],
        json!("200Gi")
    );
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_some()
    );
    assert!(
        env.get("ray.io/v1", "RayService", Some(&env.ns), "mistral-7b")
            .await
            .is_some()
    );

    let again = env
        .rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    again.stdout_has("No changes.");

    // Destroy sends no Secret body, so it needs no token.
    let destroy = env
        .command(&["destroy", &stack, "--auto-approve"])
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .output()
        .unwrap();
    assert!(
        destroy.status.success(),
        "{}",
        String::from_utf8_lossy(&destroy.stderr)
    );
    assert_eq!(
        env.karpenter_specs().await,
        before,
        "Karpenter specs are back to exactly what they were"
    );
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_none()
    );
    assert!(
        env.get("ray.io/v1", "RayService", Some(&env.ns), "mistral-7b")
            .await
            .is_none()
    );
    let state = env.state("mistral-7b");
    assert!(state["resources"].as_object().unwrap().is_empty());
    assert!(state["lineage"].as_str().is_some_and(|l| !l.is_empty()));
}

async fn mission_stack_round_trip_on_karpenter_v1(backend: Backend) {
    mission_round_trip(Profile::V1, backend).await;
}
on_both_backends!(mission_stack_round_trip_on_karpenter_v1);

async fn mission_stack_round_trip_on_karpenter_v1beta1(backend: Backend) {
    mission_round_trip(Profile::V1beta1, backend).await;
}
on_both_backends!(mission_stack_round_trip_on_karpenter_v1beta1);

async fn mission_stack_round_trip_on_karpenter_v1alpha5(backend: Backend) {
    mission_round_trip(Profile::V1alpha5, backend).await;
}
on_both_backends!(mission_stack_round_trip_on_karpenter_v1alpha5);

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
    plan.stdout_has("rayservice.mistral-7b will be updated in place");
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

async fn a_resource_removed_from_the_stack_is_deleted(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "removal").await;
    let stack = env.mission_stack("removal");
    let base = std::fs::read_to_string(env.path(&stack)).unwrap();
    let with_cm = format!(
        "{base}\n[manifest.extra-config]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ a = \"1\" }} }}\n"
    );
    env.write(&stack, &with_cm);
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let cm = env
        .get("v1", "ConfigMap", Some(&env.ns), "extra-config")
        .await
        .expect("created");
    assert_eq!(
        cm["data"],
        json!({"a": "1"}),
        "a manifest's data reaches the server as written"
    );

    env.write(&stack, &base);
    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has("manifest.extra-config will be deleted");
    plan.stdout_has("Plan: 0 to add, 0 to change, 1 to destroy, 0 to patch.");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    assert!(
        env.get("v1", "ConfigMap", Some(&env.ns), "extra-config")
            .await
            .is_none()
    );
    assert!(
        env.state("removal")["resources"]
            .get("manifest.extra-config")
            .is_none()
    );
}
on_both_backends!(a_resource_removed_from_the_stack_is_deleted);

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
    plan.stdout_has(&format!(
        "nodepool.{} will be released (karpenter.sh/v1 NodePool {}): stack `model-b` still holds it, so its values stay",
        env.pool, env.pool
    ));
    plan.stdout_has("Plan: 2 to destroy, 0 to revert, 2 to release.");
    let destroyed = env.rayform(&["destroy", &a, "--auto-approve"]).ok();
    destroyed.stderr_has("still holds it");
    destroyed.stdout_has("Resources: 2 destroyed, 0 reverted, 2 released.");
    assert_eq!(
        env.karpenter_specs().await,
        patched,
        "B still holds the patch"
    );

    env.rayform(&["destroy", b, "--auto-approve"])
        .ok()
        .stdout_has("Resources: 0 destroyed, 2 reverted.");
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
    refused.stderr_has("stale");
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_none(),
        "nothing was applied"
    );

    // A fresh plan applies; a plan made before that apply is then stale by serial.
    env.rayform(&["plan", &stack, "--out", "second.plan"]).ok();
    env.rayform(&["plan", &stack, "--out", "third.plan"]).ok();
    env.rayform(&["apply", "second.plan", "--no-wait"]).ok();
    let refused = env.rayform(&["apply", "third.plan", "--no-wait"]).code(1);
    refused.stderr_has("the state changed since the plan was made");
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
    refused.stderr_has("changed since the plan was made");
    refused.stderr_has("nothing was changed");
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

/// Two stacks declaring one object: the second names the stack that owns
/// it (not "not created by rayform"), `import` refuses it naming the owner,
/// and `--adopt` shows what taking it changes before it takes it.
#[tokio::test]
async fn an_object_of_another_stack_is_named_as_such_and_adopt_shows_its_diff() {
    let env = Env::new(Profile::V1, "twostacks").await;
    let stack = |name: &str| {
        env.write(
            &format!("{name}.toml"),
            &format!(
                "[stack]\nname = \"{name}\"\nnamespace = \"{}\"\n\n[secret.shared.data]\nK = {{ env = \"HUGGING_FACE_HUB_TOKEN\" }}\n",
                env.ns
            ),
        );
        format!("{name}.toml")
    };
    let (alpha, beta) = (stack("alpha"), stack("beta"));
    env.rayform(&["apply", &alpha, "--auto-approve"]).ok();

    let refused = env.rayform(&["plan", &beta]).code(1);
    refused.stdout_has("belongs to rayform stack `alpha`");
    refused.stdout_has("take it from stack `alpha`");
    // The help line is a command that runs as printed.
    refused.stdout_has("`rayform plan beta.toml --adopt secret.shared`");
    assert!(
        !refused.all().contains("not created by rayform"),
        "{}",
        refused.all()
    );
    env.rayform(&["import", &beta, "secret.shared"])
        .code(1)
        .stderr_has("belongs to rayform stack `alpha`");

    let adopting = env
        .rayform(&["plan", &beta, "--adopt", "secret.shared", "--json"])
        .ok();
    let plan: Value = serde_json::from_str(&adopting.stdout).expect("plan --json is JSON");
    let change = &plan["changes"][0];
    assert_eq!(change["address"], json!("secret.shared"), "{plan}");
    let diff = change["diff"]
        .as_str()
        .unwrap_or_else(|| panic!("no diff: {plan}"));
    assert!(diff.contains("-    rayform.io/stack: alpha"), "{diff}");
    assert!(diff.contains("+    rayform.io/stack: beta"), "{diff}");

    env.rayform(&["apply", &beta, "--adopt", "secret.shared", "--auto-approve"])
        .ok();
    let secret = env
        .get("v1", "Secret", Some(&env.ns), "shared")
        .await
        .unwrap();
    assert_eq!(
        secret["metadata"]["labels"]["rayform.io/stack"],
        json!("beta")
    );
    // The stack it was taken from lets go of it, and says to whom.
    env.rayform(&["destroy", &alpha, "--auto-approve"])
        .ok()
        .stdout_has("it belongs to rayform stack `beta` now; left alone");
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "shared")
            .await
            .is_some()
    );
}

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

/// A stack never applied: plan writes nothing (no `state/`, no lock file),
/// shows the same thing every time (the lineage a first apply will make is
/// "known after apply", not a new random one per plan), and its destroy plan
/// is empty instead of forgetting what the state never had.
#[tokio::test]
async fn a_plan_without_a_state_writes_nothing_and_says_the_same_each_time() {
    let env = Env::new(Profile::V1, "nostate").await;
    let stack = env.mission_stack("nostate");
    let first = env.rayform(&["plan", &stack]).ok();
    let second = env.rayform(&["plan", &stack]).ok();
    assert_eq!(first.stdout, second.stdout);
    first.stdout_has("rayform.io/lineage: (known after apply)");
    assert!(!env.path("state").exists(), "plan created state/");
    let destroy = env.rayform(&["plan", &stack, "--destroy"]).ok();
    assert!(
        !destroy.stdout.contains("removed from state"),
        "{}",
        destroy.stdout
    );
    destroy.stdout_has("Plan: 0 to destroy, 0 to revert.");
    assert!(!env.path("state").exists());
}

/// A cluster with KubeRay's CRDs but no operator: the plan warns, and the
/// wait fails within seconds naming the cause, instead of waiting its whole
/// timeout (30 minutes in the mission stack) for a RayCluster.
#[tokio::test]
async fn without_a_kuberay_operator_the_plan_warns_and_the_wait_fails_fast() {
    let env = Env::new(Profile::V1, "nooperator").await;
    let stack = env.mission_stack("nooperator");
    env.rayform(&["plan", &stack])
        .ok()
        .stdout_has("no KubeRay operator will act on it");
    let started = std::time::Instant::now();
    let apply = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "failed after {:?}",
        started.elapsed()
    );
    apply.stderr_has("KubeRay operator: not found");
    apply.stderr_has("help: install it");
}

/// `--target`: only the resource and what it depends on (a destroy: what
/// depends on it), with Terraform's warning; an unknown address is refused.
#[tokio::test]
async fn a_targeted_plan_covers_the_resource_and_its_dependencies() {
    let env = Env::new(Profile::V1, "targeted").await;
    let before = env.karpenter_specs().await;
    let stack = env.mission_stack("targeted");
    let plan = env
        .rayform(&["plan", &stack, "--target", "secret.hf-token"])
        .ok();
    plan.stdout_has("resource targeting is in effect (secret.hf-token)");
    plan.stdout_has("Plan: 1 to add, 0 to change, 0 to destroy, 0 to patch.");
    env.rayform(&[
        "apply",
        &stack,
        "--target",
        "secret.hf-token",
        "--auto-approve",
    ])
    .ok();
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_some()
    );
    assert!(
        env.get("ray.io/v1", "RayService", Some(&env.ns), "mistral-7b")
            .await
            .is_none()
    );
    assert_eq!(
        env.karpenter_specs().await,
        before,
        "the pools were not targeted"
    );

    // The RayService needs its Secret: targeting it brings nothing else new.
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let destroy = env
        .rayform(&["plan", &stack, "--destroy", "--target", "secret.hf-token"])
        .ok();
    destroy.stdout_has("rayservice.mistral-7b will be deleted");
    destroy.stdout_has("Plan: 2 to destroy, 0 to revert.");
    env.rayform(&["plan", &stack, "--target", "secret.nothere"])
        .code(1)
        .stderr_has("--target secret.nothere: no such resource");
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
    plan.stdout_has("manifest.gone will be removed from state");
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
    plan.stdout_has("manifest.kept will be updated in place");
    plan.stdout_has("manifest.gone will be created");
    assert!(
        !plan.stdout.contains("changed outside rayform"),
        "{}",
        plan.stdout
    );
}

/// Many ConfigMaps, so a kill can land with some of them done and not others.
pub fn many_config_maps(env: &Env, stack_name: &str, count: usize) -> String {
    let mut text = format!(
        "[stack]\nname = \"{stack_name}\"\nnamespace = \"{}\"\n",
        env.ns
    );
    for i in 0..count {
        text.push_str(&format!(
            "\n[manifest.cm{i}]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ index = \"{i}\" }} }}\n"
        ));
    }
    let file = format!("{stack_name}.toml");
    env.write(&file, &text);
    file
}

async fn a_kill_that_lands_mid_apply_leaves_a_partial_state_the_next_apply_completes(
    backend: Backend,
) {
    let env = Env::on(backend, Profile::V1, "partial").await;
    let stack = many_config_maps(&env, "partial", 40);
    let running = env.spawn_apply(&stack, "1");
    running
        .until("manifest.cm5: Created", Duration::from_secs(60))
        .await;
    running.kill();
    // The kill landed mid-apply: some objects exist, not all.
    let live = env.count("v1", "ConfigMap").await;
    assert!((6..40).contains(&live), "{live} of 40 live");
    // The state holds no more than what exists. A file's journal has every
    // finished object (cm5's progress line comes after its record); the
    // Secret is rewritten at most once a second, and the next run finds
    // the rest by their lineage.
    let recorded = env.state("partial")["resources"]
        .as_object()
        .map_or(0, serde_json::Map::len);
    assert!(recorded <= live, "{recorded} recorded, {live} live");
    if backend == Backend::File {
        assert!(recorded >= 6, "{recorded} recorded, {live} live");
    }

    let apply = ["apply", &stack, "--auto-approve", "--no-wait"];
    env.rayform_once_unlocked(&apply, Duration::from_secs(40))
        .ok();
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    assert_eq!(env.count("v1", "ConfigMap").await, 40);
    assert_eq!(
        env.state("partial")["resources"].as_object().unwrap().len(),
        40
    );
}
on_both_backends!(a_kill_that_lands_mid_apply_leaves_a_partial_state_the_next_apply_completes);

/// A run that waits for readiness holds the lock; the readiness never comes
/// here (no KubeRay operator on this cluster), so it holds it until killed.
async fn a_running_apply_holds_the_lock_until_it_ends_or_dies(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "holder").await;
    let stack = env.mission_stack("holder");
    let holder = Running::spawn(env.command(&["apply", &stack, "--auto-approve"]));
    holder.until("Waiting for", Duration::from_secs(60)).await;

    // With the state in the cluster, another working directory with its own
    // copy of the stack (no shared files) meets the same lock; a file state
    // is found from the stack file, so there the second run is beside it.
    let elsewhere = match backend {
        Backend::Kubernetes => env.path("elsewhere"),
        Backend::File => env.dir.path().to_path_buf(),
    };
    if backend == Backend::Kubernetes {
        std::fs::create_dir_all(&elsewhere).unwrap();
        for file in [stack.as_str(), "mistral-7b.rayservice.yaml"] {
            std::fs::copy(env.path(file), elsewhere.join(file)).unwrap();
        }
    }
    let started = std::time::Instant::now();
    let second = env.rayform_in(&elsewhere, &["plan", &stack]).code(1);
    assert!(started.elapsed() < Duration::from_secs(10));
    second.stderr_has("state is locked");
    second.stderr_has(&format!("pid {}", holder.pid()));

    holder.kill();
    let after = env.rayform_once_unlocked(&["plan", &stack], Duration::from_secs(40));
    assert_eq!(after.code, 0, "{}", after.all());
    if backend == Backend::Kubernetes {
        assert!(
            started.elapsed() >= Duration::from_secs(10),
            "a Lease left by a killed holder is respected until it expires"
        );
    }
}
on_both_backends!(a_running_apply_holds_the_lock_until_it_ends_or_dies);

#[tokio::test]
async fn a_held_lock_makes_a_second_run_fail_at_once_naming_the_holder() {
    let env = Env::new(Profile::V1, "lock").await;
    let stack = env.mission_stack("lock");
    // A plan of a stack with no state yet takes no lock (it has nothing to
    // protect and writes nothing); with a state, it waits for no one.
    env.rayform(&["init", &stack]).ok();
    let held =
        rayform::state::lock::StateLock::acquire(&env.path("state/lock.json"), "apply").unwrap();
    let started = std::time::Instant::now();
    let run = env.rayform(&["plan", &stack]).code(1);
    assert!(started.elapsed() < Duration::from_secs(10));
    run.stderr_has("state is locked");
    assert!(
        run.stderr.contains(&format!("pid {}", std::process::id())),
        "{}",
        run.stderr
    );
    run.stderr_has(&held.info.id);
    drop(held);
    env.rayform(&["plan", &stack]).ok();
}

async fn a_killed_apply_is_finished_by_the_next_one(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "kill9").await;
    let stack = env.mission_stack("kill9");
    let apply = ["apply", &stack, "--auto-approve", "--no-wait"];
    for delay_ms in [40, 120, 250] {
        let mut child = env
            .command(&[&apply[..], &["--parallelism", "1"]].concat())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Whatever was written reads as a valid state (or there is none yet).
        let pulled = env.rayform(&["state", "pull", &stack]);
        if pulled.code == 0 {
            serde_json::from_str::<serde_json::Value>(&pulled.stdout)
                .expect("state is never half-written");
        }
    }
    env.rayform_once_unlocked(&apply, Duration::from_secs(40))
        .ok();
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    let state_secret = usize::from(backend == Backend::Kubernetes);
    assert_eq!(env.count("v1", "Secret").await, 1 + state_secret);
    assert_eq!(env.count("ray.io/v1", "RayService").await, 1);
    assert_eq!(
        env.state("kill9")["resources"].as_object().unwrap().len(),
        4
    );
}
on_both_backends!(a_killed_apply_is_finished_by_the_next_one);

#[tokio::test]
async fn the_token_never_leaves_the_secret() {
    let env = Env::new(Profile::V1, "secrets").await;
    let stack = env.mission_stack("secrets");
    let mut texts = BTreeMap::new();
    env.rayform(&["init", &stack]).ok();
    let plan = env
        .rayform(&["-vv", "plan", &stack, "--out", "saved.plan"])
        .ok();
    texts.insert("plan output".to_string(), plan.all());
    texts.insert(
        "plan --json".to_string(),
        env.rayform(&["-vv", "plan", &stack, "--json"]).ok().all(),
    );
    texts.insert(
        "saved plan".to_string(),
        std::fs::read_to_string(env.path("saved.plan")).unwrap(),
    );
    // `show` renders the saved plan as `plan` did, offline.
    let shown = env.rayform(&["show", "saved.plan"]).ok();
    let planned: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| l.contains(" will be "))
        .collect();
    assert!(planned.len() >= 4, "{}", plan.stdout);
    for line in planned {
        shown.stdout_has(line);
    }
    let shown_json: serde_json::Value =
        serde_json::from_str(&env.rayform(&["show", "saved.plan", "--json"]).ok().stdout)
            .expect("show --json prints JSON");
    assert!(shown_json.is_object());
    texts.insert("show".to_string(), shown.all());
    texts.insert("show --json".to_string(), shown_json.to_string());
    // Logs at the finest level anything allows, kube's requests included.
    let traced = env
        .command(&["-vv", "apply", "saved.plan", "--no-wait"])
        .env("RAYFORM_LOG", "trace")
        .output()
        .expect("run rayform");
    let traced = crate::support::Run::from(traced).ok();
    traced.stderr_has("rayform::apply");
    texts.insert("apply output (RAYFORM_LOG=trace)".to_string(), traced.all());

    // A new token: shown as changed, never as itself.
    let rotated = env
        .command(&["-vv", "plan", &stack])
        .env("HUGGING_FACE_HUB_TOKEN", format!("{}-rotated", env.token))
        .output()
        .unwrap();
    let rotated_out = String::from_utf8_lossy(&rotated.stdout).into_owned();
    assert!(
        rotated_out.contains("(sensitive value changed)"),
        "{rotated_out}"
    );
    assert!(
        rotated_out.contains("rayservice.secrets")
            || rotated_out.contains("rayservice.mistral-7b will be updated"),
        "a new token rolls the RayService: {rotated_out}"
    );
    texts.insert(
        "rotated plan".to_string(),
        format!("{rotated_out}{}", String::from_utf8_lossy(&rotated.stderr)),
    );

    let state_path = env.path("state/secrets.json");
    texts.insert(
        "state file".to_string(),
        std::fs::read_to_string(&state_path).unwrap(),
    );
    texts.insert(
        "destroy output".to_string(),
        env.rayform(&["-vv", "destroy", &stack, "--auto-approve"])
            .ok()
            .all(),
    );
    assert_no_token(&env.token, &texts);

    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&state_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn a_missing_token_variable_is_named_and_nothing_is_written() {
    let env = Env::new(Profile::V1, "noenv").await;
    let stack = env.mission_stack("noenv");
    let out = env
        .command(&["apply", &stack, "--auto-approve", "--no-wait"])
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("HUGGING_FACE_HUB_TOKEN") && stderr.contains("not set"),
        "{stderr}"
    );
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_none()
    );
    assert!(!env.path("state/noenv.json").exists());
}

#[tokio::test]
async fn an_object_rayform_did_not_create_is_not_taken_over() {
    let env = Env::new(Profile::V1, "adopt").await;
    let stack = env.mission_stack("adopt");
    env.apply_as(
        "kubectl",
        "v1",
        "Secret",
        Some(&env.ns),
        "hf-token",
        json!({"stringData": {"HUGGING_FACE_HUB_TOKEN": "by-hand"}}),
    )
    .await;
    let plan = env.rayform(&["plan", &stack]).code(1);
    plan.stdout_has("already exists and was not created by rayform");
    plan.stdout_has("--adopt secret.hf-token");
    env.rayform(&[
        "apply",
        &stack,
        "--auto-approve",
        "--no-wait",
        "--adopt",
        "secret.hf-token",
    ])
    .ok();
    let secret = env
        .get("v1", "Secret", Some(&env.ns), "hf-token")
        .await
        .unwrap();
    assert_eq!(
        secret["metadata"]["labels"]["rayform.io/stack"],
        json!("adopt")
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
async fn plans_speak_terraform_json_and_apply_asks_first() {
    let env = Env::new(Profile::V1, "habits").await;
    let stack = env.mission_stack("habits");
    let json_plan = env.rayform(&["plan", &stack, "--json"]).ok();
    let plan: serde_json::Value =
        serde_json::from_str(&json_plan.stdout).expect("plan --json is JSON");
    assert_eq!(plan["format_version"], json!("1.1"));
    assert_eq!(
        plan["summary"],
        json!({"add": 2, "change": 0, "destroy": 0, "patch": 2, "revert": 0, "release": 0, "forget": 0})
    );
    assert_eq!(plan["has_changes"], json!(true));
    let text = env.rayform(&["plan", &stack]).ok();
    text.stdout_has("makes Karpenter treat the nodes launched from it as drifted");

    // Without a terminal and without --auto-approve, nothing happens.
    let refused = env.rayform(&["apply", &stack, "--no-wait"]).code(1);
    refused.stdout_has("needs confirmation");
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_none()
    );

    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    let again = env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert!(
        again.stdout.contains("Plan: 0 to destroy, 0 to revert."),
        "destroy is idempotent: {}",
        again.stdout
    );
}

#[tokio::test]
async fn force_unlock_checks_the_id_and_never_breaks_a_live_holders_lock() {
    let env = Env::new(Profile::V1, "unlock").await;
    let stack = env.mission_stack("unlock");
    // A plan takes the lock of a stack that has a state.
    env.rayform(&["init", &stack]).ok();
    let held =
        rayform::state::lock::StateLock::acquire(&env.path("state/unlock.json"), "apply").unwrap();
    let id = held.info.id.clone();
    let wrong = env.rayform(&["force-unlock", &stack, "not-the-id"]).code(1);
    wrong.stderr_has("does not match the current lock");
    let alive = env.rayform(&["force-unlock", &stack, &id]).code(1);
    alive.stderr_has("held by a running process");
    // The record can say anything (another host, a dead pid): the holder is
    // alive as long as its OS lock is, and that lock is what decides.
    let record = format!(
        r#"{{"id":"{id}","pid":999999999,"host":"elsewhere","operation":"apply","since":"2026-01-01T00:00:00Z"}}"#
    );
    std::fs::write(env.path("state/unlock.json.lock"), &record).unwrap();
    let elsewhere = env.rayform(&["force-unlock", &stack, &id]).code(1);
    elsewhere.stderr_has("held by a running process");
    env.rayform(&["plan", &stack])
        .code(1)
        .stderr_has("state is locked");
    // A holder killed with -9 loses its OS lock but leaves its record: the
    // record alone blocks nobody, and force-unlock clears it.
    drop(held);
    std::fs::write(env.path("state/unlock.json.lock"), &record).unwrap();
    env.rayform(&["force-unlock", &stack, &id]).ok();
    assert_eq!(
        std::fs::read_to_string(env.path("state/unlock.json.lock")).unwrap(),
        ""
    );
    env.rayform(&["plan", &stack]).ok();
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
async fn an_object_that_lost_its_label_is_still_destroyed_and_a_namesake_is_left_alone() {
    let env = Env::new(Profile::V1, "unlabelled").await;
    let stack = env.mission_stack("unlabelled");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    // Someone strips the label from the RayService (a GPU cluster keeps running).
    let unlabel = json!({"metadata": {"labels": {"rayform.io/stack": null}}});
    env.merge_as(
        "someone",
        "ray.io/v1",
        "RayService",
        Some(&env.ns),
        "mistral-7b",
        unlabel,
    )
    .await;
    // And replaces the Secret with one of its own under the same name.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    secrets
        .delete("hf-token", &Default::default())
        .await
        .unwrap();
    let theirs =
        serde_json::from_value(json!({"metadata": {"name": "hf-token"}, "stringData": {"k": "v"}}))
            .unwrap();
    secrets.create(&Default::default(), &theirs).await.unwrap();

    let plan = env.rayform(&["plan", &stack, "--destroy"]).ok();
    plan.stdout_has("label was removed; the uid is the one rayform created");
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert!(
        env.get("ray.io/v1", "RayService", Some(&env.ns), "mistral-7b")
            .await
            .is_none(),
        "the unlabelled RayService rayform created was forgotten, not deleted"
    );
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_some(),
        "someone else's Secret of the same name was deleted"
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
    env.rayform(&["plan", "forgetonly.toml"])
        .ok()
        .stdout_has("Plan: 0 to add, 0 to change, 0 to destroy, 0 to patch, 1 to forget.");
    // Forgetting is a change a person approves: the state lets go of it.
    env.rayform(&["apply", "forgetonly.toml"])
        .code(1)
        .stdout_has("needs confirmation");
    assert!(state().contains("secret.dropped"));
    env.rayform(&["apply", "forgetonly.toml", "--auto-approve"])
        .ok()
        .stdout_has("0 patched, 1 forgotten.");
    assert!(!state().contains("secret.dropped"), "{}", state());
}

#[tokio::test]
async fn a_journal_damaged_in_the_middle_is_read_up_to_the_damage_and_said_so() {
    let env = Env::new(Profile::V1, "tornjournal").await;
    let stack = env.mission_stack("tornjournal");
    env.rayform(&["init", &stack]).ok();
    let state = env.state("tornjournal");
    // What a killed run leaves, with its third line damaged (a power cut
    // can leave a block of another file, or of zeroes, inside a file).
    let put = |name: &str| {
        json!({"put": {"address": format!("manifest.{name}"), "entry": {
            "api_version": "v1", "kind": "ConfigMap", "name": name,
            "namespace": env.ns, "desired_fingerprint": "sha256:d",
            "live_fingerprint": "sha256:l",
        }}})
        .to_string()
    };
    let header = json!({"journal": 1, "lineage": state["lineage"], "serial": state["serial"]});
    let lines = [header.to_string(), put("a"), "\0\0\0\0".into(), put("c")];
    env.write("state/tornjournal.json.journal", &(lines.join("\n") + "\n"));

    let list = env.rayform(&["state", "list", &stack]).ok();
    assert_eq!(
        list.stdout, "manifest.a\n",
        "nothing past the damage is loaded"
    );
    list.stderr_has("Warning: journal ");
    list.stderr_has("tornjournal.json.journal is damaged at line 3");
    list.stderr_has("the 1 line(s) after it were not read");
}

#[tokio::test]
async fn state_list_show_and_rm_read_and_edit_the_state_without_touching_the_cluster() {
    let env = Env::new(Profile::V1, "statecmd").await;
    let stack = env.mission_stack("statecmd");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let list = env.rayform(&["state", "list", &stack]).ok();
    let listed: Vec<&str> = list.stdout.lines().collect();
    assert!(
        listed.contains(&"secret.hf-token")
            && listed.contains(&format!("nodepool.{}", env.pool).as_str()),
        "{listed:?}"
    );

    let show = env
        .rayform(&["state", "show", &stack, "secret.hf-token"])
        .ok();
    show.stdout_has("kind:             Secret (v1)");
    show.stdout_has("uid:");
    let pool = env
        .rayform(&["state", "show", &stack, &format!("nodepool.{}", env.pool)])
        .ok();
    pool.stdout_has(r#"/spec/disruption/consolidateAfter: "30s" → "600s""#);
    assert_no_token(
        &env.token,
        &BTreeMap::from([("state show".to_string(), show.all())]),
    );

    env.rayform(&["state", "show", &stack, "bogus"])
        .code(1)
        .stderr_has("is not an address");
    let unknown = env
        .rayform(&["state", "rm", &stack, "secret.hf-token", "secret.nope"])
        .code(1);
    unknown.stderr_has("the state does not track secret.nope");
    // All or nothing: the known address is still tracked.
    assert!(
        env.rayform(&["state", "list", &stack])
            .ok()
            .stdout
            .contains("secret.hf-token")
    );

    env.rayform(&["state", "rm", &stack, "secret.hf-token"])
        .ok()
        .stdout_has("Removed secret.hf-token");
    // Still labelled, but no longer taken back without being asked.
    let plan = env.rayform(&["plan", &stack]).code(1);
    assert!(
        plan.all().contains("--adopt secret.hf-token"),
        "{}",
        plan.all()
    );
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_some(),
        "an object removed from the state is no longer rayform's to delete"
    );
}

#[tokio::test]
async fn a_second_state_of_the_same_stack_name_does_not_claim_the_first_ones_objects() {
    let env = Env::new(Profile::V1, "lineage").await;
    let stack = format!(
        "[stack]\nname = \"lineage\"\nnamespace = \"{}\"\n\n[secret.token.data]\nK = {{ env = \"HUGGING_FACE_HUB_TOKEN\" }}\n",
        env.ns
    );
    env.write("lineage.toml", &stack);
    env.rayform(&[
        "apply",
        "lineage.toml",
        "--state",
        "a.json",
        "--auto-approve",
    ])
    .ok();
    // Same stack name, another state file (another laptop, a lost file): the
    // label matches, the lineage does not.
    let other = env
        .rayform(&["plan", "lineage.toml", "--state", "b.json"])
        .code(1);
    assert!(
        other
            .all()
            .contains("was made by another rayform state of this stack name"),
        "{}",
        other.all()
    );
    env.rayform(&[
        "destroy",
        "lineage.toml",
        "--state",
        "b.json",
        "--auto-approve",
    ])
    .ok();
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "token")
            .await
            .is_some(),
        "destroy with another state deleted it"
    );
    env.rayform(&[
        "destroy",
        "lineage.toml",
        "--state",
        "a.json",
        "--auto-approve",
    ])
    .ok();
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "token")
            .await
            .is_none()
    );
}

#[tokio::test]
async fn the_default_state_is_found_from_the_stack_file_not_the_working_directory() {
    let env = Env::new(Profile::V1, "statepath").await;
    let file = env.mission_stack("statepath");
    // The repository layout: stacks/ and state/ side by side.
    std::fs::create_dir(env.path("stacks")).unwrap();
    for f in [file.as_str(), "mistral-7b.rayservice.yaml"] {
        std::fs::rename(env.path(f), env.path(&format!("stacks/{f}"))).unwrap();
    }
    env.rayform(&[
        "apply",
        &format!("stacks/{file}"),
        "--auto-approve",
        "--no-wait",
    ])
    .ok();
    assert!(env.path("state/statepath.json").exists());
    let from_stacks = env.rayform_in(&env.path("stacks"), &["plan", &file, "--detailed-exitcode"]);
    assert_eq!(
        from_stacks.code, 0,
        "same state from stacks/:\n{}{}",
        from_stacks.stdout, from_stacks.stderr
    );
    assert!(!env.path("stacks/state").exists());
}

#[tokio::test]
async fn the_state_follows_the_cluster_once_it_tracks_nothing() {
    let a = Env::new(Profile::V1, "moved").await;
    let b = Env::new(Profile::V1beta1, "moved").await;
    let stack = format!(
        "[stack]\nname = \"moved\"\nnamespace = \"default\"\n\n[secret.{}.data]\nTOKEN = {{ env = \"HUGGING_FACE_HUB_TOKEN\" }}\n",
        a.ns
    );
    let (file_a, file_b) = (a.write("moved.toml", &stack), b.write("moved.toml", &stack));
    let state = a.path("moved-state.json");
    let state = state.to_str().unwrap();
    let (file_a, file_b) = (file_a.to_str().unwrap(), file_b.to_str().unwrap());
    a.rayform(&["apply", file_a, "--state", state, "--auto-approve"])
        .ok();
    a.rayform(&["destroy", file_a, "--state", state, "--auto-approve"])
        .ok();
    b.rayform(&["apply", file_b, "--state", state, "--auto-approve"])
        .ok();
    // The state now tracks B's Secret: on A it must be refused, not re-created there.
    let on_a = a.rayform(&["plan", file_a, "--state", state]).code(1);
    on_a.stderr_has("the state was written against");
    b.rayform(&["destroy", file_b, "--state", state, "--auto-approve"])
        .ok();
}

#[tokio::test]
async fn a_missing_kuberay_crd_is_said_plainly_and_apply_refuses() {
    let env = Env::new(Profile::V1, "nocrd").await;
    let stack = env.mission_stack("nocrd");
    let base = std::fs::read_to_string(env.path(&stack)).unwrap();
    // RayJob is a KubeRay kind whose CRD the test cluster does not install.
    env.write(&stack, &format!("{base}\n[manifest.job]\nobject = {{ apiVersion = \"ray.io/v1\", kind = \"RayJob\", spec = {{}} }}\n"));
    let plan = env.rayform(&["plan", &stack]).code(1);
    plan.stdout_has(
        "the cluster does not serve ray.io/v1 RayJob: the KubeRay CRDs are not installed",
    );
    plan.stdout_has("install the KubeRay operator");
    let apply = env
        .rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .code(1);
    apply.stderr_has("nothing was changed");
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
    refused.stderr_has("is not a rayform plan");
    refused.stderr_has("secret.hf-token: a create change without a body");
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
        refused.stderr_has("is not a rayform plan");
        refused.stderr_has(said);
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
    run.stderr_has("the plan has errors, so it was not saved");
    assert!(!env.path("bad.plan").exists());
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

#[tokio::test]
async fn moving_a_stack_to_another_namespace_is_refused_rather_than_orphaning() {
    let env = Env::new(Profile::V1, "movens").await;
    let stack = env.mission_stack("movens");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let text = std::fs::read_to_string(env.path(&stack)).unwrap();
    env.write(
        &stack,
        &text.replace(
            &format!("namespace = \"{}\"", env.ns),
            "namespace = \"elsewhere\"",
        ),
    );
    let plan = env.rayform(&["plan", &stack]).code(1);
    plan.stdout_has(&format!("lives in namespace `{}`", env.ns));
}

/// The stack's namespace edited after an apply: destroy still finds every
/// object where the state recorded it and deletes it, instead of looking in
/// the new namespace, finding nothing and forgetting objects that still run.
async fn destroy_after_a_namespace_edit_deletes_what_the_state_recorded(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "nsedit").await;
    let before = env.karpenter_specs().await;
    let stack = env.mission_stack("nsedit");
    let text = std::fs::read_to_string(env.path(&stack)).unwrap();
    // The state stays where it is: only the objects' namespace moves.
    let text = text.replace(
        "[stack]\n",
        &format!("[stack]\nstate_namespace = \"{}\"\n", env.ns),
    );
    env.write(&stack, &text);
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    env.write(
        &stack,
        &text.replace(
            &format!("\nnamespace = \"{}\"", env.ns),
            "\nnamespace = \"elsewhere\"",
        ),
    );
    let plan = env.rayform(&["plan", &stack, "--destroy"]).ok();
    plan.stdout_has("Plan: 2 to destroy, 2 to revert.");
    let destroy = env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    destroy.stdout_has("Destroy complete! Resources: 2 destroyed, 2 reverted.");
    for (api_version, kind, name) in [
        ("v1", "Secret", "hf-token"),
        ("ray.io/v1", "RayService", "mistral-7b"),
    ] {
        assert!(
            env.get(api_version, kind, Some(&env.ns), name)
                .await
                .is_none(),
            "{kind} {name} is still running in {}",
            env.ns
        );
    }
    assert_eq!(env.karpenter_specs().await, before);
    assert!(
        env.state("nsedit")["resources"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}
on_both_backends!(destroy_after_a_namespace_edit_deletes_what_the_state_recorded);

/// A no-op plan costs a LIST per kind and a GET per Karpenter object,
/// however many resources the stack has.
#[tokio::test]
async fn a_no_op_plan_costs_requests_per_kind_not_per_resource() {
    let env = Env::new(Profile::V1, "requests").await;
    let stack = env.mission_stack("requests");
    let base = std::fs::read_to_string(env.path(&stack)).unwrap();
    let mut counts = Vec::new();
    for configmaps in [5, 40] {
        let mut text = base.clone();
        for i in 0..configmaps {
            text.push_str(&format!("\n[manifest.cm{i}]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ i = \"{i}\" }} }}\n"));
        }
        env.write(&stack, &text);
        env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
            .ok();
        let mark = env.audit_mark();
        let plan = env
            .rayform(&["-v", "plan", &stack, "--detailed-exitcode"])
            .code(0);
        let said = plan
            .stderr
            .lines()
            .find(|l| l.contains("API requests"))
            .expect("-v reports requests")
            .to_string();
        let wire: Vec<String> = env
            .requests_since(mark)
            .await
            .iter()
            .map(|e| format!("{} {}", e["verb"], e["objectRef"]["resource"]))
            .collect();
        counts.push((configmaps, said, wire));
    }
    // On the wire (the API server's audit log): Secrets, ConfigMaps and
    // RayServices one LIST each, NodePool and EC2NodeClass one GET each,
    // whatever the number of objects; and -v says as much.
    for (_, said, wire) in &counts {
        assert_eq!(wire.len(), 5, "{counts:?}");
        assert_eq!(
            wire.iter().filter(|r| r.starts_with("\"list\"")).count(),
            3,
            "{counts:?}"
        );
        assert!(said.contains("with 5 API requests"), "{counts:?}");
    }
}

#[tokio::test]
async fn a_delete_held_by_a_finalizer_is_watched_not_polled() {
    let env = Env::new(Profile::V1, "finalizer").await;
    let stack = env.write(
        "held.toml",
        &format!(
            "[stack]\nname = \"held\"\nnamespace = \"{}\"\n\n[manifest.held]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ a = \"b\" }} }}\n",
            env.ns
        ),
    );
    let stack = stack.to_str().unwrap();
    env.rayform(&["apply", stack, "--auto-approve"]).ok();
    let hold = |finalizers: Value| json!({"metadata": {"finalizers": finalizers}});
    env.merge_as(
        "someone",
        "v1",
        "ConfigMap",
        Some(&env.ns),
        "held",
        hold(json!(["test.rayform.io/hold"])),
    )
    .await;

    let mark = env.audit_mark();
    let destroy = Running::spawn(env.command(&["destroy", stack, "--auto-approve"]));
    destroy
        .until("held: Destroying...", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    env.merge_as(
        "someone",
        "v1",
        "ConfigMap",
        Some(&env.ns),
        "held",
        hold(Value::Null),
    )
    .await;
    destroy.finish().ok();
    let gets = env
        .requests_since(mark)
        .await
        .into_iter()
        .filter(|e| e["verb"] == "get" && e["objectRef"]["name"] == "held")
        .count();
    assert!(
        gets <= 2,
        "a 4 s finalizer cost {gets} GETs: the wait polls instead of watching"
    );
    assert!(
        env.get("v1", "ConfigMap", Some(&env.ns), "held")
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_run_whose_lease_is_taken_over_stops_without_writing_the_state() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "leaselost").await;
    let stack = env.mission_stack("leaselost");
    let holder = Running::spawn(env.command(&["apply", &stack, "--auto-approve"]));
    holder.until("Waiting for", Duration::from_secs(60)).await;
    let serial = || async {
        env.get("v1", "Secret", Some(&env.ns), "rayform-state-leaselost")
            .await
            .expect("the state Secret")["metadata"]["annotations"]["rayform.io/serial"]
            .clone()
    };
    let before = serial().await;

    // Someone else takes the Lease, as a run would once it had expired.
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let mut lease = leases.get("rayform-lock-leaselost").await.unwrap();
    lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    leases
        .replace("rayform-lock-leaselost", &Default::default(), &lease)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let run = holder.finish();
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(started.elapsed() < Duration::from_secs(20));
    run.stderr_has("the state lock was lost");
    assert_eq!(serial().await, before, "no state written after the loss");
    // Its help line runs as printed. The intruder never renews the Lease, so
    // the suggested run sees a dead holder and takes over after a duration.
    crate::cli::run_suggested(&env, &run)
        .ok()
        .stderr_has("Taking over the state lock");
}

#[tokio::test]
async fn import_takes_an_existing_object_into_the_state_and_the_plan_shows_the_rest() {
    let env = Env::new(Profile::V1, "import").await;
    let stack = env.mission_stack("import");
    // Made by hand before rayform, with the same token.
    env.apply_as(
        "someone",
        "v1",
        "Secret",
        Some(&env.ns),
        "hf-token",
        json!({"stringData": {"HUGGING_FACE_HUB_TOKEN": env.token}}),
    )
    .await;
    let uid = env
        .get("v1", "Secret", Some(&env.ns), "hf-token")
        .await
        .unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = env.rayform(&["plan", &stack]).code(1);
    assert!(refused.all().contains("was not created by rayform"));

    env.rayform(&["import", &stack, "secret.hf-token"])
        .ok()
        .stdout_has("Imported secret.hf-token");
    env.rayform(&["state", "show", &stack, "secret.hf-token"])
        .ok()
        .stdout_has(&uid);
    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has("imported: rayform adds its labels");
    // The import recorded the data as found (as keyed fingerprints): the same
    // token is not "changed outside rayform".
    assert!(
        !plan.stdout.contains("changed outside rayform"),
        "{}",
        plan.stdout
    );
    let state = env.state("import");
    let recorded = &state["resources"]["secret.hf-token"];
    assert!(
        recorded["secret_fingerprints"]["HUGGING_FACE_HUB_TOKEN"]
            .as_str()
            .is_some_and(|f| f.starts_with("hmac-sha256:")),
        "{recorded}"
    );
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let secret = env
        .get("v1", "Secret", Some(&env.ns), "hf-token")
        .await
        .unwrap();
    assert_eq!(secret["metadata"]["uid"], json!(uid), "the same object");
    assert_eq!(
        secret["metadata"]["labels"]["rayform.io/stack"],
        json!("import")
    );
    env.rayform(&["import", &stack, "secret.hf-token"])
        .code(1)
        .stderr_has("already in the state");
    env.rayform(&["import", &stack, "nodepool.nothere"])
        .code(1)
        .stderr_has("is not in");
}

/// The API server goes away for seconds in the middle of an apply, then in
/// the middle of a destroy (an upgrade, a crash): the run stops with what it
/// finished recorded, and the next one completes the work.
async fn an_api_server_restart_mid_apply_and_mid_destroy_is_repaired_by_the_next_run(
    backend: Backend,
) {
    let cluster = OwnCluster::up(Profile::V1);
    let env = Env::on_cluster(backend, Profile::V1, cluster.kubeconfig.clone(), "restart").await;
    let n = 400;
    let stack = many_config_maps(&env, "restart", n);
    let once = |verb: &str| {
        let mut args = vec![verb.to_string(), stack.clone(), "--auto-approve".into()];
        if verb == "apply" {
            args.push("--no-wait".into());
        }
        args.extend(["--parallelism".into(), "1".into()]);
        args
    };

    let apply = once("apply");
    let args: Vec<&str> = apply.iter().map(String::as_str).collect();
    let running = Running::spawn(env.command(&args));
    running
        .until("manifest.cm5: Created", Duration::from_secs(60))
        .await;
    cluster.restart_apiserver();
    let first = running.finish();
    assert!(!first.all().contains("panicked"), "{}", first.all());
    let live = env.count("v1", "ConfigMap").await;
    assert!(
        (6..n).contains(&live),
        "the restart landed mid-apply: {live} of {n} live; {}",
        first.all()
    );
    assert_eq!(first.code, 1, "{}", first.all());
    env.rayform_once_unlocked(&args, Duration::from_secs(40))
        .ok();
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    assert_eq!(env.count("v1", "ConfigMap").await, n);

    let destroy = once("destroy");
    let args: Vec<&str> = destroy.iter().map(String::as_str).collect();
    let running = Running::spawn(env.command(&args));
    running
        .until("Destruction complete", Duration::from_secs(60))
        .await;
    cluster.restart_apiserver();
    let first = running.finish();
    assert!(!first.all().contains("panicked"), "{}", first.all());
    let left = env.count("v1", "ConfigMap").await;
    assert!(
        (1..n).contains(&left),
        "the restart landed mid-destroy: {left} of {n} left; {}",
        first.all()
    );
    env.rayform_once_unlocked(&args, Duration::from_secs(40))
        .ok();
    assert_eq!(env.count("v1", "ConfigMap").await, 0);
    assert!(
        env.state("restart")["resources"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}
on_both_backends!(an_api_server_restart_mid_apply_and_mid_destroy_is_repaired_by_the_next_run);

#[tokio::test]
async fn rbac_that_forbids_the_state_lease_is_named_with_what_to_grant() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "rbaclease").await;
    let stack = env.mission_stack("rbaclease");
    let run = env
        .rayform(&["--context", "restricted", "plan", &stack])
        .code(1);
    let text = run.all();
    assert!(text.contains("forbidden: cannot create leases"), "{text}");
    assert!(
        text.contains("get, create and update on secrets and leases.coordination.k8s.io"),
        "{text}"
    );
    assert!(text.contains("--backend file"), "{text}");
}

#[tokio::test]
async fn a_missing_state_namespace_is_named_with_how_to_create_it() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "statens").await;
    let stack = env.mission_stack("statens");
    let run = env
        .rayform(&["--state-namespace", "no-such-ns", "plan", &stack])
        .code(1);
    run.stderr_has("the state namespace `no-such-ns` does not exist");
    run.stderr_has("kubectl create namespace no-such-ns");
}

#[tokio::test]
async fn state_moves_between_backends_with_pull_and_push() {
    let env = Env::new(Profile::V1, "migrate").await;
    let stack = env.mission_stack("migrate");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let pulled = env.rayform(&["state", "pull", &stack]).ok();
    env.write("migrate.state.json", &pulled.stdout);
    let to_cluster = ["--backend", "kubernetes"];
    env.rayform(
        &[
            &to_cluster[..],
            &["state", "push", &stack, "migrate.state.json"],
        ]
        .concat(),
    )
    .ok()
    .stdout_has("Pushed migrate.state.json (4 resources");
    // The cluster's copy is the same state: nothing to do, same lineage.
    env.rayform(&[&to_cluster[..], &["plan", &stack, "--detailed-exitcode"]].concat())
        .code(0);
    let moved: serde_json::Value = serde_json::from_str(
        &env.rayform(&[&to_cluster[..], &["state", "pull", &stack]].concat())
            .ok()
            .stdout,
    )
    .unwrap();
    let original: serde_json::Value = serde_json::from_str(&pulled.stdout).unwrap();
    assert_eq!(moved["lineage"], original["lineage"]);
    assert_eq!(moved["resources"], original["resources"]);
    // An older copy is refused: the cluster's state has moved on.
    env.rayform(
        &[
            &to_cluster[..],
            &["state", "push", &stack, "migrate.state.json"],
        ]
        .concat(),
    )
    .code(1)
    .stderr_has("newer than");
    env.rayform(&[&to_cluster[..], &["destroy", &stack, "--auto-approve"]].concat())
        .ok();
}

#[tokio::test]
async fn ctrl_c_gives_the_lease_back_at_once() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "leasectrlc").await;
    let stack = env.mission_stack("leasectrlc");
    let holder = Running::spawn(env.command(&["apply", &stack, "--auto-approve"]));
    holder.until("Waiting for", Duration::from_secs(60)).await;
    holder.interrupt();
    assert_eq!(holder.finish().code, 130);
    // No waiting out the Lease: the interrupted run gave it back.
    let started = std::time::Instant::now();
    env.rayform(&["plan", &stack]).ok();
    assert!(started.elapsed() < Duration::from_secs(10));
    let lease = env
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some(&env.ns),
            "rayform-lock-leasectrlc",
        )
        .await
        .expect("the Lease stays, without a holder");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}

/// Ctrl-C twice stops at once, and still gives the Lease back: the next CI
/// job is not told "locked" for the Lease's duration.
#[tokio::test]
async fn ctrl_c_twice_still_gives_the_lease_back() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "leasectrlc2").await;
    let stack = many_config_maps(&env, "leasectrlc2", 400);
    let holder =
        Running::spawn(env.command(&["apply", &stack, "--auto-approve", "--parallelism", "1"]));
    holder.until("Created", Duration::from_secs(60)).await;
    holder.interrupt();
    holder.interrupt();
    assert_eq!(holder.finish().code, 130);
    let lease = env
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some(&env.ns),
            "rayform-lock-leasectrlc2",
        )
        .await
        .expect("the Lease stays, without a holder");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}

/// A kill between a Karpenter patch and its state record. With the state in
/// the cluster the record follows the patch by up to a second, so a kill on
/// the "Patched" line lands there; the next apply must still know the
/// original values (from the object's own annotation), and destroy restore them.
#[tokio::test]
async fn a_kill_between_a_karpenter_patch_and_its_record_still_reverts_exactly() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "patchkill").await;
    let before = env.karpenter_specs().await;
    let stack = env.mission_stack("patchkill");
    // Work that comes after the patch, so the run is still going when the
    // kill lands (the mission stack alone finishes in a few milliseconds).
    let mut text = std::fs::read_to_string(env.path(&stack)).unwrap();
    for i in 0..80 {
        text.push_str(&format!(
            "\n[manifest.after{i}]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ i = \"{i}\" }} }}\ndepends_on = [\"nodepool.{}\"]\n",
            env.pool
        ));
    }
    env.write(&stack, &text);
    let running = env.spawn_apply(&stack, "1");
    running
        .until(
            &format!("nodepool.{}: Patched", env.pool),
            Duration::from_secs(60),
        )
        .await;
    running.kill();
    assert_ne!(env.karpenter_specs().await.0, before.0, "the patch landed");
    let state = env.state("patchkill");
    assert!(
        state["resources"]
            .get(format!("nodepool.{}", env.pool))
            .is_none(),
        "the kill came before the patch was recorded: {state}"
    );

    let apply = ["apply", &stack, "--auto-approve", "--no-wait"];
    env.rayform_once_unlocked(&apply, Duration::from_secs(40))
        .ok();
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(
        env.karpenter_specs().await,
        before,
        "the originals recorded on the object were restored"
    );
}

/// The first Ctrl-C stops new work but lets what is in flight finish and be
/// recorded: when the run exits, the state and the cluster agree exactly.
async fn ctrl_c_mid_apply_finishes_what_is_in_flight_and_records_it(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "ctrlcapply").await;
    let n = 400;
    let stack = many_config_maps(&env, "ctrlcapply", n);
    let running = env.spawn_apply(&stack, "4");
    running
        .until("manifest.cm20: Created", Duration::from_secs(60))
        .await;
    running.interrupt();
    let run = running.finish().code(130);
    run.stderr_has("interrupted by Ctrl-C: stopped:");
    run.stderr_has("not done: manifest.");
    let live = env.count("v1", "ConfigMap").await;
    let recorded = env.state("ctrlcapply")["resources"]
        .as_object()
        .unwrap()
        .len();
    assert!((20..n).contains(&live), "stopped mid-apply: {live} of {n}");
    assert_eq!(
        recorded, live,
        "every object written is recorded, and no other"
    );
    env.rayform(&["plan", &stack])
        .ok()
        .stdout_has(&format!("Plan: {} to add, 0 to change", n - live));
}
on_both_backends!(ctrl_c_mid_apply_finishes_what_is_in_flight_and_records_it);
