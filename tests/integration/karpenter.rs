//! Karpenter as it really is, on its upstream CRDs: intents are floors, each
//! AMI family keeps node storage on its own device, and a launch template
//! cannot take block device mappings.

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
    plan.stdout_has(&format!("nodepool.{} has no changes", env.pool));
    plan.stdout_has("(already satisfied: ");
    plan.stdout_has(&format!(
        "(already satisfied: /dev/xvda is {disk}, at least 200Gi)"
    ));
    plan.stdout_has("Plan: 0 to add, 0 to change, 0 to destroy, 0 to patch.");

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

#[tokio::test]
async fn when_empty_is_said_to_stop_consolidating_underutilised_nodes() {
    let env = Env::new(Profile::V1, "when-empty").await;
    merge_pool(
        &env,
        json!({"spec": {"disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "2h"}}}),
    )
    .await;
    let stack = intents(&env, Some("600s"), None);
    let plan = env.rayform(&["plan", &stack]).ok();
    plan.stdout_has("(consolidateAfter stays 2h, longer than the 10m asked)");
    plan.stdout_has("consolidationPolicy WhenEmpty (was WhenEmptyOrUnderutilized) stops Karpenter from consolidating underutilised nodes");
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    let disruption = &env.pool_spec().await["disruption"];
    assert_eq!(disruption["consolidationPolicy"], json!("WhenEmpty"));
    assert_eq!(disruption["consolidateAfter"], json!("2h"));
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
