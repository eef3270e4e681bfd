//! What the wait tells on the way to serving, against the real KubeRay
//! operator, Karpenter and Ray: the causes it stops on at once (an image the
//! node cannot pull, a crash loop, a spec KubeRay refuses) and the one it
//! waits through (a Serve start that fails once), an operator that runs but
//! does not act, and the account of a slow start, as lines and as
//! `apply --json` events. The RayServices are `readiness`'s echo app.

use std::time::Duration;

use serde_json::{Value, json};

use crate::readiness::{Echo, chat, head_ip, unreconciled_stack};
use crate::support::{Backend, Env, OwnCluster, Profile, ray_turn};

/// The kubelet backs off pulling an image it cannot get; nothing will change
/// that without a new spec, so the wait says so instead of sitting out its
/// timeout.
#[tokio::test]
async fn an_image_the_node_cannot_pull_fails_the_wait_naming_the_image() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-image").await;
    let echo = Echo {
        image: "registry.example/no-such/ray:2.60.0",
        ..Echo::default()
    };
    let stack = echo.stack(&env, "timeout = \"10m\"");
    let started = std::time::Instant::now();
    let run = env
        .rayform(&["apply", &stack, "--auto-approve", "--json"])
        .code(1);
    let took = started.elapsed();
    run.stderr_has("cannot pull image registry.example/no-such/ray:2.60.0");
    run.stderr_has("help: check the image name and tag");
    assert!(
        took < Duration::from_secs(90),
        "the wait took {took:?}, not a minute after the back-off:\n{}",
        run.stderr
    );
    // For CI, the same as events: the failure with its cause and help, then the result.
    let events: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let [.., failed, result] = events.as_slice() else {
        panic!("too few events:\n{}", run.stdout)
    };
    assert_eq!(failed["type"], "failed", "{failed}");
    assert_eq!(failed["link"], "head_pod", "{failed}");
    assert!(
        failed["object"]
            .as_str()
            .is_some_and(|o| o.starts_with("pod/echo-") && o.contains("-head-")),
        "{failed}"
    );
    assert!(
        failed["stuck"]
            .as_str()
            .is_some_and(|s| s.contains("cannot pull image registry.example/no-such/ray:2.60.0")),
        "{failed}"
    );
    assert!(
        failed["help"]
            .as_str()
            .is_some_and(|h| h.starts_with("check the image name and tag")),
        "{failed}"
    );
    assert_eq!(result["type"], "result");
    assert_eq!(result["ok"], false);
    assert_eq!(result["help"], failed["help"], "{result}");

    // Asked to wait anyway, it waits out its timeout and says what held it up.
    let stack = echo.stack(&env, "timeout = \"20s\"");
    let run = env
        .rayform(&["apply", &stack, "--auto-approve", "--keep-waiting"])
        .code(1);
    run.stderr_has("did not serve /v1/chat/completions within 20s; held up by: a running head pod of RayCluster");
    run.stderr_has("backing off pulling image registry.example/no-such/ray:2.60.0");

    let status = env.rayform(&["status", &stack]).code(2);
    status.stdout_has("rayservice.echo");
    status.stdout_has(
        "not serving /v1/chat/completions; waiting for a running head pod of RayCluster",
    );
    status.stdout_has("stuck: pod ");
    status.stdout_has("cannot pull image registry.example/no-such/ray:2.60.0");
}

/// A head behind a minute-long pull (an image tag of this test's own, which
/// no node has): `apply --json -v` tells it as JSON events, the complete
/// account among them, and the line after a silence says how long the pull
/// has taken so far, as do the timeout's last look and `rayform status`.
#[tokio::test]
async fn a_long_pull_says_how_long_so_far_and_json_events_tell_the_whole_account() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-slowpull").await;
    let image = format!("rayproject/ray-llm:slow-pull-{}", env.ns);
    let echo = Echo {
        image: &image,
        ..Echo::default()
    };
    let stack = echo.stack(&env, "timeout = \"16s\"");
    let run = env
        .rayform(&["apply", &stack, "--auto-approve", "--json", "-v"])
        .code(1);
    let events: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == kind).collect() };
    assert_eq!(of("plan").len(), 1, "{}", run.stdout);
    assert!(
        of("change")
            .iter()
            .any(|e| e["address"] == "rayservice.echo" && e["message"] == "Creating..."),
        "{}",
        run.stdout
    );
    let pulling = format!("pulling image {image}");
    assert!(
        of("pod").iter().any(|e| e["link"] == "head_pod"
            && e["object"]
                .as_str()
                .is_some_and(|o| o.starts_with("pod/echo-"))
            && e["message"].as_str().is_some_and(|m| m.ends_with(&pulling))),
        "{}",
        run.stdout
    );
    let still = of("still");
    let said = still
        .first()
        .and_then(|e| e["message"].as_str())
        .unwrap_or_else(|| panic!("no still event:\n{}", run.stdout));
    assert!(
        said.starts_with("a running head pod of RayCluster echo-")
            && said.contains("-head-")
            && said.contains(&format!("{pulling} for 1")),
        "{said}"
    );
    let account = of("account");
    let block = account
        .last()
        .and_then(|e| e["message"].as_str())
        .unwrap_or_else(|| panic!("no account event:\n{}", run.stdout));
    for part in [
        "  RayService echo: not ready; active RayCluster none, pending echo-",
        "    condition Ready=False",
        "  RayCluster echo-",
        "container ray-head: waiting (ContainerCreating)",
        "event Pulling (kubelet): Pulling image",
        "  Serve applications: not asked yet",
    ] {
        assert!(block.contains(part), "no `{part}` in the account:\n{block}");
    }
    assert!(account.len() < 12, "an account a look: {}", account.len());
    let result = events.last().expect("a last event");
    assert_eq!(result["type"], "result", "{result}");
    assert_eq!(result["ok"], false);
    assert!(
        result["error"].as_str().is_some_and(|e| e
            .contains("did not serve /v1/chat/completions within 16s")
            && e.contains(&format!("{pulling} for 1"))),
        "{result}"
    );
    // stderr keeps the error as it always is, and nothing else but -v's logs.
    run.stderr_has("Error: wait.chat: rayservice.echo did not serve");
    assert!(!run.stderr.contains("Waiting for"), "{}", run.stderr);

    let status = env.rayform(&["status", &stack]).code(2);
    status.stdout_has(&format!("{pulling} for "));
}

/// A head whose `ray start` exits at once crashes again after each of the
/// kubelet's back-offs; the third crash ends the wait with its exit, where
/// KubeRay's status only ever says the cluster is not ready.
#[tokio::test]
async fn a_head_in_a_crash_loop_fails_the_wait_with_its_last_exit() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-crash").await;
    let echo = Echo {
        head_params: "{no-such-flag: '1'}",
        ..Echo::default()
    };
    let stack = echo.stack(&env, "timeout = \"10m\"");
    let started = std::time::Instant::now();
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    let took = started.elapsed();
    run.stderr_has("(head): container ray-head keeps crashing (2 restarts; last: exit code ");
    run.stderr_has("help: read its log with `kubectl logs --previous`");
    assert!(
        took < Duration::from_secs(150),
        "the wait took {took:?}:\n{}",
        run.stderr
    );
}

/// KubeRay v1.5 writes no status for a spec it rejects, only an Event; the
/// wait reads it instead of waiting for a generation KubeRay will never observe.
#[tokio::test]
async fn a_spec_kuberay_refuses_fails_the_wait_with_kuberay_s_words() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-refused").await;
    let echo = Echo {
        strategy: Some("Sometimes"),
        ..Echo::default()
    };
    let stack = echo.stack(&env, "timeout = \"10m\"");
    let started = std::time::Instant::now();
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    let took = started.elapsed();
    run.stderr_has("rayservice.echo: KubeRay refused the spec: The RayService spec is invalid");
    run.stderr_has("Spec.UpgradeStrategy.Type value Sometimes is invalid");
    assert!(
        took < Duration::from_secs(30),
        "the wait took {took:?}:\n{}",
        run.stderr
    );
}

/// Ray Serve 2.60 retries a replica that failed to start (up to three times a
/// replica) and reports DEPLOY_FAILED only once it gives up: a start that fails
/// once is waited through, and the wait says it is a retry.
#[tokio::test]
async fn a_serve_app_that_fails_once_and_recovers_is_waited_through() {
    let _turn = ray_turn().await;
    let env = Env::new(Profile::Nodes, "ready-retry").await;
    let echo = Echo {
        args: "{model: echo-r, init_delay_s: 3, fail_first: 1}",
        ..Echo::default()
    };
    let stack = echo.stack(&env, "timeout = \"4m\"");
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).ok();
    run.stderr_has("A replica failed to start with exception. Retrying");
    run.stderr_has("RuntimeError: echo_app: start 1 of the first 1 fails on purpose (fail_first)");
    assert_eq!(chat(&head_ip(&env).await, 8000)["model"], "echo-r");
}

/// A KubeRay operator that runs (its leader Lease is fresh) but never acts
/// on the RayService, as one stuck behind a hung request does: once only it
/// could have moved for 30 s, the wait says so, and the timeout repeats it,
/// instead of "still waiting" alone. A control plane of its own: the Lease
/// would make every other test on it see an operator.
#[tokio::test]
async fn an_operator_that_runs_but_does_not_act_is_said_to_be_quiet() {
    let own = OwnCluster::up(Profile::V1);
    let env = Env::on_cluster(
        Backend::File,
        Profile::V1,
        own.kubeconfig.clone(),
        "quietop",
    )
    .await;
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    env.apply_as(
        "kuberay-operator",
        "coordination.k8s.io/v1",
        "Lease",
        Some(&env.ns),
        "ray-operator-leader",
        json!({"spec": {"holderIdentity": "kuberay-operator-0", "leaseDurationSeconds": 60, "renewTime": now}}),
    )
    .await;
    let stack = unreconciled_stack(&env, "40s");
    let run = env.rayform(&["apply", &stack, "--auto-approve"]).code(1);
    let quiet = "KubeRay to name a RayCluster (the KubeRay operator runs, but has not acted on this RayService for over 30s: it may be stuck, or busy with other work; its log says which)";
    run.stderr_has(&format!("Waiting for {quiet}"));
    run.stderr_has(&format!("held up by: {quiet}"));
}
