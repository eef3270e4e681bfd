//! Karpenter and KubeRay at their edges, on the upstream CRDs: intents are floors, each
//! AMI family keeps node storage on its own device, and a launch template
//! cannot take block device mappings; a token rotation means a second cluster.

use serde_json::{Value, json};

use crate::support::{Env, Profile};

/// A stack holding only Karpenter intents on this test's pool and class.
fn intents(env: &Env, pool: Option<&str>, class: Option<&str>) -> String {
    let mut text = format!("[stack]\nname = \"intents\"\nnamespace = \"{}\"\n", env.ns);
    if let Some(ttl) = pool {
        text += &format!("\n[nodepool.{}]\nempty_ttl = \"{ttl}\"\n", env.pool);
    }
    if let Some(body) = class {
        text += &format!("\n[nodeclass.{}]\n{body}\n", env.class);
    }
    env.write("intents.toml", &text);
    "intents.toml".into()
}

async fn merge_pool(env: &Env, body: Value) {
    let (api, kind) = env.profile.pool();
    env.merge_as("someone", api, kind, None, &env.pool, body)
        .await;
}

async fn merge_class(env: &Env, body: Value) {
    let (api, kind) = env.profile.class();
    env.merge_as("someone", api, kind, None, &env.class, body)
        .await;
}

/// Pools and classes that already keep empty nodes longer and have bigger
/// disks than the stack asks: rayform writes nothing and says why.
async fn met_intents_are_left_alone(profile: Profile, pool: Value, disk: &str) {
    let env = Env::new(profile, &format!("floor-{}", profile.name())).await;
    merge_pool(&env, pool).await;
    merge_class(
        &env,
        json!({"spec": {"blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"volumeSize": disk, "volumeType": "gp3"}}]}}),
    )
    .await;
    let before = env.karpenter_specs().await;
    let stack = intents(&env, Some("600s"), Some("storage = \"200Gi\""));

    let plan = env
        .rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    assert_eq!(
        plan.line_starting(&format!("= nodepool.{} ", env.pool)),
        format!("= nodepool.{} has no changes", env.pool)
    );
    plan.stdout_has("(kept (longer than the stack asks), already satisfied: ");
    plan.stdout_has(&format!(
        "already satisfied: /dev/xvda is {disk}, at least 200Gi)"
    ));
    assert_eq!(
        plan.line_starting("Plan: "),
        "Plan: 0 to add, 0 to change, 0 to destroy, 0 to patch."
    );

    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    assert_eq!(env.karpenter_specs().await, before, "nothing was written");
    let (api, kind) = profile.pool();
    let pool = env.get(api, kind, None, &env.pool).await.expect("pool");
    assert!(
        !pool["metadata"]["annotations"]
            .to_string()
            .contains("rayform"),
        "no bookkeeping for a patch that was not made: {}",
        pool["metadata"]
    );
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(env.karpenter_specs().await, before);
}

/// A longer TTL and a larger disk set with kubectl after the apply satisfy
/// the floors too: the next plan keeps them instead of "correcting" them
/// back down to the stack's numbers, and says why.
async fn values_raised_since_the_apply_are_kept(profile: Profile, longer: Value) {
    let env = Env::new(profile, &format!("raised-{}", profile.name())).await;
    let stack = intents(&env, Some("600s"), Some("storage = \"200Gi\""));
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    merge_pool(&env, longer).await;
    let device = env.class_spec().await["blockDeviceMappings"][0]["deviceName"].clone();
    merge_class(
        &env,
        json!({"spec": {"blockDeviceMappings": [{"deviceName": device, "ebs": {"volumeSize": "300Gi", "volumeType": "gp3"}}]}}),
    )
    .await;
    let raised = env.karpenter_specs().await;

    let plan = env
        .rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    assert_eq!(
        plan.line_starting(&format!("= nodepool.{} ", env.pool)),
        format!("= nodepool.{} has no changes", env.pool)
    );
    plan.stdout_has("(kept (longer than the stack asks), set since the apply: ");
    plan.stdout_has("300Gi, at least 200Gi");
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    assert_eq!(env.karpenter_specs().await, raised, "nothing was lowered");
}

#[tokio::test]
async fn a_v1_pool_and_class_raised_since_the_apply_are_kept() {
    values_raised_since_the_apply_are_kept(
        Profile::V1,
        json!({"spec": {"disruption": {"consolidateAfter": "1h"}}}),
    )
    .await;
}

#[tokio::test]
async fn a_v1alpha5_provisioner_raised_since_the_apply_is_kept() {
    values_raised_since_the_apply_are_kept(
        Profile::V1alpha5,
        json!({"spec": {"ttlSecondsAfterEmpty": 3600}}),
    )
    .await;
}

#[tokio::test]
async fn a_v1_pool_keeping_empty_nodes_an_hour_is_not_shortened() {
    met_intents_are_left_alone(
        Profile::V1,
        json!({"spec": {"disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "1h"}}}),
        "1Ti",
    )
    .await;
}

#[tokio::test]
async fn a_v1beta1_pool_that_never_consolidates_is_not_made_to() {
    met_intents_are_left_alone(
        Profile::V1beta1,
        json!({"spec": {"disruption": {"consolidationPolicy": "WhenUnderutilized", "consolidateAfter": "Never"}}}),
        "500Gi",
    )
    .await;
}

#[tokio::test]
async fn a_v1alpha5_provisioner_that_never_removes_empty_nodes_gets_no_ttl() {
    met_intents_are_left_alone(
        Profile::V1alpha5,
        json!({"spec": {"ttlSecondsAfterEmpty": null}}),
        "1Ti",
    )
    .await;
}

/// Karpenter v1 removes empty nodes after `consolidateAfter` under every
/// policy: a pool consolidating underutilised nodes after an hour already
/// keeps empty ones an hour.
#[tokio::test]
async fn a_v1_pool_consolidating_after_an_hour_already_keeps_empty_nodes() {
    met_intents_are_left_alone(
        Profile::V1,
        json!({"spec": {"disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "1h"}}}),
        "1Ti",
    )
    .await;
}

/// A budget of zero nodes for reason Empty stops Karpenter v1's emptiness
/// method whatever `consolidateAfter` says.
#[tokio::test]
async fn a_v1_pool_whose_budget_allows_no_empty_node_removal_is_not_patched() {
    met_intents_are_left_alone(
        Profile::V1,
        json!({"spec": {"disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "30s",
            "budgets": [{"nodes": "10%"}, {"nodes": "0", "reasons": ["Empty"]}]}}}),
        "1Ti",
    )
    .await;
}

/// Karpenter writes a pool's status every few seconds: a saved plan made
/// before such a write still applies, a spec changed since does not.
#[tokio::test]
async fn a_saved_patch_survives_a_status_write_but_not_a_spec_change() {
    let env = Env::new(Profile::V1, "status-write").await;
    let stack = intents(&env, Some("2h"), None);
    env.rayform(&["init", &stack]).ok();
    env.rayform(&["plan", &stack, "--out", "a.plan"]).ok();
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
        "message": "", "lastTransitionTime": "2026-12-05T00:00:00Z"}]}});
    env.merge_status_as("karpenter", env.profile.pool(), &env.pool, ready)
        .await;
    env.rayform(&["apply", "a.plan", "--auto-approve"]).ok();
    assert_eq!(
        env.pool_spec().await["disruption"]["consolidateAfter"],
        "7200s"
    );

    let stack = intents(&env, Some("3h"), None);
    env.rayform(&["plan", &stack, "--out", "b.plan"]).ok();
    merge_pool(&env, json!({"spec": {"weight": 7}})).await;
    env.rayform(&["apply", "b.plan", "--auto-approve"])
        .code(1)
        .stderr_has("changed in the cluster since the plan was made");
}

#[tokio::test]
async fn a_v1_pool_keeps_its_policy_and_is_said_to_consolidate_later() {
    let env = Env::new(Profile::V1, "keeps-policy").await;
    merge_pool(
        &env,
        json!({"spec": {"disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "30s"}}}),
    )
    .await;
    let before = env.pool_spec().await;
    let stack = intents(&env, Some("600s"), None);
    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has("consolidateAfter 600s (was 30s) also makes Karpenter wait 10m after a node's last pod change before consolidating it as underutilised (policy WhenEmptyOrUnderutilized)");
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    let disruption = &env.pool_spec().await["disruption"];
    assert_eq!(
        disruption["consolidationPolicy"],
        json!("WhenEmptyOrUnderutilized")
    );
    assert_eq!(disruption["consolidateAfter"], json!("600s"));
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(env.pool_spec().await, before, "destroy restores the pool");
}

/// A stack applied by a rayform that switched v1 pools to WhenEmpty: the
/// next apply gives the policy back, and destroy still restores the rest.
#[tokio::test]
async fn a_policy_an_older_rayform_switched_is_given_back() {
    let env = Env::new(Profile::V1, "old-when-empty").await;
    merge_pool(
        &env,
        json!({"spec": {"disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "30s"}}}),
    )
    .await;
    let before = env.pool_spec().await;
    let stack = intents(&env, Some("600s"), None);
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    // What the older rayform left on the pool: its patch and bookkeeping.
    let originals = r#"{"/spec/disruption/consolidateAfter":{"value":"30s"},"/spec/disruption/consolidationPolicy":{"value":"WhenEmptyOrUnderutilized"}}"#;
    let held = r#"{"/spec/disruption/consolidateAfter":"600s","/spec/disruption/consolidationPolicy":"WhenEmpty"}"#;
    merge_pool(
        &env,
        json!({"metadata": {"annotations": {"rayform.io/karpenter-original": originals, "patch.rayform.io/intents": held}},
               "spec": {"disruption": {"consolidationPolicy": "WhenEmpty"}}}),
    )
    .await;
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    let disruption = &env.pool_spec().await["disruption"];
    assert_eq!(
        disruption["consolidationPolicy"],
        json!("WhenEmptyOrUnderutilized")
    );
    assert_eq!(disruption["consolidateAfter"], json!("600s"));
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(env.pool_spec().await, before, "destroy restores the pool");
}

/// Applies `storage = "200Gi"` (and `extra`) to the class as `class` sets
/// it, checks the list Karpenter gets, and that destroy restores the class.
async fn sized(env: &Env, class: Value, extra: &str, expected: Value) {
    merge_class(env, class).await;
    let before = env.class_spec().await;
    let stack = intents(env, None, Some(&format!("storage = \"200Gi\"\n{extra}")));
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    assert_eq!(env.class_spec().await["blockDeviceMappings"], expected);
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(env.class_spec().await, before, "destroy restores the class");
}

fn mapping(device: &str, size: &str) -> Value {
    json!({"deviceName": device, "ebs": {"volumeSize": size, "volumeType": "gp3", "encrypted": true}})
}

#[tokio::test]
async fn each_ami_family_sizes_the_device_karpenter_reads_storage_from() {
    let env = Env::new(Profile::V1beta1, "families").await;
    let family = |name: &str| json!({"spec": {"amiFamily": name, "blockDeviceMappings": null}});
    sized(
        &env,
        family("Ubuntu"),
        "",
        json!([mapping("/dev/sda1", "200Gi")]),
    )
    .await;
    sized(
        &env,
        family("Windows2022"),
        "",
        json!([mapping("/dev/sda1", "200Gi")]),
    )
    .await;
    sized(
        &env,
        family("Bottlerocket"),
        "",
        json!([mapping("/dev/xvda", "4Gi"), mapping("/dev/xvdb", "200Gi")]),
    )
    .await;
    // Karpenter's schema wants AMIs named for a Custom family.
    let custom = json!({"spec": {"amiFamily": "Custom", "amiSelectorTerms": [{"id": "ami-0123456789abcdef0"}], "blockDeviceMappings": null}});
    sized(
        &env,
        custom,
        "device = \"/dev/sdf\"",
        json!([{"deviceName": "/dev/sdf", "ebs": {"volumeSize": "200Gi", "volumeType": "gp3", "encrypted": true, "deleteOnTermination": true}}]),
    )
    .await;

    let stack = intents(&env, None, Some("storage = \"200Gi\""));
    let plan = env.rayform(&["plan", &stack]).code(1);
    plan.stdout_has("amiFamily Custom");
    plan.stdout_has("help: set `device`");
}

#[tokio::test]
async fn a_v1_bottlerocket_alias_without_mappings_keeps_its_os_volume() {
    let env = Env::new(Profile::V1, "alias").await;
    let class = json!({"spec": {"amiFamily": null, "amiSelectorTerms": [{"alias": "bottlerocket@latest"}], "blockDeviceMappings": null}});
    sized(
        &env,
        class,
        "",
        json!([mapping("/dev/xvda", "4Gi"), mapping("/dev/xvdb", "200Gi")]),
    )
    .await;
}

#[tokio::test]
async fn a_node_template_with_a_launch_template_is_refused_with_the_reason() {
    let env = Env::new(Profile::V1alpha5, "launch-template").await;
    merge_class(
        &env,
        json!({"spec": {"launchTemplate": "gpu-nodes", "amiFamily": null, "blockDeviceMappings": null}}),
    )
    .await;
    let before = env.class_spec().await;
    let stack = intents(&env, None, Some("storage = \"200Gi\""));
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    let said = run.all();
    assert!(said.contains("launch template `gpu-nodes`"), "{said}");
    assert!(
        said.contains("Karpenter rejects blockDeviceMappings alongside launchTemplate"),
        "{said}"
    );
    assert_eq!(env.class_spec().await, before);
}

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

/// A cluster half-way through the v0.32 migration has a Provisioner and a
/// NodePool of one name, and Karpenter launches from both: rayform patches
/// the NodePool, and the plan names the Provisioner it leaves alone.
#[tokio::test]
async fn on_karpenter_v0_32_a_provisioner_beside_the_patched_nodepool_is_named() {
    let env = Env::new(Profile::V032, "v032-both").await;
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
    let stack = intents(&env, Some("600s"), None);
    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has(&format!(
        "will be patched (karpenter.sh/v1beta1 NodePool {})",
        env.pool
    ));
    plan.stdout_has(&format!(
        "a Provisioner `{}` (karpenter.sh/v1alpha5) exists beside the NodePool and is not patched",
        env.pool
    ));
    let nodepool_spec = async || {
        env.get("karpenter.sh/v1beta1", "NodePool", None, &env.pool)
            .await
            .expect("the test's NodePool")["spec"]
            .clone()
    };
    let before = nodepool_spec().await;
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    assert_eq!(
        nodepool_spec().await["disruption"]["consolidateAfter"],
        json!("600s")
    );
    env.rayform(&["destroy", &stack, "--auto-approve"]).ok();
    assert_eq!(nodepool_spec().await, before);
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
