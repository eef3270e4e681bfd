//! Karpenter at its edges, on the upstream CRDs: intents are floors, each
//! AMI family keeps node storage on its own device, and a launch template
//! cannot take block device mappings (karpenter_releases.rs has older
//! releases, gpu_pools.rs the GPU workers and their pools).

use serde_json::{Value, json};

use crate::support::{Env, Profile};

/// A stack holding only Karpenter intents on this test's pool and class.
pub fn intents(env: &Env, pool: Option<&str>, class: Option<&str>) -> String {
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

pub async fn merge_pool(env: &Env, body: Value) {
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
