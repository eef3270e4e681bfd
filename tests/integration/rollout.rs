//! What KubeRay does with a RayService change, as the plan predicts it,
//! against the real operator on the `--nodes` cluster: what it leaves alone,
//! what its own hash says it rebuilds, and, mid-upgrade, what it compares
//! with the RayCluster it is preparing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::readiness::{Echo, active_cluster, rayservice};
use crate::support::{Env, Profile, ray_turn};

/// Applies `echo` and waits until it serves; returns its serving RayCluster.
async fn serving_after_apply(env: &Env, echo: &Echo<'_>) -> String {
    let stack = echo.stack(env, "timeout = \"4m\"");
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    active_cluster(&rayservice(env).await)
}

/// Applies `echo` without waiting, gives KubeRay time for several
/// reconciles, and returns the serving RayCluster as KubeRay then has it.
async fn applied_and_left_to_kuberay(env: &Env, echo: &Echo<'_>, said: &str) -> Value {
    let stack = echo.stack(env, "timeout = \"4m\"");
    let plan = env.rayform(&["plan", &stack, "--json"]).ok();
    let json: Value = serde_json::from_str(&plan.stdout).expect("plan --json");
    let rollout = &json["changes"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["address"] == "rayservice.echo"))
        .expect("the RayService is in the plan")["rollout"];
    assert_eq!(rollout["kind"], "not-applied", "{rollout}");
    assert!(
        rollout["why"].as_str().unwrap_or_default().contains(said),
        "{rollout}"
    );
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    // KubeRay reconciles every 2 s: five passes to prove it leaves the cluster alone.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rs = rayservice(env).await;
    assert_eq!(
        rs.pointer("/status/pendingServiceStatus/rayClusterName")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        "",
        "KubeRay started a new cluster: {rs}"
    );
    env.get(
        "ray.io/v1",
        "RayCluster",
        Some(&env.ns),
        &active_cluster(&rs),
    )
    .await
    .expect("the serving RayCluster")
}

#[tokio::test]
async fn changes_kuberay_leaves_alone_are_planned_as_not_applied() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-leftalone").await;
    let first = Echo {
        workers_max: Some(1),
        ..Echo::default()
    };
    let serving = serving_after_apply(&env, &first).await;

    let more_workers = Echo {
        workers_max: Some(3),
        ..Echo::default()
    };
    let cluster = applied_and_left_to_kuberay(&env, &more_workers, "maxReplicas").await;
    assert_eq!(cluster["metadata"]["name"], serving.as_str());
    assert_eq!(
        cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"],
        json!(1),
        "KubeRay kept the cluster's own maxReplicas"
    );

    let no_upgrades = Echo {
        workers_max: Some(3),
        marker: "two",
        strategy: Some("None"),
        ..Echo::default()
    };
    let cluster = applied_and_left_to_kuberay(&env, &no_upgrades, "upgradeStrategy None").await;
    assert_eq!(cluster["metadata"]["name"], serving.as_str());
    assert!(
        cluster["spec"]["headGroupSpec"]
            .to_string()
            .contains(r#""value":"one""#),
        "the head kept its env: {}",
        cluster["spec"]["headGroupSpec"]
    );
}

#[tokio::test]
async fn what_kuberay_rebuilds_is_judged_by_its_own_hash_on_the_serving_cluster() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-hash").await;
    let first = Echo {
        head_resources: Some("{limits: {memory: 8Gi}}"),
        ..Echo::default()
    };
    let serving = serving_after_apply(&env, &first).await;

    // A respelling KubeRay reads as the same quantity: no new cluster.
    let respelled = Echo {
        head_resources: Some("{limits: {memory: 8192Mi}}"),
        ..Echo::default()
    };
    env.rayform(&["plan", &respelled.stack(&env, "timeout = \"4m\"")])
        .ok()
        .stdout_has("(KubeRay v1.5.0: no new RayCluster and no Serve update)");

    // Held back by upgradeStrategy None, then None removed: the live spec
    // already says marker two, but the serving cluster was built from one.
    let held_back = Echo {
        marker: "two",
        strategy: Some("None"),
        ..respelled
    };
    let cluster = applied_and_left_to_kuberay(&env, &held_back, "upgradeStrategy None").await;
    assert_eq!(cluster["metadata"]["name"], serving.as_str());
    let released = Echo {
        strategy: None,
        ..held_back
    };
    let stack = released.stack(&env, "timeout = \"5m\"");
    env.rayform(&["plan", &stack]).ok().stdout_has(
        "(KubeRay v1.5.0: new RayCluster (zero-downtime upgrade: 0 more GPUs until promotion))",
    );
    env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    let rs = rayservice(&env).await;
    assert_ne!(
        active_cluster(&rs),
        serving,
        "KubeRay built a new cluster, as planned: {rs}"
    );
}

/// The RayCluster KubeRay names as being prepared, once it has made it.
async fn preparing_cluster(env: &Env, other_than: &str) -> String {
    for _ in 0..300 {
        let rs = rayservice(env).await;
        let name = rs
            .pointer("/status/pendingServiceStatus/rayClusterName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !name.is_empty()
            && name != other_than
            && env
                .get("ray.io/v1", "RayCluster", Some(&env.ns), name)
                .await
                .is_some()
        {
            return name.to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "KubeRay prepared no new RayCluster in 30 s: {}",
        rayservice(env).await
    );
}

/// While KubeRay prepares a new RayCluster (an upgrade in progress), it
/// compares a change with that one, not the serving one: a change the one
/// being prepared already has builds nothing more, and going back to the
/// serving spec builds a third cluster in its place.
#[tokio::test]
async fn during_an_upgrade_a_change_is_judged_against_the_cluster_being_prepared() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-preparing").await;
    let first = Echo::default();
    let serving = serving_after_apply(&env, &first).await;

    let stuck = Echo {
        marker: "two",
        head_unschedulable: true,
        ..Echo::default()
    };
    let stack = stuck.stack(&env, "");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let preparing = preparing_cluster(&env, "").await;

    let respelled = Echo {
        head_resources: Some("{}"),
        ..stuck
    };
    env.rayform(&["plan", &respelled.stack(&env, "")])
        .ok()
        .stdout_has("(KubeRay v1.5.0: upgrade in progress, so compared with the RayCluster KubeRay is preparing: no new RayCluster and no Serve update)");

    let stack = first.stack(&env, "");
    env.rayform(&["plan", &stack]).ok().stdout_has(
        "(KubeRay v1.5.0: upgrade in progress, so compared with the RayCluster KubeRay is preparing: new RayCluster (zero-downtime upgrade: 0 more GPUs until promotion), in place of the one being prepared)",
    );
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let replacing = preparing_cluster(&env, &preparing).await;
    assert_ne!(replacing, serving, "a third RayCluster, as planned");
}
