//! The kubernetes backend's Lease lock under the faults a team meets: clocks
//! set apart (libfaketime), a holder frozen past its Lease (SIGSTOP), a
//! renewal that reaches the API server late, someone else writing the
//! Lease. Whatever happens, one run at a time writes, a run that lost the
//! lock writes nothing more (the API server's audit log is the witness),
//! and the next run converges.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::many_config_maps;
use crate::support::{Backend, Env, OwnCluster, Profile, Run, Running};

/// `rayform args` with its clock moved by `offset` (e.g. "+20s"), by
/// libfaketime (Debian package `libfaketime`) preloaded into rayform itself:
/// the `faketime` wrapper would stay the parent, and a kill would miss rayform.
fn with_clock(env: &Env, offset: &str, args: &[&str]) -> std::process::Command {
    let arch = std::env::consts::ARCH;
    let library = [
        format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1"),
        "/usr/lib/faketime/libfaketime.so.1".to_string(),
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("these tests move rayform's clock with libfaketime: apt-get install faketime");
    let mut cmd = env.command(args);
    cmd.env("LD_PRELOAD", library).env("FAKETIME", offset);
    cmd
}

async fn lease(env: &Env, stack_name: &str) -> Value {
    env.get(
        "coordination.k8s.io/v1",
        "Lease",
        Some(&env.ns),
        &format!("rayform-lock-{stack_name}"),
    )
    .await
    .expect("the Lease exists")
}

fn holder_of(lease: &Value) -> Option<String> {
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

/// A run whose clock is 20 s ahead reads the holder's `renewTime` as 20 s
/// old, past the 15 s duration. It must not take over: the Lease keeps
/// changing, so its holder is alive.
#[tokio::test]
async fn a_run_with_its_clock_20s_ahead_does_not_take_over_a_healthy_holder() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "clockahead").await;
    let stack = env.mission_stack("clockahead");
    let holder = Running::spawn(env.command(&["apply", &stack, "--auto-approve"]));
    holder.until("Waiting for", Duration::from_secs(60)).await;
    let held_by = holder_of(&lease(&env, "clockahead").await);

    let started = Instant::now();
    let ahead = with_clock(&env, "+20s", &["plan", &stack])
        .output()
        .expect("run rayform under faketime");
    let ahead = Run::from(ahead).code(1);
    ahead.stderr_has("state is locked");
    ahead.stderr_has(&format!("pid {}", holder.pid()));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a live holder's renewals are seen within seconds"
    );
    assert_eq!(holder_of(&lease(&env, "clockahead").await), held_by);

    // The holder never noticed anyone; it ends as a Ctrl-C ends it.
    holder.interrupt();
    let held = holder.finish().code(130);
    assert!(!held.stderr.contains("lock was lost"), "{}", held.stderr);
}

/// A holder whose clock ran 60 s ahead wrote `renewTime`s a minute into
/// everyone else's future; once it is dead, its Lease must not block them
/// for that minute. Taking over and `force-unlock` both judge by what they
/// see change, on their own clock: a full duration unchanged, then it is theirs.
#[tokio::test]
async fn a_dead_holder_whose_clock_ran_ahead_is_taken_over_and_force_unlocked_after_a_duration() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "clockbehind").await;
    let stack = env.mission_stack("clockbehind");
    let spawn_holder = || async {
        let holder = Running::spawn(with_clock(
            &env,
            "+60s",
            &["apply", &stack, "--auto-approve"],
        ));
        holder.until("Waiting for", Duration::from_secs(60)).await;
        let lease = lease(&env, "clockbehind").await;
        let renewed: jiff::Timestamp = lease["spec"]["renewTime"]
            .as_str()
            .expect("renewTime")
            .parse()
            .expect("a timestamp");
        assert!(
            renewed.duration_since(jiff::Timestamp::now()) > jiff::SignedDuration::from_secs(45),
            "the holder's clock is a minute ahead: {lease}"
        );
        (holder, holder_of(&lease).expect("a holder"))
    };

    // Alive, it cannot be force-unlocked: its Lease keeps changing.
    let (holder, id) = spawn_holder().await;
    env.rayform(&["force-unlock", &stack, &id])
        .code(1)
        .stderr_has("held by a running process");

    // Dead (-9), it is taken over after one duration of silence.
    holder.kill();
    let started = Instant::now();
    let next = env.rayform(&["plan", &stack]).ok();
    next.stderr_has("Taking over the state lock");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(15)..Duration::from_secs(30)).contains(&waited),
        "took {waited:?}"
    );

    // And force-unlock clears a dead holder's Lease just as well.
    let (holder, id) = spawn_holder().await;
    holder.kill();
    env.rayform(&["force-unlock", &stack, &id])
        .ok()
        .stdout_has("is broken");
    assert_eq!(holder_of(&lease(&env, "clockbehind").await), None);
    let started = Instant::now();
    env.rayform(&["plan", &stack]).ok();
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// ConfigMaps in the stacks of the tests that stop a run mid-apply: enough
/// that it is still writing when stopped (its output says it was).
const COUNT: usize = 300;

/// Mutating requests in `requests` (audit events), as "verb resource name code".
fn writes(requests: &[Value]) -> Vec<String> {
    requests
        .iter()
        .filter(|e| {
            ["create", "update", "patch", "delete"]
                .iter()
                .any(|v| e["verb"] == json!(v))
        })
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["verb"],
                e["objectRef"]["resource"],
                e["objectRef"]["name"],
                e["responseStatus"]["code"]
            )
        })
        .collect()
}

/// A holder frozen (SIGSTOP) for longer than its Lease, while another run
/// takes the Lease over, wakes up to find it has lost the lock: from then on
/// it writes nothing, neither objects nor the state, says so, and the next
/// run finishes its work.
#[tokio::test]
async fn a_holder_frozen_past_its_lease_writes_nothing_after_the_takeover() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "frozen").await;
    let stack = many_config_maps(&env, "frozen", COUNT);
    let holder = env.spawn_apply(&stack, "1");
    holder
        .until("manifest.cm10: Created", Duration::from_secs(60))
        .await;
    holder.signal("STOP");

    // A request it had on the wire lands now; then the Lease goes silent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let takeover = env.rayform_once_unlocked(&["plan", &stack], Duration::from_secs(60));
    assert_eq!(takeover.code, 0, "{}", takeover.all());
    takeover.stderr_has("Taking over the state lock");

    let mark = env.audit_mark();
    holder.signal("CONT");
    let frozen = holder.finish().code(1);
    frozen.stderr_has("the state lock was lost");
    frozen.stderr_has("renew deadline");
    frozen.stderr_has("this run wrote nothing more");
    // A write it had begun when frozen (the lock checked, its bytes not all
    // sent yet) may still land: one at most, with parallelism 1. What
    // counts is that it begins none after.
    let after = env.requests_since(mark).await;
    let late = writes(&after);
    assert!(
        late.len() <= 1,
        "the run that lost its lock wrote after the takeover: {late:?}"
    );

    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    env.rayform(&["plan", &stack, "--detailed-exitcode"])
        .code(0);
    assert_eq!(env.count("v1", "ConfigMap").await, COUNT);
}

/// A destroy whose first delete a finalizer holds (so it sits in a watch,
/// writing nothing), then the API server stops answering for 20 s, longer
/// than the Lease. The renewal the holder sent meanwhile is answered only
/// when the server comes back; counted from that answer it would look
/// fresh, but anyone who saw the Lease before the pause may take it now.
/// Counted from when it was sent, it is long past the renew deadline: the
/// holder deletes nothing more once the finalizer goes.
#[tokio::test]
async fn a_renewal_answered_after_the_lease_expired_does_not_extend_it() {
    let own = OwnCluster::up(Profile::V1);
    let env = Env::on_cluster(
        Backend::Kubernetes,
        Profile::V1,
        own.kubeconfig.clone(),
        "late",
    )
    .await;
    let configmap = |data: &str| {
        format!("{{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ index = \"{data}\" }} }}")
    };
    let mut text = format!("[stack]\nname = \"late\"\nnamespace = \"{}\"\n", env.ns);
    let others: Vec<String> = (0..40).map(|i| format!("\"manifest.cm{i}\"")).collect();
    // Destroyed first: everything else waits for it.
    text.push_str(&format!(
        "\n[manifest.held]\nobject = {}\ndepends_on = [{}]\n",
        configmap("held"),
        others.join(", ")
    ));
    for i in 0..40 {
        text.push_str(&format!(
            "\n[manifest.cm{i}]\nobject = {}\n",
            configmap(&i.to_string())
        ));
    }
    env.write("late.toml", &text);
    env.rayform(&["apply", "late.toml", "--auto-approve"]).ok();
    let finalizers = |list: Value| json!({"metadata": {"finalizers": list}});
    let held =
        |body: Value| env.merge_as("someone", "v1", "ConfigMap", Some(&env.ns), "held", body);
    held(finalizers(json!(["test.rayform.io/hold"]))).await;

    let holder = Running::spawn(env.command(&[
        "destroy",
        "late.toml",
        "--auto-approve",
        "--parallelism",
        "1",
    ]));
    holder
        .until("manifest.held: Destroying...", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let apiserver = std::fs::read_to_string(own.dir.join("apiserver.pid"))
        .expect("the API server's pid")
        .trim()
        .to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &apiserver])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    signal("STOP");
    tokio::time::sleep(Duration::from_secs(20)).await;
    signal("CONT");
    // What was on the wire during the pause is answered now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mark = env.audit_mark();
    held(finalizers(Value::Null)).await;
    let takeover = env.rayform_once_unlocked(&["plan", "late.toml"], Duration::from_secs(60));
    assert_eq!(takeover.code, 0, "{}", takeover.all());
    let late = holder.finish().code(1);
    late.stderr_has("the state lock was lost");
    // Besides the Lease (the plan's), the finalizer's removal is the only write.
    let after = env.requests_since(mark).await;
    assert_eq!(
        writes(&after)
            .into_iter()
            .filter(|w| !w.contains("leases") && !w.starts_with(r#""patch" "configmaps" "held""#))
            .collect::<Vec<_>>(),
        Vec::<String>::new(),
        "the run whose renewal came late deleted objects or wrote the state after it"
    );

    env.rayform(&["destroy", "late.toml", "--auto-approve"])
        .ok();
    assert_eq!(env.count("v1", "ConfigMap").await, 0);
}

/// Someone else writes the Lease while it is held (a label, as a policy
/// controller adds; or this run's own renewal whose answer it never saw):
/// the Lease still names its holder, who keeps it, and whose release reads
/// it afresh and clears it, rather than failing on a stale resourceVersion
/// and leaving the next run to wait out the duration.
#[tokio::test]
async fn a_release_reads_the_lease_afresh_and_clears_it() {
    let env = Env::on(Backend::Kubernetes, Profile::V1, "release").await;
    let stack = env.mission_stack("release");
    let holder = Running::spawn(env.command(&["apply", &stack, "--auto-approve"]));
    holder.until("Waiting for", Duration::from_secs(60)).await;
    env.merge_as(
        "policy-controller",
        "coordination.k8s.io/v1",
        "Lease",
        Some(&env.ns),
        "rayform-lock-release",
        json!({"metadata": {"labels": {"team": "ml"}}}),
    )
    .await;
    holder.interrupt();
    let held = holder.finish().code(130);
    assert!(!held.stderr.contains("lock was lost"), "{}", held.stderr);

    let lease = lease(&env, "release").await;
    assert_eq!(holder_of(&lease), None, "{lease}");
    let started = Instant::now();
    env.rayform(&["plan", &stack]).ok();
    assert!(started.elapsed() < Duration::from_secs(10));
}
