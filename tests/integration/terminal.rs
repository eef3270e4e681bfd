//! At a terminal instead of with `--auto-approve`: the confirmation prompt,
//! driven through a real pseudo-terminal (tests/support/pty_drive.py), so
//! that Ctrl-C is typed, not sent: the terminal turns it into SIGINT for the
//! foreground process group, as for a person.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Backend, Env, Profile, on_both_backends, repo};

/// What a person saw, and how the command ended.
struct Session {
    code: i32,
    output: String,
}

/// Runs rayform on a pseudo-terminal: once `wait_for` is on screen, waits
/// `delay`, then types `keys`.
fn at_terminal(env: &Env, args: &[&str], wait_for: &str, delay: Duration, keys: &str) -> Session {
    let rayform = env.command(args);
    let mut driver = std::process::Command::new("python3");
    driver
        .arg(repo().join("tests/support/pty_drive.py"))
        .args([wait_for, &delay.as_secs_f64().to_string(), keys, "--"])
        .arg(rayform.get_program())
        .args(rayform.get_args())
        .current_dir(env.path(""));
    for (key, value) in rayform.get_envs() {
        match value {
            Some(v) => driver.env(key, v),
            None => driver.env_remove(key),
        };
    }
    let out = driver.output().expect("run the pty driver");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the pty driver said nothing readable ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["typed"], true, "never saw {wait_for:?}: {report}");
    Session {
        code: i32::try_from(report["code"].as_i64().unwrap_or(-1)).unwrap_or(-1),
        output: report["output"].as_str().unwrap_or_default().to_string(),
    }
}

/// A person reads the plan for longer than the Lease lasts, then says yes:
/// the Lease was renewed meanwhile, so the apply goes ahead. (Before, the
/// prompt blocked the only runtime thread and the lock was lost.)
#[tokio::test]
async fn an_interactive_apply_keeps_its_lease_while_the_plan_is_read() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "ttyslow").await;
    let stack = env.mission_stack("ttyslow");
    let seen = at_terminal(
        &env,
        &["apply", &stack, "--no-wait"],
        "Enter a value:",
        Duration::from_secs(20),
        "yes\n",
    );
    assert_eq!(seen.code, 0, "{}", seen.output);
    assert!(seen.output.contains("Apply complete!"), "{}", seen.output);
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_some()
    );
}

/// Ctrl-C at the prompt cancels at once, as in Terraform: exit 130, nothing
/// written, and the lock is free for the next run straight away.
async fn ctrl_c_at_the_prompt_cancels_at_once(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "ttyctrlc").await;
    let stack = env.mission_stack("ttyctrlc");
    let started = Instant::now();
    let seen = at_terminal(
        &env,
        &["apply", &stack, "--no-wait"],
        "Enter a value:",
        Duration::from_millis(300),
        "\\x03",
    );
    assert_eq!(seen.code, 130, "{}", seen.output);
    assert!(seen.output.contains("Apply cancelled."), "{}", seen.output);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cancelling took {:?}",
        started.elapsed()
    );
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_none(),
        "a cancelled apply created the Secret"
    );
    // The lock was given back: the next run does not wait for it.
    let next = Instant::now();
    env.rayform(&["plan", &stack]).ok();
    assert!(next.elapsed() < Duration::from_secs(10));
    if backend == Backend::Kubernetes {
        let lease = env
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                Some(&env.ns),
                "rayform-lock-ttyctrlc",
            )
            .await
            .expect("the Lease stays, without a holder");
        assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    }
}

on_both_backends!(ctrl_c_at_the_prompt_cancels_at_once);

/// Anything but `yes` declines: exit 1, nothing written.
#[tokio::test]
async fn an_answer_other_than_yes_declines() {
    let env = Env::new(Profile::V1, "ttyno").await;
    let stack = env.mission_stack("ttyno");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let seen = at_terminal(
        &env,
        &["destroy", &stack],
        "Enter a value:",
        Duration::ZERO,
        "no\n",
    );
    assert_eq!(seen.code, 1, "{}", seen.output);
    assert!(
        seen.output.contains("Destroy cancelled."),
        "{}",
        seen.output
    );
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_some()
    );
}
