//! The readiness node against the real KubeRay operator: RayServices applied
//! by rayform become RayClusters and head pods that the node agent runs with
//! real Ray Serve, and rayform reaches them through its own port-forward.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Env, Profile, Running, ray_turn};

/// A RayService serving the echo app (tests/serve_apps), as the guide's has one app.
pub(crate) struct Echo<'a> {
    pub(crate) args: &'a str,
    pub(crate) route_prefix: &'a str,
    pub(crate) serve_port: u16,
    /// An env var on the head container: changing it makes KubeRay build a new cluster.
    pub(crate) marker: &'a str,
    /// `maxReplicas` of a CPU worker group that starts no pods.
    pub(crate) workers_max: Option<u8>,
    /// A worker group of one pod asking for one GPU (the guide's shape), for which
    /// Karpenter launches a node, and a Serve replica that asks for its GPU.
    pub(crate) gpu_worker: bool,
    /// The head container's image.
    pub(crate) image: &'a str,
    /// The head's `rayStartParams`, as a YAML flow map.
    pub(crate) head_params: &'a str,
    /// `spec.upgradeStrategy.type`.
    pub(crate) strategy: Option<&'a str>,
    /// The head container's `resources`, as a YAML flow map.
    pub(crate) head_resources: Option<&'a str>,
    /// More env of the head container, as YAML flow maps.
    pub(crate) head_env: &'a [&'a str],
    /// The head's container port named `serve`, when it is not Serve's port.
    pub(crate) container_serve_port: Option<u16>,
    /// The head asks for a node label no node has: its pod stays Pending.
    pub(crate) head_unschedulable: bool,
}

impl Default for Echo<'_> {
    fn default() -> Self {
        Echo {
            args: "{model: echo-a}",
            route_prefix: "/",
            serve_port: 8000,
            marker: "one",
            workers_max: None,
            gpu_worker: false,
            image: "rayproject/ray:2.60.0",
            head_params: "{}",
            strategy: None,
            head_resources: None,
            head_env: &[],
            container_serve_port: None,
            head_unschedulable: false,
        }
    }
}

impl Echo<'_> {
    fn manifest(&self) -> String {
        let http_options = if self.serve_port == 8000 {
            String::new()
        } else {
            format!(
                "http_options: {{host: 0.0.0.0, port: {}}}\n    ",
                self.serve_port
            )
        };
        let strategy = self
            .strategy
            .map(|t| format!("upgradeStrategy: {{type: {t}}}\n  "))
            .unwrap_or_default();
        let resources = self
            .head_resources
            .map(|r| format!("\n              resources: {r}"))
            .unwrap_or_default();
        let mut workers = self
            .workers_max
            .map(|max| {
                format!(
                    "    workerGroupSpecs:\n      - groupName: cpu\n        replicas: 0\n        minReplicas: 0\n        maxReplicas: {max}\n        rayStartParams: {{}}\n        template:\n          spec:\n            containers: [{{name: ray-worker, image: rayproject/ray:2.60.0}}]\n"
                )
            })
            .unwrap_or_default();
        let node_selector = match self.head_unschedulable {
            true => "\n          nodeSelector: {rayform.io/test-node: none-has-this}",
            false => "",
        };
        let head_env: String = self
            .head_env
            .iter()
            .map(|e| format!("\n                - {e}"))
            .collect();
        let mut deployments = String::new();
        if self.gpu_worker {
            if workers.is_empty() {
                workers.push_str("    workerGroupSpecs:\n");
            }
            workers.push_str("      - groupName: gpu\n        replicas: 1\n        minReplicas: 1\n        maxReplicas: 1\n        rayStartParams: {}\n        template:\n          spec:\n            containers: [{name: ray-worker, image: rayproject/ray:2.60.0, resources: {limits: {nvidia.com/gpu: 1}}}]\n");
            deployments = "        deployments: [{name: EchoModel, ray_actor_options: {num_cpus: 0, num_gpus: 1}}]\n".into();
        }
        format!(
            r#"apiVersion: ray.io/v1
kind: RayService
metadata:
  name: echo
spec:
  {strategy}serveConfigV2: |
    {http_options}applications:
      - name: llm
        route_prefix: {prefix}
        import_path: echo_app:build
        args: {args}
{deployments}  rayClusterConfig:
    rayVersion: "2.60.0"
    headGroupSpec:
      rayStartParams: {head_params}
      template:
        spec:{node_selector}
          containers:
            - name: ray-head
              image: {image}{resources}
              ports:
                - {{containerPort: 8265, name: dashboard}}
                - {{containerPort: {port}, name: serve}}
              env:
                - {{name: RAYFORM_TEST_MARKER, value: "{marker}"}}{head_env}
{workers}"#,
            prefix = self.route_prefix,
            args = self.args,
            port = self.container_serve_port.unwrap_or(self.serve_port),
            marker = self.marker,
            image = self.image,
            head_params = self.head_params,
        )
    }

    /// Writes the manifest and a stack around it; `wait` holds extra `[wait]` lines.
    pub(crate) fn stack(&self, env: &Env, wait: &str) -> String {
        env.write("echo.rayservice.yaml", &self.manifest());
        let stack = format!(
            "[stack]\nname = \"echo\"\nnamespace = \"{}\"\n\n[rayservice.echo]\nmanifest = \"echo.rayservice.yaml\"\n\n\
             [wait.chat]\nrayservice = \"echo\"\ninterval = \"100ms\"\n{wait}\n",
            env.ns
        );
        env.write("echo.toml", &stack);
        "echo.toml".into()
    }
}

pub(crate) async fn rayservice(env: &Env) -> Value {
    env.get("ray.io/v1", "RayService", Some(&env.ns), "echo")
        .await
        .expect("the RayService exists")
}

pub(crate) fn active_cluster(rs: &Value) -> String {
    rs.pointer("/status/activeServiceStatus/rayClusterName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The head pod's address, found as rayform finds it: status, then labels.
pub(crate) async fn head_ip(env: &Env) -> String {
    let cluster = active_cluster(&rayservice(env).await);
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let list = pods
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("ray.io/cluster={cluster},ray.io/node-type=head")),
        )
        .await
        .expect("list pods");
    list.items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .unwrap_or_else(|| panic!("no head pod with an IP for RayCluster {cluster}"))
}

/// A chat completion sent straight to the head pod (its address is on this machine).
pub(crate) fn chat(ip: &str, port: u16) -> Value {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(r#"{"messages":[{"role":"user","content":"which model?"}]}"#)
        .arg(format!("http://{ip}:{port}/v1/chat/completions"))
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "the chat answer is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test]
async fn the_default_path_port_forwards_to_serve_on_its_port_and_probes_with_a_chat_completion() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-default").await;
    // Like the guide's vLLM app: GET /v1/models is not served, only the chat route.
    let echo = Echo {
        args: "{model: echo-a, models_status: 404, init_delay_s: 3}",
        serve_port: 8123,
        gpu_worker: true,
        ..Echo::default()
    };
    let stack = echo.stack(&env, "timeout = \"4m\"");
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    run.stdout_has(
        "rayservice.echo serves /v1/chat/completions (route prefix / → application `llm`)",
    );
    the_chain_is_told_in_order_without_a_line_per_look(&run.stderr);
    let pod_line = run
        .stdout
        .lines()
        .find(|l| l.contains("port-forward pod/"))
        .unwrap_or_else(|| panic!("no port-forward hint:\n{}", run.stdout));
    assert!(pod_line.contains(" 8123:8123 "), "{pod_line}");
    // The pod it names is the head KubeRay made for the active cluster.
    let cluster = active_cluster(&rayservice(&env).await);
    assert!(
        pod_line.contains(&format!("pod/{cluster}-head-")),
        "{pod_line}"
    );
    assert_eq!(chat(&head_ip(&env).await, 8123)["model"], "echo-a");

    // `status` says the same, on demand.
    let status = env.rayform(&["status", &stack]).ok();
    status.stdout_has(&format!(
        "rayservice.echo ({}): serving /v1/chat/completions (route prefix / → application `llm`, model echo-a, ready since ",
        env.ns
    ));
    let json = env.rayform(&["status", &stack, "--json"]).ok();
    let look: Value = serde_json::from_str(json.stdout.trim()).expect("one JSON object");
    assert_eq!(look["serving"], "yes");
    assert_eq!(look["route"], "/");
}

/// The demo's chain as the wait tells it, in the order it happens: the head
/// pod waited for; the GPU worker unschedulable or given a node by Karpenter
/// (the launch itself may fall between two looks), then
/// running on the node Karpenter launched; Serve deploying, and only after
/// the worker runs (the replica needs its GPU) the links past Serve. Each a
/// line when it changes: with looks every 100 ms, a line a look would be
/// hundreds, and would repeat.
fn the_chain_is_told_in_order_without_a_line_per_look(stderr: &str) {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("wait.chat:"))
        .collect();
    let first = |what: &str, from: usize, is: &dyn Fn(&str) -> bool| -> usize {
        lines
            .iter()
            .skip(from)
            .position(|l| is(l))
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("no line of {what} (from line {from}):\n{stderr}"))
    };
    let head = first("the head pod waited for", 0, &|l| {
        l.contains("Waiting for a running head pod of RayCluster")
    });
    // Its first line: unschedulable, or Karpenter launching its node, or
    // (when the launch and the bind both fell between two looks, as under
    // load, when a look waits out a dashboard that does not answer yet)
    // already on the node Karpenter launched.
    let worker = first(
        "the GPU worker, before or on its Karpenter node",
        head,
        &|l| {
            l.contains("(worker group gpu)")
                && (l.contains(": unschedulable")
                    || l.contains("Karpenter is launching a node")
                    || l.contains("(worker group gpu) on kwok-"))
        },
    );
    let running = first("the GPU worker running on a Karpenter node", worker, &|l| {
        l.contains("(worker group gpu) on kwok-") && l.contains(": running")
    });
    let deploying = first("Serve deploying", head, &|l| {
        l.contains("Waiting for application `llm` (DEPLOYING")
    });
    let past_serve = first("a link past Serve", deploying, &|l| {
        l.contains(": Waiting for ") && !l.contains("application `llm`")
    });
    assert!(
        running < past_serve,
        "Serve was done before the GPU worker ran:\n{stderr}"
    );
    // Each line says something new: without its clock, no line repeats the one before.
    let said: Vec<&str> = lines
        .iter()
        .filter(|l| !l.contains(": Still waiting for "))
        .map(|l| l.rsplit_once(" [").map_or(*l, |(said, _)| said))
        .collect();
    assert!(
        said.windows(2).all(|w| w[0] != w[1]),
        "a line repeats:\n{stderr}"
    );
    assert!(lines.len() < 40, "{} lines:\n{stderr}", lines.len());
}

#[tokio::test]
async fn an_in_place_model_change_is_ready_only_once_the_new_model_answers() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-inplace").await;
    // The probe is one the old model answers too: only the deployed config can tell.
    let wait = "timeout = \"4m\"\nprobe = { method = \"GET\", path = \"/v1/models\" }";
    let stack = Echo::default().stack(&env, wait);
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    let first_cluster = active_cluster(&rayservice(&env).await);

    let changed = Echo {
        args: "{model: echo-b, init_delay_s: 4}",
        ..Echo::default()
    };
    let stack = changed.stack(&env, wait);
    env.rayform(&["plan", &stack]).ok().stdout_has(
        "(KubeRay v1.5.0: in-place Serve update on the running RayCluster (no new pods))",
    );
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    assert_eq!(
        chat(&head_ip(&env).await, 8000)["model"],
        "echo-b",
        "apply returned while the previous model still answered:\n{}",
        run.stderr
    );
    assert_eq!(
        active_cluster(&rayservice(&env).await),
        first_cluster,
        "a serveConfigV2 change is applied in place"
    );

    // A route prefix that never serves the path: a timeout that shows the routes.
    let elsewhere = Echo {
        args: "{model: echo-b}",
        route_prefix: "/other",
        ..Echo::default()
    };
    let stack = elsewhere.stack(&env, "timeout = \"40s\"");
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    run.stderr_has("rayservice.echo did not serve /v1/chat/completions within 40s");
    run.stderr_has(r#"/-/routes: 200 {"/other":"llm"}"#);
}

#[tokio::test]
async fn a_failed_deploy_fails_at_once_and_its_fix_is_not_failed_by_the_old_status() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-fix").await;
    let broken = Echo {
        args: "{model: echo-a, fail_on_init: 'no GPU in this test'}",
        ..Echo::default()
    };
    let stack = broken.stack(&env, "timeout = \"4m\"");
    let started = std::time::Instant::now();
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    run.stderr_has("Serve application `llm` failed to deploy");
    run.stderr_has("no GPU in this test");
    assert!(
        started.elapsed() < Duration::from_secs(200),
        "a failed deploy is reported when Serve says so, not at the timeout"
    );
    // rayform reads the failure from Serve, often before KubeRay mirrors it;
    // the fix below must start from a status that holds it.
    let mut rs = rayservice(&env).await;
    for _ in 0..120 {
        if rs.to_string().contains("DEPLOY_FAILED") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        rs = rayservice(&env).await;
    }
    assert!(
        rs.to_string().contains("DEPLOY_FAILED"),
        "KubeRay's status holds the failure the fix must not trip on: {rs}"
    );

    let stack = Echo::default().stack(&env, "timeout = \"4m\"");
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    run.stdout_has("rayservice.echo serves /v1/chat/completions");
    assert_eq!(chat(&head_ip(&env).await, 8000)["model"], "echo-a");
}

#[tokio::test]
async fn a_change_that_starts_a_new_cluster_is_ready_only_once_traffic_moved_to_it() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-upgrade").await;
    let stack = Echo::default().stack(&env, "timeout = \"4m\"");
    env.rayform(&["plan", &stack]).ok().stdout_has(
        "(KubeRay version unknown (no RayCluster yet), rules of v1.5: a new RayCluster (0 GPUs))",
    );
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    let old = active_cluster(&rayservice(&env).await);

    let upgraded = Echo {
        marker: "two",
        args: "{model: echo-b}",
        ..Echo::default()
    };
    let stack = upgraded.stack(&env, "timeout = \"5m\"");
    env.rayform(&["plan", &stack]).ok().stdout_has(
        "(KubeRay v1.5.0: new RayCluster (zero-downtime upgrade: 0 more GPUs until promotion); the new Serve config goes to the new cluster)",
    );
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    run.stderr_has("upgrade in progress");
    let rs = rayservice(&env).await;
    let new = active_cluster(&rs);
    assert_ne!(
        new, old,
        "apply returned before KubeRay switched clusters: {rs}"
    );
    assert_eq!(
        rs.pointer("/status/pendingServiceStatus/rayClusterName")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        ""
    );
    let upgrade = rs["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "UpgradeInProgress"))
        .cloned()
        .unwrap_or(json!({}));
    assert_eq!(upgrade["status"], "False", "{rs}");
    assert_eq!(chat(&head_ip(&env).await, 8000)["model"], "echo-b");
}

/// No operator runs on this profile: a RayService there never becomes ready.
pub(crate) fn unreconciled_stack(env: &Env, timeout: &str) -> String {
    let manifest = "apiVersion: ray.io/v1\nkind: RayService\nmetadata:\n  name: llm\nspec:\n  rayClusterConfig:\n    headGroupSpec:\n      rayStartParams: {}\n      template:\n        spec:\n          containers: [{name: ray-head, image: rayproject/ray:2.60.0}]\n";
    env.write("llm.yaml", manifest);
    let stack = format!(
        "[stack]\nname = \"headpod\"\nnamespace = \"{}\"\n\n[rayservice.llm]\nmanifest = \"llm.yaml\"\n\n[wait.chat]\nrayservice = \"llm\"\ntimeout = \"{timeout}\"\n",
        env.ns
    );
    env.write("headpod.toml", &stack);
    "headpod.toml".into()
}

#[tokio::test]
async fn a_user_who_cannot_watch_is_told_so_at_once() {
    let env = Env::new(Profile::V1, "nowatch").await;
    let stack = unreconciled_stack(&env, "30m");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let rules = json!([{"apiGroups": ["ray.io"], "resources": ["rayservices"], "verbs": ["get", "list", "patch", "create"]},
        {"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["get", "list"]}]);
    env.apply_as(
        "test",
        "rbac.authorization.k8s.io/v1",
        "Role",
        Some(&env.ns),
        "nowatch",
        json!({"rules": rules}),
    )
    .await;
    env.apply_as("test", "rbac.authorization.k8s.io/v1", "RoleBinding", Some(&env.ns), "nowatch",
        json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "nowatch"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "nowatch"}]}))
        .await;
    // The admin user, impersonating one who may read but not watch.
    let kubeconfig = std::fs::read_to_string(&env.kubeconfig).expect("kubeconfig");
    let impersonating = kubeconfig.replacen(
        "- name: admin\n  user:\n",
        "- name: admin\n  user:\n    as: nowatch\n",
        1,
    );
    assert_ne!(impersonating, kubeconfig);
    env.write("nowatch.kubeconfig", &impersonating);
    let started = std::time::Instant::now();
    let run = env
        .rayform(&[
            "--kubeconfig",
            "nowatch.kubeconfig",
            "apply",
            &stack,
            "--auto-approve",
        ])
        .code(1);
    run.stderr_has("cannot watch rayservices.ray.io `llm`");
    run.stderr_has("forbidden");
    run.stderr_has("watch");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "told at once, not at the 30m timeout"
    );
}

#[tokio::test]
async fn ctrl_c_during_the_wait_exits_130_with_the_state_written() {
    let env = Env::new(Profile::V1, "ctrlc").await;
    let stack = unreconciled_stack(&env, "30m");
    let apply = Running::spawn(env.command(&["apply", &stack, "--auto-approve"]));
    apply
        .until(
            "Waiting for KubeRay to name a RayCluster",
            Duration::from_secs(30),
        )
        .await;
    apply.interrupt();
    let run = apply.finish().code(130);
    run.stderr_has("interrupted by Ctrl-C");
    let state = env.state("headpod");
    assert!(
        state["resources"]["rayservice.llm"].is_object(),
        "the applied RayService is in the state: {state}"
    );
    // The lock went with the process: the next command runs.
    env.rayform(&["plan", &stack]).ok();
}

/// What this guards: the head pod is found from the RayService status and
/// KubeRay's labels, never from a name pattern (the guide greps names).
#[tokio::test]
async fn the_head_pod_is_found_from_the_status_and_labels_not_a_name_pattern() {
    let env = Env::new(Profile::V1, "headpod").await;
    let stack = unreconciled_stack(&env, "6s");
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
        // No node runs on this profile: report the pod Running, as a kubelet would.
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(env.client.clone(), &env.ns);
        pods.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"status": {"phase": "Running", "podIP": "198.18.255.254"}}),
            ),
        )
        .await
        .expect("patch pod status");
    }
    let apply = Running::spawn(env.command(&["apply", &stack, "--auto-approve"]));
    apply
        .until(
            "Waiting for KubeRay to name a RayCluster",
            Duration::from_secs(20),
        )
        .await;
    // Standing in for the operator, which does not run on this profile: name the cluster.
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
        .expect("patch RayService status");
    let run = apply.finish().code(1);
    run.stderr_has("endpoint: pod/llm-q7x2k-head-8fz9w:8000 (port-forward)");
    assert!(!run.stderr.contains("decoy"), "{}", run.stderr);
}

/// Ray 2.60 with token authentication on the head, set up as KubeRay v1.5.1+
/// does it from `authOptions` (and users of older KubeRay write by hand):
/// RAY_AUTH_MODE=token, RAY_AUTH_TOKEN from a Secret's `auth_token`. Real
/// Ray checks the token; KubeRay v1.5.0, which runs here, sends none itself.
#[tokio::test]
async fn a_dashboard_with_token_authentication_is_asked_with_the_head_s_own_token() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-token").await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let (token, rotated) = (
        format!("rt-{nanos:x}-first"),
        format!("rt-{nanos:x}-second"),
    );
    let mut outputs = std::collections::BTreeMap::new();

    // A token in a file of the container: rayform cannot read it, and the
    // dashboard's 401 ends the wait at once instead of being "not yet".
    let file = env.write("ray-token", &token);
    let in_file = format!("{{name: RAY_AUTH_TOKEN_PATH, value: '{}'}}", file.display());
    let in_file = in_file.as_str();
    let echo = Echo {
        head_env: &["{name: RAY_AUTH_MODE, value: token}", in_file],
        ..Echo::default()
    };
    let stack = echo.stack(&env, "timeout = \"5m\"");
    let started = std::time::Instant::now();
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    run.stderr_has("refused rayform's request (401 Unauthorized: Missing authentication token); the head pod names no RAY_AUTH_TOKEN");
    run.stderr_has("help: give the head RAY_AUTH_TOKEN from a Secret");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "told when the dashboard answered, not at the timeout:\n{}",
        run.stderr
    );
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();

    // The token from a Secret, as KubeRay gives it: rayform sends the head's
    // own, gets past the dashboard, and says why Serve never gets its config.
    let secret = |value: &str| json!({"type": "Opaque", "stringData": {"auth_token": value}});
    env.apply_as(
        "test",
        "v1",
        "Secret",
        Some(&env.ns),
        "echo-ray-token",
        secret(&token),
    )
    .await;
    let from_secret = "{name: RAY_AUTH_TOKEN, valueFrom: {secretKeyRef: {name: echo-ray-token, key: auth_token}}}";
    let echo = Echo {
        head_env: &["{name: RAY_AUTH_MODE, value: token}", from_secret],
        ..Echo::default()
    };
    let stack = echo.stack(&env, "timeout = \"5m\"");
    let run = env
        .rayform(&["-vvv", "apply", &stack, "--auto-approve"])
        .code(1);
    // Said only once the dashboard answered rayform's token with 200.
    run.stderr_has("so Serve never receives its config (the dashboard, asked with the head's token, shows no application)");
    assert!(
        !run.stderr.contains("refused rayform's request"),
        "{}",
        run.stderr
    );
    run.stderr_has("runs Ray with token authentication, and KubeRay (v1.5.0) sends the dashboard no token: RayCluster echo-");
    run.stderr_has(
        "help: set `authOptions: {mode: token}` in rayClusterConfig (KubeRay v1.5.1 or later)",
    );
    outputs.insert("apply -vvv".to_string(), run.all());

    // The Secret changed since the head started: Ray keeps the old token.
    env.apply_as(
        "test",
        "v1",
        "Secret",
        Some(&env.ns),
        "echo-ray-token",
        secret(&rotated),
    )
    .await;
    let run = env
        .rayform(&["-vvv", "apply", &stack, "--auto-approve"])
        .code(1);
    run.stderr_has("refused rayform's request (403 Forbidden: Invalid authentication token); the token in Secret `echo-ray-token` (key `auth_token`)");
    run.stderr_has("help: a running Ray keeps the token it started with");
    outputs.insert("apply -vvv, rotated".to_string(), run.all());
    let status = env.rayform(&["status", &stack, "--json"]).code(2);
    outputs.insert("status".to_string(), status.all());
    outputs.insert("state".to_string(), env.state("echo").to_string());
    for t in [&token, &rotated] {
        crate::support::assert_no_token(t, &outputs);
    }
}

/// Serve fixes its HTTP port when it starts: a new `http_options.port` that
/// KubeRay sends to the running cluster (a serveConfigV2 change, applied in
/// place) is ignored, and the wait says so instead of probing a closed port.
#[tokio::test]
async fn a_serve_port_change_applied_in_place_is_said_not_probed() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-port").await;
    let stack = Echo::default().stack(&env, "timeout = \"4m\"");
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();

    let moved = Echo {
        serve_port: 8123,
        container_serve_port: Some(8000),
        ..Echo::default()
    };
    let stack = moved.stack(&env, "timeout = \"4m\"");
    env.rayform(&["plan", &stack]).ok().stdout_has(
        "(KubeRay v1.5.0: in-place Serve update on the running RayCluster (no new pods))",
    );
    let started = std::time::Instant::now();
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    run.stderr_has("listens on port 8000, not 8123 (`http_options.port` of serveConfigV2)");
    run.stderr_has("help: put http_options.port back to 8000");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "told at once, not at the timeout:\n{}",
        run.stderr
    );
    // Serve still answers where it started.
    assert_eq!(chat(&head_ip(&env).await, 8000)["model"], "echo-a");
}

/// What this guards: `status --watch` keeps one port-forward per head port
/// for the whole watch (as the wait does), instead of opening them anew on
/// every look, every 2 s: counted on the wire, in the API server's audit log.
#[tokio::test]
async fn status_watch_keeps_its_port_forwards_across_looks() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "status-watch").await;
    let stack = Echo::default().stack(&env, "timeout = \"4m\"");
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    let mark = env.audit_mark();
    let watch = Running::spawn(env.command(&["status", &stack, "--watch"]));
    // Four looks at least: one at once, then one every 2 s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    watch.interrupt();
    let run = watch.finish().code(130);
    run.stdout_has("serving /v1/chat/completions");
    // A port-forward is written to the audit log once it is closed: here,
    // when the process exits.
    let forwards: Vec<String> = env
        .requests_since(mark)
        .await
        .iter()
        .filter(|e| e["objectRef"]["subresource"] == "portforward")
        .map(|e| e["requestURI"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        forwards.len(),
        2,
        "one port-forward to the dashboard and one to Serve for the whole watch: {forwards:#?}"
    );
}
