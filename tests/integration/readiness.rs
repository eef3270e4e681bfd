//! The readiness node against a real Ray Serve on loopback, with the KubeRay
//! operator stand-in moving the RayService's status.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Env, KubeRayStandIn, Profile, RayServe, Running, serve_turn};

/// A stack with one RayService serving the echo app, and the wait on it.
fn echo_stack(
    env: &Env,
    name: &str,
    url: &str,
    args: &str,
    route_prefix: &str,
    timeout: &str,
) -> String {
    let manifest = format!(
        r#"apiVersion: ray.io/v1
kind: RayService
metadata:
  name: echo
spec:
  serveConfigV2: |
    applications:
      - name: llm
        route_prefix: {route_prefix}
        import_path: echo_app:build
        args: {args}
  rayClusterConfig:
    rayVersion: "2.60.0"
    headGroupSpec:
      rayStartParams: {{}}
      template:
        spec:
          containers:
            - name: ray-head
              image: rayproject/ray:2.60.0
              ports: [{{containerPort: 8000, name: serve}}]
"#
    );
    env.write("echo.rayservice.yaml", &manifest);
    let stack = format!(
        "[stack]\nname = \"{name}\"\nnamespace = \"{}\"\n\n[rayservice.echo]\nmanifest = \"echo.rayservice.yaml\"\n\n\
         [wait.chat]\nrayservice = \"echo\"\nurl = \"{url}\"\ntimeout = \"{timeout}\"\ninterval = \"100ms\"\n",
        env.ns
    );
    let file = format!("{name}.toml");
    env.write(&file, &stack);
    file
}

#[tokio::test]
async fn ready_only_once_a_real_request_answers_not_when_the_route_is_listed() {
    let _turn = serve_turn().await;
    let env = Env::new(Profile::V1, "ready-sequence").await;
    let ray = RayServe::start(false);
    let stack = echo_stack(
        &env,
        "sequence",
        &ray.serve_url,
        "{model: echo, init_delay_s: 6}",
        "/",
        "3m",
    );
    let apply = Running::spawn(env.command(&["apply", &stack, "--auto-approve"]));

    apply
        .until(
            "Waiting for Serve's HTTP proxy to listen (cannot connect",
            Duration::from_secs(30),
        )
        .await;
    ray.start_proxy();
    apply
        .until(
            "Waiting for the route table (503 Route table is not populated yet.)",
            Duration::from_secs(60),
        )
        .await;
    let _standin = KubeRayStandIn::start(&env, &ray);
    apply
        .until(
            "Waiting for the probe GET /v1/models to answer (route / is listed",
            Duration::from_secs(90),
        )
        .await;
    let listed = Instant::now();
    let run = apply.finish().ok();
    assert!(
        listed.elapsed() >= Duration::from_secs(3),
        "returned {:?} after the route was listed, while the replica still sleeps 6 s in its constructor",
        listed.elapsed()
    );
    run.stdout_has(
        "rayservice.echo serves /v1/chat/completions (route prefix / → application `llm`)",
    );
    run.stdout_has(&format!(
        "Reach it at {}/v1/chat/completions",
        ray.serve_url
    ));
}

#[tokio::test]
async fn a_route_prefix_that_never_serves_the_path_times_out_with_a_clear_message() {
    let _turn = serve_turn().await;
    let env = Env::new(Profile::V1, "ready-prefix").await;
    let ray = RayServe::shared();
    let _standin = KubeRayStandIn::start(&env, &ray);
    let stack = echo_stack(
        &env,
        "prefix",
        &ray.serve_url,
        "{model: echo}",
        "/other",
        "20s",
    );
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    run.stderr_has("rayservice.echo did not serve /v1/chat/completions within 20s");
    run.stderr_has(r#"/-/routes: 200 {"/other":"llm"}"#);
    run.stderr_has("Waiting for a route prefix serving /v1/chat/completions");
}

#[tokio::test]
async fn a_failed_deploy_is_reported_with_serves_message() {
    let _turn = serve_turn().await;
    let env = Env::new(Profile::V1, "ready-fail").await;
    let ray = RayServe::shared();
    let _standin = KubeRayStandIn::start(&env, &ray);
    let stack = echo_stack(
        &env,
        "fail",
        &ray.serve_url,
        "{fail_on_init: 'no GPU in this test'}",
        "/",
        "2m",
    );
    let started = Instant::now();
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    run.stderr_has("Serve application `llm` failed to deploy");
    run.stderr_has("no GPU in this test");
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "a failed deploy is reported at once, not at the timeout"
    );
}

#[tokio::test]
async fn a_failing_probe_is_reported() {
    let _turn = serve_turn().await;
    let env = Env::new(Profile::V1, "ready-probe").await;
    let ray = RayServe::shared();
    let _standin = KubeRayStandIn::start(&env, &ray);
    let stack = echo_stack(
        &env,
        "probe",
        &ray.serve_url,
        "{models_status: 500}",
        "/",
        "20s",
    );
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    run.stderr_has("probe: GET /v1/models: 500");
    assert!(
        run.stderr
            .contains("Waiting for the probe GET /v1/models to succeed (answered 500"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn readiness_cannot_pass_while_kuberay_reports_not_ready() {
    let _turn = serve_turn().await;
    let env = Env::new(Profile::V1, "ready-gate").await;
    let ray = RayServe::shared();
    // Serve answers on the path, but no operator has said the RayService is ready.
    let working_dir = format!(
        "local://{}",
        crate::support::repo().join("tests/serve_apps").display()
    );
    ray.deploy(&json!({"applications": [{"name": "llm", "route_prefix": "/", "import_path": "echo_app:build",
        "runtime_env": {"working_dir": working_dir}, "args": {"model": "echo"}}]}));
    let stack = echo_stack(&env, "gate", &ray.serve_url, "{model: echo}", "/", "12s");
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    run.stderr_has("RayService: not ready");
    assert!(
        run.stderr.contains("probe: GET /v1/models: 200"),
        "Serve itself was answering: {}",
        run.stderr
    );

    // The stand-in reconciles it; now the same wait passes.
    let _standin = KubeRayStandIn::start(&env, &ray);
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
}

/// No kubelet runs here, so a port-forward cannot connect; what this guards
/// is that the head pod is found from the RayService status and labels,
/// never from a name pattern.
#[tokio::test]
async fn the_head_pod_is_found_from_the_status_and_labels_not_a_name_pattern() {
    let env = Env::new(Profile::V1, "headpod").await;
    let manifest = "apiVersion: ray.io/v1\nkind: RayService\nmetadata:\n  name: llm\nspec:\n  rayClusterConfig:\n    headGroupSpec:\n      rayStartParams: {}\n      template:\n        spec:\n          containers: [{name: ray-head, image: rayproject/ray:2.60.0}]\n";
    env.write("llm.yaml", manifest);
    let stack = format!(
        "[stack]\nname = \"headpod\"\nnamespace = \"{}\"\n\n[rayservice.llm]\nmanifest = \"llm.yaml\"\n\n[wait.chat]\nrayservice = \"llm\"\ntimeout = \"6s\"\n",
        env.ns
    );
    env.write("headpod.toml", &stack);
    // A decoy named the way the guide greps for, and the real head pod with KubeRay's labels.
    for (name, labels) in [
        (
            "llm-raycluster-abcde-head-svc-decoy",
            json!({"app": "decoy"}),
        ),
        (
            "llm-q7x2k-head-8fz9w",
            json!({"ray.io/cluster": "llm-q7x2k", "ray.io/node-type": "head"}),
        ),
    ] {
        let body = json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}});
        env.apply_as("test", "v1", "Pod", Some(&env.ns), name, body)
            .await;
        // Kubelet stand-in: no kubelet runs here to report the pod Running.
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(env.client.clone(), &env.ns);
        pods.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    }
    let apply = Running::spawn(env.command(&["apply", "headpod.toml", "--auto-approve"]));
    apply
        .until(
            "Waiting for KubeRay to name a RayCluster",
            Duration::from_secs(20),
        )
        .await;
    // KubeRay stand-in, in the test: name the pending RayCluster (KubeRay ≥ 1.4 naming).
    let rs: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &kube::discovery::ApiResource {
            group: "ray.io".into(),
            version: "v1".into(),
            api_version: "ray.io/v1".into(),
            kind: "RayService".into(),
            plural: "rayservices".into(),
        },
    );
    rs.patch_status("llm", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(json!({"status": {"observedGeneration": 1, "pendingServiceStatus": {"rayClusterName": "llm-q7x2k"}}})))
        .await
        .unwrap();
    let run = apply.finish().code(1);
    run.stderr_has("endpoint: pod/llm-q7x2k-head-8fz9w:8000 (port-forward)");
    assert!(!run.stderr.contains("decoy"), "{}", run.stderr);
}
