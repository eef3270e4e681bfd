//! GPU workers and the pools that launch them: the plan says when no pool
//! can reach a worker group, the two-models stack brings its own GPU pool,
//! a token rotation is planned as a second GPU cluster, and an upgrade that
//! needs more GPUs than a pool's limit allows is warned about.

use serde_json::json;

use crate::karpenter::merge_pool;
use crate::support::{Env, Profile};

#[tokio::test]
async fn the_plan_says_when_the_patched_pool_cannot_reach_the_gpu_workers() {
    let env = Env::new(Profile::V1, "fit").await;
    let stack = env.mission_stack("fit");
    let cannot =
        "no pool of the stack can launch worker group `gpu-group` (1 nvidia.com/gpu per pod)";
    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has(cannot);
    plan.stdout_has(&format!(
        "NodePool `{}`: it allows instance categories c, m, r, none with NVIDIA GPUs (g, p)",
        env.pool
    ));

    let gpu_pool = |taint: &str| {
        json!({"spec": {"template": {"spec": {
            "requirements": [{"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["g"]}],
            "taints": [{"key": taint, "value": "llm", "effect": "NoSchedule"}]}}}})
    };
    merge_pool(&env, gpu_pool("dedicated")).await;
    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has(
        "its nodes are tainted dedicated=llm:NoSchedule, which the workers do not tolerate",
    );

    merge_pool(&env, gpu_pool("nvidia.com/gpu")).await;
    let plan = env.rayform(&["plan", &stack]).ok();
    assert!(!plan.stdout.contains(cannot), "{}", plan.stdout);
    assert!(
        !plan.stdout.contains("launches its nodes from"),
        "{}",
        plan.stdout
    );

    merge_pool(
        &env,
        json!({"spec": {"template": {"spec": {"nodeClassRef": {"name": "default"}}}}}),
    )
    .await;
    env.rayform(&["plan", &stack]).ok().stdout_has(&format!(
        "NodePool `{}` launches its nodes from `default`, not from `{}` of this stack",
        env.pool, env.class
    ));
}

/// stacks/two-models.toml in this test's namespace; its NodePool and
/// EC2NodeClass are named after the test, as cluster-scoped objects are shared.
fn two_models_stack(env: &Env) -> (String, String, String) {
    let pool = format!("{}-gpu", env.pool);
    let class = format!("{}-gpu-nodes", env.pool);
    let stacks = crate::support::repo().join("stacks");
    for file in [
        "two-models.nodeclass.yaml",
        "two-models.nodepool.yaml",
        "two-models.mistral-7b.rayservice.yaml",
        "two-models.qwen-7b.rayservice.yaml",
    ] {
        let text = std::fs::read_to_string(stacks.join(file)).expect("two-models file");
        let text = text
            .replace("name: gpu-nodes", &format!("name: {class}"))
            .replace("  name: gpu\n", &format!("  name: {pool}\n"))
            .replace(
                "karpenter.sh/nodepool: gpu",
                &format!("karpenter.sh/nodepool: {pool}"),
            );
        env.write(file, &text);
    }
    let text = std::fs::read_to_string(stacks.join("two-models.toml")).expect("two-models stack");
    let text = text
        .replace(
            "namespace = \"default\"",
            &format!("namespace = \"{}\"", env.ns),
        )
        .replace("manifest.gpu-nodes", &format!("manifest.{class}"))
        .replace("[manifest.gpu]", &format!("[manifest.{pool}]"))
        .replace("\"manifest.gpu\"", &format!("\"manifest.{pool}\""));
    env.write("two-models.toml", &text);
    ("two-models.toml".into(), pool, class)
}

#[tokio::test]
async fn the_two_models_stack_creates_its_gpu_pool_and_destroy_removes_it() {
    let env = Env::new(Profile::V1, "two-models").await;
    let (stack, pool, class) = two_models_stack(&env);
    env.rayform(&["validate", &stack]).ok();
    let plan = env
        .rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(2);
    assert_eq!(
        plan.line_starting("Plan: "),
        "Plan: 5 to add, 0 to change, 0 to destroy, 0 to patch."
    );
    assert!(
        !plan.stdout.contains("no pool of the stack can launch"),
        "the stack's own pool fits its workers:\n{}",
        plan.stdout
    );
    assert!(
        !plan.stdout.contains("launches its nodes from"),
        "{}",
        plan.stdout
    );

    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let (pool_api, pool_kind) = Profile::V1.pool();
    let created = env
        .get(pool_api, pool_kind, None, &pool)
        .await
        .expect("the GPU pool");
    assert_eq!(
        created["spec"]["template"]["spec"]["nodeClassRef"]["name"],
        json!(class)
    );
    for name in ["mistral-7b", "qwen-7b"] {
        assert!(
            env.get("ray.io/v1", "RayService", Some(&env.ns), name)
                .await
                .is_some()
        );
    }
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);

    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert!(
        env.get(pool_api, pool_kind, None, &pool).await.is_none(),
        "destroy removed the pool"
    );
    let (class_api, class_kind) = Profile::V1.class();
    assert!(env.get(class_api, class_kind, None, &class).await.is_none());
}

#[tokio::test]
async fn a_token_rotation_is_planned_as_a_second_gpu_cluster() {
    let env = Env::new(Profile::V1, "rotation").await;
    let stack = env.mission_stack("rotation");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let rotated = env
        .command(&["plan", &stack])
        .env("HUGGING_FACE_HUB_TOKEN", format!("{}-rotated", env.token))
        .output()
        .expect("run rayform");
    let said = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        said.contains("new RayCluster (zero-downtime upgrade: 1 more GPU until promotion), because a referenced Secret changed"),
        "{said}"
    );
}

/// KubeRay's zero-downtime upgrade runs a second RayCluster beside the
/// serving one, and Karpenter launches no node past a pool's limit: a pool
/// limited to the GPUs of one cluster stalls the upgrade.
#[tokio::test]
async fn a_gpu_limit_a_zero_downtime_upgrade_would_exceed_is_warned_about() {
    let env = Env::new(Profile::V1, "upgrade-limit").await;
    let gpu_pool = |limit: &str| {
        json!({"spec": {"template": {"spec": {
            "requirements": [{"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["g"]}]}},
            "limits": {"nvidia.com/gpu": limit}}})
    };
    merge_pool(&env, gpu_pool("1")).await;
    let stack = env.mission_stack("upgrade");
    let first = env.rayform(&["plan", &stack]).ok();
    assert!(
        !first.stdout.contains("has limits nvidia.com/gpu"),
        "one cluster fits the limit: {}",
        first.stdout
    );
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let rotated = |env: &Env| {
        let out = env
            .command(&["plan", &stack])
            .env("HUGGING_FACE_HUB_TOKEN", format!("{}-rotated", env.token))
            .output()
            .expect("run rayform");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let said = rotated(&env);
    assert!(
        said.contains(&format!(
            "NodePool `{}` has limits nvidia.com/gpu 1, and this change is a zero-downtime upgrade: the new RayCluster's 1 GPU on top of the 1 the serving cluster keeps until promotion, 2 at once",
            env.pool
        )) && said.contains("the upgrade stalls"),
        "{said}"
    );
    merge_pool(&env, gpu_pool("2")).await;
    let said = rotated(&env);
    assert!(!said.contains("the upgrade stalls"), "{said}");
}
