//! The control plane is a real one: schema validation, dry runs, RBAC and
//! connection failures answer as a cluster would.

use serde_json::json;

use crate::support::{Env, Profile};

#[tokio::test]
async fn the_api_server_answers_a_server_side_dry_run_apply() {
    let env = Env::new(Profile::V1, "dryrun").await;
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}, "data": {"a": "1"}});
    let params = kube::api::PatchParams::apply("test").dry_run();
    let answered = api
        .patch("probe", &params, &kube::api::Patch::Apply(&body))
        .await
        .expect("dry-run apply");
    assert_eq!(
        answered
            .metadata
            .managed_fields
            .as_ref()
            .map(|m| m[0].manager.clone()),
        Some(Some("test".into()))
    );
    assert!(
        api.get_opt("probe").await.unwrap().is_none(),
        "a dry run persists nothing"
    );
}

#[tokio::test]
async fn a_schema_invalid_rayservice_is_rejected_with_the_servers_message() {
    let env = Env::new(Profile::V1, "invalid").await;
    let stack = env.mission_stack("invalid");
    let manifest = std::fs::read_to_string(env.path("mistral-7b.rayservice.yaml")).unwrap();
    env.write(
        "mistral-7b.rayservice.yaml",
        &manifest.replace("replicas: 1\n", "replicas: many\n"),
    );
    let plan = env.rayform(&["plan", &stack]).code(1);
    plan.stdout_has("rejected by the API server");
    plan.stdout_has("spec.rayClusterConfig.workerGroupSpecs[0].replicas");
    let apply = env
        .rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .code(1);
    apply.stderr_has("nothing was changed");
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_forbidden_verb_says_which_and_what_to_do() {
    let env = Env::new(Profile::V1, "rbac").await;
    let stack = env.mission_stack("rbac");
    let plan = env
        .rayform(&["--context", "restricted", "plan", &stack])
        .code(1);
    let text = plan.all();
    assert!(
        text.contains("forbidden: cannot dry-run patch nodepools.karpenter.sh"),
        "{text}"
    );
    assert!(text.contains("RBAC"), "{text}");
}

#[tokio::test]
async fn an_unreachable_cluster_and_an_unknown_context_are_explained() {
    let env = Env::new(Profile::V1, "unreachable").await;
    let stack = env.mission_stack("unreachable");
    let kubeconfig = std::fs::read_to_string(&env.kubeconfig).unwrap();
    let port = kubeconfig
        .split("https://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap();
    env.write(
        "dead.kubeconfig",
        &kubeconfig.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:1"),
    );
    let run = env
        .rayform(&["--kubeconfig", "dead.kubeconfig", "plan", &stack])
        .code(1);
    run.stderr_has("cannot reach the cluster at https://127.0.0.1:1");
    run.stderr_has("--context");

    let run = env.rayform(&["--context", "nope", "plan", &stack]).code(1);
    run.stderr_has("context `nope` is not in the kubeconfig; it has: admin, restricted");
}

#[tokio::test]
async fn logs_follow_rayform_log_and_the_verbosity_flags() {
    let env = Env::new(Profile::V1, "logs").await;
    let stack = env.mission_stack("logs");
    let quiet = env.rayform(&["plan", &stack]).ok();
    assert!(!quiet.stderr.contains("DEBUG"), "{}", quiet.stderr);

    let verbose = env.rayform(&["-v", "plan", &stack]).ok();
    verbose.stderr_has("rayform::observe");
    verbose.stderr_has("observed");
    // One format: the command line's own events are timestamped as the library's.
    verbose.stderr_has("connected to");
    assert!(
        verbose.stderr.lines().all(|l| !l.starts_with("debug:")),
        "{}",
        verbose.stderr
    );
    assert!(
        !verbose.stderr.contains("kube_client"),
        "-v is rayform's own events"
    );

    let requests = env.rayform(&["-vv", "plan", &stack]).ok();
    requests.stderr_has("kube_client");

    let filtered = env
        .command(&["plan", &stack])
        .env("RAYFORM_LOG", "rayform::cluster=trace")
        .output()
        .expect("run rayform");
    let filtered = crate::support::Run::from(filtered).ok();
    filtered.stderr_has("request");
    assert!(
        !filtered.stderr.contains("rayform::observe"),
        "{}",
        filtered.stderr
    );

    let bad = env
        .command(&["plan", &stack])
        .env("RAYFORM_LOG", "rayform=loud")
        .output()
        .expect("run rayform");
    let bad = crate::support::Run::from(bad).code(1);
    bad.stderr_has("RAYFORM_LOG=`rayform=loud` is not a log filter");
}

#[tokio::test]
async fn inside_a_pod_without_a_kubeconfig_the_service_account_is_tried() {
    let env = Env::new(Profile::V1, "incluster").await;
    let stack = env.mission_stack("incluster");
    let home = tempfile::tempdir().expect("tempdir");
    // A pod's environment, but this machine has no service-account token:
    // the error must come from the in-cluster attempt, not "no kubeconfig".
    let run = env
        .command(&["plan", &stack])
        .env_remove("KUBECONFIG")
        .env("HOME", home.path())
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", "1")
        .output()
        .expect("run rayform");
    let run = crate::support::Run::from(run).code(1);
    run.stderr_has("the in-cluster configuration (KUBERNETES_SERVICE_HOST is set) failed");

    let with_context = env
        .command(&["--context", "admin", "plan", &stack])
        .env_remove("KUBECONFIG")
        .env("HOME", home.path())
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .output()
        .expect("run rayform");
    crate::support::Run::from(with_context)
        .code(1)
        .stderr_has("--context admin needs a kubeconfig");
}
