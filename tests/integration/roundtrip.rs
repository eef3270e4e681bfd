//! A stack's whole life against a real API server: plan, apply, a no-op
//! plan, destroy, on each Karpenter profile; resources removed or targeted,
//! Terraform's habits, what a cluster without KubeRay says, and what a plan costs.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Backend, Env, Profile, Running, on_both_backends};

async fn mission_round_trip(profile: Profile, backend: Backend) {
    let env = Env::on(backend, profile, &format!("mission-{}", profile.name())).await;
    let before = env.karpenter_specs().await;
    let stack = env.mission_stack("mistral-7b");

    let plan = env
        .rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(2);
    assert_eq!(
        plan.line_starting("Plan: "),
        "Plan: 2 to add, 0 to change, 0 to destroy, 2 to patch."
    );
    let ((pool_api, pool_kind), (class_api, class_kind)) = (profile.pool(), profile.class());
    assert_eq!(
        plan.line_starting("Karpenter API: "),
        format!("Karpenter API: {pool_api} {pool_kind} + {class_api} {class_kind}")
    );

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
    assert_eq!(
        again.line_starting("No changes"),
        "No changes. The cluster matches the stack."
    );

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
    assert_eq!(
        plan.line_starting("- manifest.extra-config "),
        format!(
            "- manifest.extra-config will be deleted (v1 ConfigMap {}/extra-config)",
            env.ns
        )
    );
    assert_eq!(
        plan.line_starting("Plan: "),
        "Plan: 0 to add, 0 to change, 1 to destroy, 0 to patch."
    );
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
    assert_eq!(
        destroy.line_starting("Plan: "),
        "Plan: 0 to destroy, 0 to revert."
    );
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
    assert_eq!(
        plan.line_starting("Warning: resource targeting"),
        "Warning: resource targeting is in effect (secret.hf-token): the plan covers only those and what they depend on, so it may not show every change the stack needs; use it for exceptional cases, then run a plan without --target"
    );
    assert_eq!(
        plan.line_starting("Plan: "),
        "Plan: 1 to add, 0 to change, 0 to destroy, 0 to patch."
    );
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
    assert_eq!(
        destroy.line_starting("- rayservice.mistral-7b "),
        format!(
            "- rayservice.mistral-7b will be deleted (ray.io/v1 RayService {}/mistral-7b)",
            env.ns
        )
    );
    assert_eq!(
        destroy.line_starting("Plan: "),
        "Plan: 2 to destroy, 0 to revert."
    );
    let unknown = env
        .rayform(&["plan", &stack, "--target", "secret.nothere"])
        .code(1);
    assert_eq!(
        unknown.error_line(),
        format!("--target secret.nothere: no such resource in {stack} or its state")
    );
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
    assert_eq!(
        refused.line_starting("rayform apply "),
        "rayform apply needs confirmation, but standard input is not a terminal."
    );
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_none()
    );

    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    let again = env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(
        again.line_starting("Plan: "),
        "Plan: 0 to destroy, 0 to revert.",
        "destroy is idempotent"
    );
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
    assert_eq!(
        apply.error_line(),
        "the plan has errors; nothing was changed"
    );
}

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
