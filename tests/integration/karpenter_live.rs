//! Karpenter's behaviour judged by the real controller: Karpenter v1.14.1
//! with its kwok cloud provider in the nodes cluster (`scripts/testcluster
//! up --nodes`). Each test has its own NodePool, launching from a
//! KWOKNodeClass of its own, and pods that select it, so what Karpenter does
//! for one test is that test's alone.
//!
//! The plan's warnings are compared with what Karpenter then does for the
//! very pod template the warning is about: a NodeClaim (it launched), or a
//! `FailedScheduling` event from karpenter (it refused).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use serde_json::{Value, json};

use crate::support::{Env, Profile, resource};

const KWOK_CLASS: (&str, &str) = ("karpenter.kwok.sh/v1alpha1", "KWOKNodeClass");

/// A test's environment whose pool Karpenter acts on. Dropped, it deletes
/// the pool and its class, passed or failed: Karpenter's finalizers then
/// terminate the nodes it launched for the test.
struct Live(Env);

impl std::ops::Deref for Live {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.0
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let (kubeconfig, pool, class) = (
            self.kubeconfig.clone(),
            self.pool.clone(),
            self.class.clone(),
        );
        let (pool_api, pool_kind) = self.profile.pool();
        crate::support::cleanup_on_a_thread(async move {
            let client = crate::support::client(&kubeconfig, None).await;
            for (api, kind, name) in [
                (pool_api, pool_kind, &pool),
                (KWOK_CLASS.0, KWOK_CLASS.1, &class),
            ] {
                let objects: Api<DynamicObject> =
                    Api::all_with(client.clone(), &resource(api, kind));
                let _ = objects.delete(name, &DeleteParams::default()).await;
            }
        });
    }
}

/// A test's pool, made live: it launches from a KWOKNodeClass of the
/// test's own (the EC2NodeClass copy stays for what rayform patches).
async fn live_pool(test: &str, spec: Value) -> Live {
    let env = Env::new(Profile::Nodes, test).await;
    env.apply_as(
        "test-setup",
        KWOK_CLASS.0,
        KWOK_CLASS.1,
        None,
        &env.class,
        json!({}),
    )
    .await;
    let (api, kind) = env.profile.pool();
    env.merge_as("someone", api, kind, None, &env.pool, spec)
        .await;
    settled(&env).await;
    Live(env)
}

/// Waits until Karpenter has taken the pool in (condition Ready) and stopped
/// writing its status: a plan's dry run carries the resourceVersion it read,
/// and Karpenter's status writes change it.
async fn settled(env: &Env) {
    let (api, kind) = env.profile.pool();
    let started = Instant::now();
    let mut last = Value::Null;
    loop {
        let pool = env.get(api, kind, None, &env.pool).await.expect("pool");
        let ready = pool["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let version = pool["metadata"]["resourceVersion"].clone();
        if ready && version == last {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Karpenter did not make NodePool {} Ready within 30 s: {}",
            env.pool,
            pool["status"]
        );
        last = version;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The GPU worker group's pod template: one GPU, selecting the test's pool.
fn worker_template(env: &Env, tolerate_gpu_taint: bool, cpu: &str) -> Value {
    let tolerations = if tolerate_gpu_taint {
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    } else {
        json!([])
    };
    json!({"spec": {
        "nodeSelector": {"karpenter.sh/nodepool": env.pool},
        "tolerations": tolerations,
        // The node agent runs it as a process where a node serves it.
        "containers": [{"name": "ray-worker", "image": "rayproject/ray:2.60.0",
            "command": ["sh", "-c", "exec sleep 3600"],
            "resources": {"requests": {"cpu": cpu, "memory": "4Gi", "nvidia.com/gpu": "1"},
                          "limits": {"cpu": cpu, "memory": "4Gi", "nvidia.com/gpu": "1"}}}]}})
}

/// A stack patching the test's pool, with a RayService whose GPU worker
/// group has `template`; only planned.
fn stack_with_worker(env: &Env, template: &Value, replicas: u64) -> String {
    let service = json!({
        "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "llm"},
        "spec": {"serveConfigV2": "applications: []", "rayClusterConfig": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
                {"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}}},
            "workerGroupSpecs": [{"groupName": "gpu-group", "replicas": replicas, "minReplicas": 0,
                "maxReplicas": replicas, "rayStartParams": {}, "template": template}]}}});
    env.write("llm.rayservice.yaml", &service.to_string());
    let text = format!(
        "[stack]\nname = \"fit\"\nnamespace = \"{}\"\n\n[nodepool.{}]\nempty_ttl = \"600s\"\n\n[rayservice.llm]\nmanifest = \"llm.rayservice.yaml\"\n",
        env.ns, env.pool
    );
    env.write("fit.toml", &text);
    "fit.toml".into()
}

/// What Karpenter did for a pending pod.
#[derive(Debug, PartialEq)]
enum Decision {
    Launched(String),
    Refused(String),
}

/// Creates a pod from `template` and waits for Karpenter's decision on it.
async fn karpenter_decides(env: &Env, name: &str, template: &Value) -> Decision {
    create_pod(env, name, template).await;
    decision(env, name).await
}

async fn create_pod(env: &Env, name: &str, template: &Value) {
    let mut pod = template.clone();
    pod["metadata"] = json!({"name": name, "labels": {"app": "gpu-worker"}});
    env.apply_as("test", "v1", "Pod", Some(&env.ns), name, pod)
        .await;
}

/// Karpenter's word on a pod, from its events: `Nominated` ("Pod should
/// schedule on: nodeclaim/…") when it launches a node for it,
/// `FailedScheduling` when it will not.
async fn decision(env: &Env, pod: &str) -> Decision {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let about_pod = ListParams::default().fields(&format!("involvedObject.name={pod}"));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let from_karpenter: Vec<Event> = events
            .list(&about_pod)
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("karpenter"))
            .collect();
        let said = |reason: &str| {
            from_karpenter
                .iter()
                .find(|e| e.reason.as_deref() == Some(reason))
                .map(|e| e.message.clone().unwrap_or_default())
        };
        if let Some(message) = said("Nominated") {
            return Decision::Launched(message);
        }
        if let Some(message) = said("FailedScheduling") {
            return Decision::Refused(message);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("Karpenter neither launched a node for pod {pod} nor said why not within 60 s");
}

const CANNOT: &str = "no pool of the stack can launch worker group `gpu-group`";

/// Plans the stack with this pool and worker, then lets Karpenter decide on
/// the worker's pod: the plan warns exactly when Karpenter refuses.
async fn plan_agrees_with_karpenter(
    test: &str,
    pool: Value,
    tolerate_gpu_taint: bool,
    cpu: &str,
    warning: Option<&str>,
) {
    let env = live_pool(test, pool).await;
    let template = worker_template(&env, tolerate_gpu_taint, cpu);
    let stack = stack_with_worker(&env, &template, 1);
    let plan = env.rayform(&["plan", &stack]).ok();
    let decision = karpenter_decides(&env, "gpu-worker", &template).await;
    match (warning, &decision) {
        (Some(why), Decision::Refused(_)) => {
            plan.stdout_has(CANNOT);
            plan.stdout_has(why);
        }
        (None, Decision::Launched(_)) => {
            assert!(!plan.stdout.contains(CANNOT), "{}", plan.stdout);
        }
        _ => panic!(
            "rayform's plan and Karpenter disagree: Karpenter {decision:?}, the plan:\n{}",
            plan.stdout
        ),
    }
}

fn requirements(categories: &[&str]) -> Value {
    json!([
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
        {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": categories},
    ])
}

fn pool_with(categories: &[&str], taints: Value, limits: Value) -> Value {
    json!({"spec": {
        "template": {"spec": {"requirements": requirements(categories), "taints": taints}},
        "limits": limits}})
}

/// Karpenter filters instance types by the pool's requirements: a pool of
/// c, m, r categories has no instance with a GPU, one with g has.
#[tokio::test]
async fn karpenter_refuses_a_gpu_worker_a_cpu_category_pool_and_the_plan_says_so() {
    plan_agrees_with_karpenter(
        "live-categories-cpu",
        pool_with(&["c", "m", "r"], json!([]), json!({"cpu": "1000"})),
        false,
        "1",
        Some("it allows instance categories c, m, r, none with NVIDIA GPUs (g, p)"),
    )
    .await;
}

#[tokio::test]
async fn karpenter_launches_a_gpu_worker_from_a_gpu_category_pool_and_the_plan_is_quiet() {
    plan_agrees_with_karpenter(
        "live-categories-gpu",
        pool_with(&["g"], json!([]), json!({"cpu": "1000"})),
        false,
        "1",
        None,
    )
    .await;
}

/// Karpenter launches no node whose taints the pod does not tolerate.
#[tokio::test]
async fn karpenter_refuses_a_worker_that_does_not_tolerate_the_pools_taint() {
    plan_agrees_with_karpenter(
        "live-taint-untolerated",
        pool_with(
            &["g"],
            json!([{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]),
            json!({"cpu": "1000"}),
        ),
        false,
        "1",
        Some("its nodes are tainted nvidia.com/gpu=:NoSchedule, which the workers do not tolerate"),
    )
    .await;
}

#[tokio::test]
async fn karpenter_launches_a_worker_that_tolerates_the_pools_taint() {
    plan_agrees_with_karpenter(
        "live-taint-tolerated",
        pool_with(
            &["g"],
            json!([{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]),
            json!({"cpu": "1000"}),
        ),
        true,
        "1",
        None,
    )
    .await;
}

/// Karpenter drops every instance type whose capacity exceeds what the
/// pool's limits leave ("all available instance types exceed limits for
/// nodepool").
#[tokio::test]
async fn karpenter_refuses_a_gpu_worker_a_pool_limited_to_zero_gpus() {
    plan_agrees_with_karpenter(
        "live-limit-gpu-zero",
        pool_with(&["g"], json!([]), json!({"nvidia.com/gpu": "0"})),
        false,
        "1",
        Some("its limits allow 0 nvidia.com/gpu in all, and one worker pod needs 1"),
    )
    .await;
}

#[tokio::test]
async fn karpenter_launches_a_gpu_worker_within_a_one_gpu_limit() {
    plan_agrees_with_karpenter(
        "live-limit-gpu-one",
        pool_with(&["g"], json!([]), json!({"nvidia.com/gpu": "1"})),
        false,
        "1",
        None,
    )
    .await;
}

/// The limit is on the instance's cpu, not the pod's: a 1-cpu worker does
/// not fit a 2-cpu limit, as every GPU instance has at least 4 vCPUs.
#[tokio::test]
async fn karpenter_refuses_a_gpu_worker_a_cpu_limit_below_any_gpu_instance() {
    plan_agrees_with_karpenter(
        "live-limit-cpu-two",
        pool_with(&["g"], json!([]), json!({"cpu": "2"})),
        false,
        "1",
        Some("its limits allow cpu 2 in all, and no instance with 1 NVIDIA GPU has fewer than 4 vCPUs"),
    )
    .await;
}

#[tokio::test]
async fn karpenter_launches_a_gpu_worker_within_a_four_cpu_limit() {
    plan_agrees_with_karpenter(
        "live-limit-cpu-four",
        pool_with(&["g"], json!([]), json!({"cpu": "4"})),
        false,
        "1",
        None,
    )
    .await;
}

/// Karpenter subtracts each node it launches from what the pool's limits
/// leave: of two one-GPU workers under a one-GPU limit, one gets a node and
/// the other is refused; the plan says the RayCluster's GPUs exceed it.
#[tokio::test]
async fn karpenter_launches_only_as_many_gpu_workers_as_the_pool_limit_holds() {
    let env = live_pool(
        "live-limit-total",
        pool_with(&["g"], json!([]), json!({"nvidia.com/gpu": "1"})),
    )
    .await;
    let template = worker_template(&env, false, "1");
    let stack = stack_with_worker(&env, &template, 2);
    let plan = env.rayform(&["plan", &stack]).ok();
    for pod in ["worker-a", "worker-b"] {
        create_pod(&env, pod, &template).await;
    }
    let mut decisions = vec![
        decision(&env, "worker-a").await,
        decision(&env, "worker-b").await,
    ];
    decisions.sort_by_key(|d| matches!(d, Decision::Refused(_)));
    assert!(
        matches!(&decisions[..], [Decision::Launched(_), Decision::Refused(why)] if why.contains("exceed limits for nodepool")),
        "{decisions:?}"
    );
    assert!(!plan.stdout.contains(CANNOT), "{}", plan.stdout);
    plan.stdout_has(&format!(
        "NodePool `{}` has limits nvidia.com/gpu 1, and its RayCluster asks for 2 GPUs; Karpenter launches no node past the limit, so some GPU workers stay Pending",
        env.pool
    ));
}

/// A node for a pod that then goes: Karpenter's emptiness method removes it
/// once the pool's consolidateAfter has passed since the pod left (plus its
/// validation wait). Returns when the pod was deleted.
async fn empty_node(env: &Env, pod: &str) -> (String, Instant) {
    let template = worker_template(env, false, "1");
    let Decision::Launched(_) = karpenter_decides(env, pod, &template).await else {
        panic!("Karpenter launched no node for {pod}");
    };
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let started = Instant::now();
    let node = loop {
        let Some(p) = pods.get_opt(pod).await.expect("get pod") else {
            // A bare pod Karpenter evicted, consolidating the node it was
            // bound to before it ran, is gone: it is made again.
            eprintln!("pod {pod} was evicted before it ran; creating it again");
            create_pod(env, pod, &template).await;
            continue;
        };
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if let (true, Some(node)) = (running, p.spec.and_then(|s| s.node_name)) {
            break node;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "pod {pod} did not run on Karpenter's node within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    pods.delete(pod, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    while pods.get_opt(pod).await.expect("get").is_some() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (node, Instant::now())
}

async fn node_exists(env: &Env, node: &str) -> bool {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    nodes.get_opt(node).await.expect("get node").is_some()
}

/// Waits until `node` is gone; how long after `since`.
async fn gone_after(env: &Env, node: &str, since: Instant, limit: Duration) -> Duration {
    while node_exists(env, node).await {
        assert!(
            since.elapsed() < limit,
            "node {node} still there {:?} after its last pod left",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    since.elapsed()
}

/// The TTL intent on a pool removing empty nodes after 5 s: Karpenter keeps
/// an emptied node until the stack's 90 s have passed (consolidateAfter, under
/// the pool's own WhenEmptyOrUnderutilized: the emptiness method waits for the
/// NodeClaim's Consolidatable condition), and after destroy removes the next
/// emptied node after the pool's own 5 s again.
#[tokio::test]
async fn karpenter_keeps_an_emptied_node_the_stacks_ttl_and_after_destroy_its_own_consolidate_after()
 {
    let env = live_pool(
        "live-empty-ttl",
        json!({"spec": {
            "template": {"spec": {"requirements": requirements(&["g"])}},
            "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "5s",
                "budgets": [{"nodes": "100%"}]}}}),
    )
    .await;
    let before = env.pool_spec().await;
    let stack = format!(
        "[stack]\nname = \"ttl\"\nnamespace = \"{}\"\n\n[nodepool.{}]\nempty_ttl = \"90s\"\n",
        env.ns, env.pool
    );
    env.write("ttl.toml", &stack);
    env.rayform(&["apply", "ttl.toml", "--auto-approve"]).ok();
    assert_eq!(
        env.pool_spec().await["disruption"]["consolidateAfter"],
        json!("90s")
    );

    let (node, emptied) = empty_node(&env, "kept").await;
    tokio::time::sleep(Duration::from_secs(80).saturating_sub(emptied.elapsed())).await;
    assert!(
        node_exists(&env, &node).await,
        "Karpenter removed the emptied node before the stack's 90 s TTL"
    );
    let patched = gone_after(&env, &node, emptied, Duration::from_secs(180)).await;
    eprintln!("patched pool (consolidateAfter 90s): emptied node gone after {patched:?}");

    env.rayform(&["destroy", "ttl.toml", "--auto-approve"]).ok();
    assert_eq!(env.pool_spec().await, before, "destroy restores the pool");
    let (node, emptied) = empty_node(&env, "removed").await;
    // Well before the 80 s the patched pool kept its node: the pool's own
    // 5 s, Karpenter's 15 s validation, and its disruption loop.
    let original = gone_after(&env, &node, emptied, Duration::from_secs(70)).await;
    eprintln!("restored pool (consolidateAfter 5s): emptied node gone after {original:?}");
}

/// Karpenter launches no node past a pool's `nvidia.com/gpu` limit and says
/// so in a `FailedScheduling` event on the pod ("all available instance
/// types exceed limits for nodepool"): the plan warns first, and the wait,
/// which KubeRay's status alone would leave at "RayCluster … to be the
/// active cluster" until its timeout, stops at once naming the pool limit.
#[tokio::test]
async fn a_cluster_karpenter_will_not_launch_past_a_pool_limit_shows_in_the_wait() {
    let env = live_pool(
        "live-stalled",
        pool_with(&["g"], json!([]), json!({"nvidia.com/gpu": "0"})),
    )
    .await;
    let run = the_wait_on_a_worker_karpenter_refuses(
        &env,
        "its limits allow 0 nvidia.com/gpu in all, and one worker pod needs 1",
    )
    .await;
    run.stderr_has(&format!(
        "all available instance types exceed limits for nodepool (NodePool={})",
        env.pool
    ));
}

/// The same for a taint: the only pool that could launch the GPU worker
/// (the worker selects it) taints its nodes `nvidia.com/gpu:NoSchedule`,
/// as GPU pools usually do, and the worker does not tolerate it. Karpenter
/// says so on the pod, and the wait stops on its words instead of waiting
/// out its timeout on "a running head pod".
#[tokio::test]
async fn a_worker_that_does_not_tolerate_the_only_pool_s_taint_fails_the_wait_with_karpenter_s_verdict()
 {
    let env = live_pool(
        "live-stalled-taint",
        pool_with(
            &["g"],
            json!([{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]),
            json!({"cpu": "1000"}),
        ),
    )
    .await;
    let run = the_wait_on_a_worker_karpenter_refuses(
        &env,
        "its nodes are tainted nvidia.com/gpu=:NoSchedule, which the workers do not tolerate",
    )
    .await;
    // Karpenter's word for each pool: the taint for the test's, and the
    // requirement the worker's selector puts on the others.
    run.stderr_has(
        "Karpenter cannot launch a node for it: Failed to schedule pod, did not tolerate taint (taint=nvidia.com/gpu:NoSchedule)",
    );
}

/// Plans and applies a RayService whose GPU worker only the test's pool
/// could launch and Karpenter refuses: the plan warns `plan_says`, and the
/// wait (timeout 35 s) stops within 30 s on Karpenter's verdict. Returns the
/// failed apply, after a destroy.
async fn the_wait_on_a_worker_karpenter_refuses(env: &Env, plan_says: &str) -> crate::support::Run {
    let worker = worker_template(env, false, "1");
    let service = json!({
        "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "llm"},
        "spec": {"serveConfigV2": "applications: []", "rayClusterConfig": {
            "rayVersion": "2.60.0",
            // No node takes the head: this test is about the GPU worker, and
            // needs no Ray process.
            "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {
                "nodeSelector": {"rayform.io/test-no-such-node": "true"},
                "containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}}},
            "workerGroupSpecs": [{"groupName": "gpu-group", "replicas": 1, "minReplicas": 0,
                "maxReplicas": 1, "rayStartParams": {}, "template": worker}]}}});
    env.write("llm.rayservice.yaml", &service.to_string());
    let stack = format!(
        "[stack]\nname = \"stalled\"\nnamespace = \"{}\"\n\n[nodepool.{}]\nempty_ttl = \"600s\"\n\n\
         [rayservice.llm]\nmanifest = \"llm.rayservice.yaml\"\n\n\
         [wait.chat]\nrayservice = \"llm\"\ntimeout = \"35s\"\n",
        env.ns, env.pool
    );
    env.write("stalled.toml", &stack);
    env.rayform(&["plan", "stalled.toml"])
        .ok()
        .stdout_has(plan_says);
    let started = Instant::now();
    let run = env
        .rayform(&["apply", "stalled.toml", "--auto-approve"])
        .code(1);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the wait ran into its timeout instead of stopping at Karpenter's refusal: {}",
        run.stderr
    );
    run.stderr_has("(worker group gpu-group) cannot be scheduled, and Karpenter cannot launch a node for it: Failed to schedule pod");
    run.stderr_has("help: `rayform plan` names the NodePool requirements, taints or limits");
    env.rayform(&["destroy", "stalled.toml", "--auto-approve"])
        .ok();
    run
}

/// Applies a TTL stack over `pool` and checks that rayform leaves the pool
/// as it is, saying why; returns the pool's node emptied after that.
async fn left_alone_and_emptied(env: &Env, ttl: &str, why: &str) -> (String, Instant) {
    let before = env.pool_spec().await;
    let stack = format!(
        "[stack]\nname = \"kept\"\nnamespace = \"{}\"\n\n[nodepool.{}]\nempty_ttl = \"{ttl}\"\n",
        env.ns, env.pool
    );
    env.write("kept.toml", &stack);
    env.rayform(&["plan", "kept.toml"])
        .ok()
        .stdout_has(&format!("already satisfied: {why}"));
    env.rayform(&["apply", "kept.toml", "--auto-approve"]).ok();
    assert_eq!(env.pool_spec().await, before, "rayform wrote nothing");
    empty_node(env, "worker").await
}

/// Karpenter v1 waits `consolidateAfter` before removing an empty node under
/// WhenEmptyOrUnderutilized too: a pool with 60 s already keeps empty nodes
/// the stack's 60 s, and rayform does not switch its policy.
#[tokio::test]
async fn karpenter_keeps_an_empty_node_of_a_when_empty_or_underutilized_pool_its_consolidate_after()
{
    let env = live_pool(
        "live-kept-policy",
        json!({"spec": {
            "template": {"spec": {"requirements": requirements(&["g"])}},
            "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "60s",
                "budgets": [{"nodes": "100%"}]}}}),
    )
    .await;
    let (node, emptied) = left_alone_and_emptied(
        &env,
        "60s",
        "consolidateAfter 60s is at least 1m, and Karpenter v1 waits that long",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(50).saturating_sub(emptied.elapsed())).await;
    assert!(
        node_exists(&env, &node).await,
        "Karpenter removed the emptied node before consolidateAfter"
    );
    let gone = gone_after(&env, &node, emptied, Duration::from_secs(150)).await;
    eprintln!("WhenEmptyOrUnderutilized, consolidateAfter 60s: emptied node gone after {gone:?}");
}

/// A budget of zero nodes for reason Empty stops Karpenter's emptiness
/// method: the pool removes empty nodes after 5 s by its consolidateAfter,
/// yet keeps this one, and rayform writes nothing.
#[tokio::test]
async fn karpenter_keeps_an_empty_node_a_budget_allows_no_empty_disruption_for() {
    let env = live_pool(
        "live-kept-budget",
        json!({"spec": {
            "template": {"spec": {"requirements": requirements(&["g"])}},
            "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "5s",
                "budgets": [{"nodes": "100%"}, {"nodes": "0", "reasons": ["Empty"]}]}}}),
    )
    .await;
    let (node, emptied) = left_alone_and_emptied(
        &env,
        "60s",
        "its disruption budget nodes 0 for Empty allows no empty node to be removed",
    )
    .await;
    // Past the 42 s this pool's 5 s takes without the budget (measured).
    tokio::time::sleep(Duration::from_secs(75).saturating_sub(emptied.elapsed())).await;
    assert!(
        node_exists(&env, &node).await,
        "Karpenter removed an empty node its budget allows no Empty disruption for"
    );
}

/// The NodeClaims of a pool: Karpenter labels each with the pool's name.
async fn claims(env: &Env, pool: &str) -> usize {
    let claims: Api<DynamicObject> = Api::all_with(
        env.client.clone(),
        &resource("karpenter.sh/v1", "NodeClaim"),
    );
    let of_pool = ListParams::default().labels(&format!("karpenter.sh/nodepool={pool}"));
    claims
        .list(&of_pool)
        .await
        .expect("list NodeClaims")
        .items
        .len()
}

/// A NodePool the stack owns takes its nodes with it: destroy deletes it,
/// then waits until Karpenter has drained and removed the node it launched
/// for a worker (its NodeClaim gone), so nothing the stack made outlives
/// the destroy.
#[tokio::test]
async fn destroying_an_owned_pool_waits_until_karpenter_has_removed_its_nodes() {
    let env = live_pool(
        "live-owned-drain",
        json!({"spec": {"template": {"spec": {"requirements": requirements(&["g"])}}}}),
    )
    .await;
    // The stack's own pool, made like the test's (from its KWOKNodeClass).
    let own = format!("{}-own", env.pool);
    let pool = json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool",
        "metadata": {"name": own}, "spec": env.pool_spec().await});
    env.write("own-pool.yaml", &pool.to_string());
    let stack = format!(
        "[stack]\nname = \"drain\"\nnamespace = \"{}\"\n\n[manifest.{own}]\nfile = \"own-pool.yaml\"\n",
        env.ns
    );
    env.write("drain.toml", &stack);
    env.rayform(&["apply", "drain.toml", "--auto-approve"]).ok();

    let mut template = worker_template(&env, false, "1");
    template["spec"]["nodeSelector"]["karpenter.sh/nodepool"] = json!(own);
    let node = running_on(&env, "on-own-pool", &template).await;
    assert!(
        claims(&env, &own).await > 0,
        "a NodeClaim of the stack's pool"
    );

    let destroy = env
        .rayform(&["destroy", "drain.toml", "--auto-approve"])
        .ok();
    eprintln!("{}", destroy.all());
    assert_eq!(
        claims(&env, &own).await,
        0,
        "destroy returned with the pool's node still up:\n{}",
        destroy.all()
    );
    assert!(
        !node_exists(&env, &node).await,
        "node {node} outlived the destroy:\n{}",
        destroy.all()
    );
}

/// The node Karpenter launched for a pod from `template`, once the pod runs there.
async fn running_on(env: &Env, pod: &str, template: &Value) -> String {
    let Decision::Launched(_) = karpenter_decides(env, pod, template).await else {
        panic!("Karpenter launched no node for {pod}");
    };
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let started = Instant::now();
    loop {
        let p = pods.get(pod).await.expect("pod");
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if let (true, Some(node)) = (running, p.spec.and_then(|s| s.node_name)) {
            return node;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "pod {pod} did not run on Karpenter's node within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
