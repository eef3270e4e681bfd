//! The command line as a Terraform and kubectl user meets it: help lines
//! that run as printed, Terraform's single-dash flags, kubectl's way of
//! reading `KUBECONFIG`, and `state mv` and `state push -`.

use crate::support::{Backend, Env, Profile, Run};

/// The commands a run suggests (`` help: … `rayform …` ``), as words.
fn suggested(run: &Run) -> Vec<Vec<String>> {
    run.all()
        .lines()
        .flat_map(|l| l.split('`').skip(1).step_by(2).map(str::to_string))
        .filter(|c| c.starts_with("rayform "))
        .map(|c| shell_words(&c))
        .collect()
}

/// Splits a command as a POSIX shell does the words rayform quotes: on
/// spaces, with single-quoted parts (and `'\''`) taken as they are.
fn shell_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in command.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                started = true;
            }
            ' ' if !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            '\\' if !quoted => {}
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// Runs the command the help line of `run` suggests (exactly one), as
/// printed, and checks that rayform took it: no usage error.
#[track_caller]
pub fn run_suggested(env: &Env, run: &Run) -> Run {
    let commands = suggested(run);
    assert_eq!(
        commands.len(),
        1,
        "expected one suggested command in:\n{}",
        run.all()
    );
    run_as_printed(env, &commands[0])
}

#[track_caller]
fn run_as_printed(env: &Env, words: &[String]) -> Run {
    assert_eq!(words[0], "rayform", "{words:?}");
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    let ran = env.rayform(&args);
    assert!(
        !ran.stderr.contains("Usage:") && !ran.stderr.contains("For more information, try"),
        "`{}` is not a command rayform takes:\n{}",
        words.join(" "),
        ran.stderr
    );
    ran
}

/// Every help line that names a rayform command names one that runs as
/// printed: the stack as given, the flags that chose the state, an address
/// where one is needed.
#[tokio::test]
async fn every_help_line_names_a_command_that_runs_as_printed() {
    let env = Env::new(Profile::V1, "helplines").await;
    let stack = env.mission_stack("helplines");

    // Importing what does not exist: apply creates it.
    let import = env.rayform(&["import", &stack, "secret.hf-token"]).code(1);
    import.stderr_has("there is nothing to import");
    let unconfirmed = run_suggested(&env, &import).code(1);
    assert_eq!(
        unconfirmed.line_starting("rayform apply "),
        "rayform apply needs confirmation, but standard input is not a terminal."
    );

    // A saved plan needs a state: init makes it.
    let unsaved = env.rayform(&["plan", &stack, "--out", "a.plan"]).code(1);
    run_suggested(&env, &unsaved).ok();
    env.rayform(&["plan", &stack, "--out", "a.plan"]).ok();

    // A saved plan cannot take --adopt: plan again with it, address and all.
    let adopt = env
        .rayform(&["apply", "a.plan", "--adopt", "secret.hf-token"])
        .code(1);
    let again = suggested(&adopt);
    assert_eq!(
        again[0][1..],
        [
            "plan",
            stack.as_str(),
            "--adopt",
            "secret.hf-token",
            "--out",
            "a.plan"
        ],
        "{}",
        adopt.stderr
    );
    run_suggested(&env, &adopt).ok();

    // The state a plan was made from is gone: init, then plan again.
    std::fs::remove_file(env.path("state/helplines.json")).unwrap();
    let gone = env.rayform(&["apply", "a.plan", "--auto-approve"]).code(1);
    let commands = suggested(&gone);
    assert_eq!(commands.len(), 2, "{}", gone.stderr);
    for command in &commands {
        run_as_printed(&env, command).ok();
    }

    // A stale plan: plan again.
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let stale = env.rayform(&["apply", "a.plan", "--auto-approve"]).code(1);
    assert!(
        stale.error_line().starts_with("the saved plan is stale: "),
        "{}",
        stale.stderr
    );
    run_suggested(&env, &stale).ok();

    // Help lines the library writes name the stack as STACK; the command
    // line fills it in. An object the stack did not create: plan with --adopt.
    env.apply_as(
        "someone",
        "v1",
        "ConfigMap",
        Some(&env.ns),
        "theirs",
        serde_json::json!({"data": {"k": "v"}}),
    )
    .await;
    let text = std::fs::read_to_string(env.path(&stack)).unwrap();
    env.write(
        &stack,
        &format!("{text}\n[manifest.theirs]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ k = \"v\" }} }}\n"),
    );
    let not_ours = env.rayform(&["plan", &stack]).code(1);
    not_ours.stdout_has("was not created by rayform");
    run_suggested(&env, &not_ours)
        .ok()
        .stdout_has("adopting an object rayform did not create");
    env.write(&stack, &text);

    // An unknown --target: list what the state tracks.
    let unknown = env
        .rayform(&["plan", &stack, "--target", "secret.nope"])
        .code(1);
    run_suggested(&env, &unknown)
        .ok()
        .stdout_has("secret.hf-token");

    // Addresses the state does not track, or that are not addresses: list them.
    for args in [
        &["state", "show", &stack, "secret.nope"][..],
        &["state", "show", &stack, "bogus"],
        &["state", "rm", &stack, "secret.nope"],
        &["state", "mv", &stack, "secret.nope", "secret.other"],
    ] {
        let wrong = env.rayform(args).code(1);
        run_suggested(&env, &wrong)
            .ok()
            .stdout_has("secret.hf-token");
    }

    // Taken back into the state: plan shows the rest.
    env.rayform(&["state", "rm", &stack, "secret.hf-token"])
        .ok();
    let imported = env.rayform(&["import", &stack, "secret.hf-token"]).ok();
    run_suggested(&env, &imported).ok();

    // A lock another run holds: force-unlock it, with the stack and the
    // flag that chose the state, once that run has died.
    env.rayform(&["--state", "other/s.json", "init", &stack])
        .ok();
    let held = rayform::state::lock::StateLock::acquire(&env.path("other/s.json"), "apply")
        .expect("take the lock");
    let locked = env
        .rayform(&["--state", "other/s.json", "plan", &stack])
        .code(1);
    locked.stderr_has("state is locked");
    run_suggested(&env, &locked)
        .code(1)
        .stderr_has("held by a running process");
    let record = std::fs::read_to_string(env.path("other/s.json.lock")).unwrap();
    drop(held);
    // As after kill -9: the OS lock is gone, the record stays.
    std::fs::write(env.path("other/s.json.lock"), &record).unwrap();
    run_suggested(&env, &locked).ok().stdout_has("is broken");

    // A state file that does not read: restore the backup.
    let state_file = env.path("state/helplines.json");
    std::fs::write(&state_file, "{ not json").unwrap();
    let corrupt = env.rayform(&["plan", &stack]).code(1);
    corrupt.stderr_has("is not valid");
    run_suggested(&env, &corrupt).ok().stdout_has("Restored");
    // The state reads again (as it was before the import, the last write).
    env.rayform(&["state", "list", &stack]).ok();
}

/// A plan made with `--state` and applied without it: the commands its
/// help lines suggest work on the state it was made from.
#[tokio::test]
async fn a_saved_plans_help_lines_name_the_state_it_was_made_from() {
    let env = Env::new(Profile::V1, "helpstate").await;
    let stack = env.mission_stack("helpstate");
    env.rayform(&["--state", "elsewhere/s.json", "init", &stack])
        .ok();
    env.rayform(&[
        "--state",
        "elsewhere/s.json",
        "plan",
        &stack,
        "--out",
        "b.plan",
    ])
    .ok();
    std::fs::remove_file(env.path("elsewhere/s.json")).unwrap();
    let gone = env.rayform(&["apply", "b.plan", "--auto-approve"]).code(1);
    let commands = suggested(&gone);
    assert_eq!(commands.len(), 2, "{}", gone.stderr);
    for command in &commands {
        run_as_printed(&env, command).ok();
    }
    assert!(env.path("elsewhere/s.json").exists(), "{commands:?}");
    assert!(!env.path("state/helpstate.json").exists(), "{commands:?}");
    env.rayform(&["apply", "b.plan", "--auto-approve", "--no-wait"])
        .ok();
}

/// Terraform's single-dash long flags work as their double-dash forms;
/// arguments after `--` and values of flags are left alone.
#[tokio::test]
async fn terraform_single_dash_flags_are_accepted() {
    let env = Env::new(Profile::V1, "singledash").await;
    let stack = env.mission_stack("singledash");
    env.rayform(&["init", &stack]).ok();
    env.rayform(&[
        "plan",
        &stack,
        "-detailed-exitcode",
        "-out=s.plan",
        "-no-color",
    ])
    .code(2);
    assert!(env.path("s.plan").exists(), "-out=FILE saved the plan");
    let json = env.rayform(&["plan", &stack, "-destroy", "-json"]).ok();
    let plan = json.json();
    assert_eq!(plan["destroy"], serde_json::json!(true), "{plan}");
    env.rayform(&[
        "apply",
        "s.plan",
        "-auto-approve",
        "-no-wait",
        "-parallelism",
        "2",
    ])
    .ok();
    // A short flag stays one; a value is not a flag; `--` ends the flags.
    env.rayform(&["-v", "state", "list", &stack]).ok();
    env.rayform(&["plan", &stack, "-out=-json"]).ok();
    assert!(env.path("-json").exists(), "the value of -out= is kept");
    env.rayform(&["validate", "--", "-destroy"])
        .code(1)
        .stderr_has("cannot read -destroy");
    env.rayform(&["apply", "s.plan", "-parallelism=0"])
        .code(1)
        .stderr_has("0 would work on nothing");
}

/// As kubectl: `KUBECONFIG` entries that do not exist are skipped, the
/// others merged with the first to set a key winning; when none exists,
/// the error says which paths were tried.
#[tokio::test]
async fn kubeconfig_entries_that_do_not_exist_are_skipped() {
    let env = Env::new(Profile::V1, "kcmissing").await;
    let stack = env.mission_stack("kcmissing");
    let real = env.kubeconfig.display().to_string();
    let missing = env.path("empty-kc").display().to_string();
    let plan = |kubeconfig: &str| {
        Run::from(
            env.command(&["plan", &stack])
                .env("KUBECONFIG", kubeconfig)
                .output()
                .expect("run rayform"),
        )
    };
    plan(&format!("{missing}:{real}")).ok();
    plan(&format!("{real}:{missing}")).ok();

    // The first file to name the current context wins: here, a dead server.
    let text = std::fs::read_to_string(&env.kubeconfig).unwrap();
    let port = text
        .split("https://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap();
    let dead = env.write(
        "dead.kubeconfig",
        &text.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:1"),
    );
    let dead = dead.display().to_string();
    plan(&format!("{missing}:{dead}:{real}"))
        .code(1)
        .stderr_has("cannot reach the cluster at https://127.0.0.1:1");
    plan(&format!("{real}:{dead}")).ok();

    let other = env.path("also-missing").display().to_string();
    let none = plan(&format!("{missing}:{other}")).code(1);
    none.stderr_has(&format!("tried {missing}, {other}"));

    let given = env
        .rayform(&["--kubeconfig", &missing, "plan", &stack])
        .code(1);
    given.stderr_has(&format!("cannot read {missing}: "));
    assert!(
        !given.stderr.contains("'\""),
        "quoted once: {}",
        given.stderr
    );
}

/// A plan with an error shows it once, under its change.
#[tokio::test]
async fn a_plan_error_is_printed_once() {
    let env = Env::new(Profile::V1, "errorsonce").await;
    let stack = env.mission_stack("errorsonce");
    env.apply_as(
        "someone",
        "v1",
        "Secret",
        Some(&env.ns),
        "hf-token",
        serde_json::json!({"stringData": {"k": "v"}}),
    )
    .await;
    let plan = env.rayform(&["plan", &stack]).code(1);
    assert_eq!(
        plan.all().matches("already exists").count(),
        1,
        "{}",
        plan.all()
    );
}

/// `state mv` records an entry under a new address, under the lock, and
/// leaves the object alone; `state push -` reads the state from stdin.
async fn state_mv_and_push_from_stdin(backend: Backend) {
    let env = Env::on(backend, Profile::V1, "statemv").await;
    let stack = env.mission_stack("statemv");
    env.rayform(&["apply", &stack, "--auto-approve", "--no-wait"])
        .ok();
    let before = env
        .get("v1", "Secret", Some(&env.ns), "hf-token")
        .await
        .expect("the Secret");
    let state = env.state("statemv");
    let recorded = state["resources"]["secret.hf-token"].clone();

    let mv = env
        .rayform(&["state", "mv", &stack, "secret.hf-token", "secret.token"])
        .ok();
    assert_eq!(
        mv.line_starting("Moved "),
        "Moved secret.hf-token to secret.token: the state records the object under its new address; the cluster was not touched."
    );
    let moved = env.state("statemv");
    assert!(moved["resources"]["secret.hf-token"].is_null(), "{moved}");
    assert_eq!(moved["resources"]["secret.token"], recorded);
    let after = env
        .get("v1", "Secret", Some(&env.ns), "hf-token")
        .await
        .expect("the Secret stays");
    assert_eq!(
        before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"],
        "the cluster is not touched"
    );

    // Refused: a source the state does not track, a target it does, another type.
    let gone = env
        .rayform(&["state", "mv", &stack, "secret.hf-token", "secret.x"])
        .code(1);
    assert_eq!(
        gone.error_line(),
        "the state does not track secret.hf-token"
    );
    let rayservice = "rayservice.mistral-7b";
    let other_type = env
        .rayform(&["state", "mv", &stack, "secret.token", rayservice])
        .code(1);
    assert_eq!(
        other_type.error_line(),
        format!(
            "secret.token and {rayservice} are resources of different types; an entry can only move to another name of its type"
        )
    );
    let pool = format!("nodepool.{}", env.pool);
    let class = format!("nodeclass.{}", env.class);
    let taken = env.rayform(&["state", "mv", &stack, &pool, &pool]).code(1);
    assert_eq!(
        taken.error_line(),
        format!("the state already tracks {pool}")
    );
    env.rayform(&["state", "mv", &stack, &class, &pool])
        .code(1)
        .stderr_has("different types");
    assert_eq!(env.state("statemv")["serial"], moved["serial"]);

    // Back again, through standard input.
    let pulled = env.rayform(&["state", "pull", &stack]).ok().stdout;
    let mut old: serde_json::Value = serde_json::from_str(&pulled).unwrap();
    old["resources"]["secret.hf-token"] = old["resources"]["secret.token"].take();
    old["resources"]
        .as_object_mut()
        .unwrap()
        .remove("secret.token");
    let mut push = env.command(&["state", "push", &stack, "-"]);
    push.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = push.spawn().expect("spawn rayform");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), old.to_string().as_bytes())
        .unwrap();
    Run::from(child.wait_with_output().unwrap())
        .ok()
        .stdout_has("Pushed standard input");
    let pushed = env.state("statemv");
    assert_eq!(pushed["resources"]["secret.hf-token"], recorded);
    env.rayform(&["plan", &stack, "-detailed-exitcode"]).ok();

    // Under the lock, as every state edit.
    if backend == Backend::File {
        let _held =
            rayform::state::lock::StateLock::acquire(&env.path("state/statemv.json"), "apply")
                .expect("take the lock");
        env.rayform(&["state", "mv", &stack, "secret.hf-token", "secret.x"])
            .code(1)
            .stderr_has("state is locked");
    }
}

mod state_mv_and_push_from_stdin {
    #[tokio::test]
    async fn file() {
        super::state_mv_and_push_from_stdin(crate::support::Backend::File).await;
    }

    #[tokio::test]
    async fn kubernetes() {
        super::state_mv_and_push_from_stdin(crate::support::Backend::Kubernetes).await;
    }
}

/// `apply --json` asks no question (a stream of JSON has no place for one):
/// without --auto-approve it refuses before touching anything, a saved plan
/// needs none; every line is one JSON object, the plan first and the result
/// last. `destroy --json` the same.
#[tokio::test]
async fn apply_and_destroy_json_are_json_lines_from_the_plan_to_the_result() {
    let env = Env::new(Profile::V1, "applyjson").await;
    let stack = env.mission_stack("applyjson");
    env.rayform(&["init", &stack]).ok();
    let lines = |stdout: &str| -> Vec<serde_json::Value> {
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let refused = env.rayform(&["apply", &stack, "--json"]).code(1);
    refused.stderr_has("apply --json needs --auto-approve");
    let said = lines(&refused.stdout);
    assert_eq!(said.len(), 1, "{}", refused.stdout);
    assert_eq!(said[0]["type"], "result");
    assert_eq!(said[0]["ok"], false);

    env.rayform(&["plan", &stack, "--out", "s.plan"]).ok();
    let applied = env
        .rayform(&["apply", "s.plan", "--no-wait", "--json"])
        .ok();
    let said = lines(&applied.stdout);
    assert_eq!(said[0]["type"], "plan", "{}", applied.stdout);
    assert!(said[0]["plan"]["changes"].is_array());
    assert!(
        said.iter()
            .any(|e| e["type"] == "change" && e["message"] == "Creating..."),
        "{}",
        applied.stdout
    );
    let result = said.last().expect("a result");
    assert_eq!(result["type"], "result");
    assert_eq!(result["ok"], true);
    assert_eq!(result["destroy"], false);
    assert!(result["summary"]["add"].as_u64() > Some(0), "{result}");
    assert!(
        !applied.stderr.contains("Creating..."),
        "progress went to stdout as JSON, not to stderr as text:\n{}",
        applied.stderr
    );

    let destroyed = env
        .rayform(&["destroy", &stack, "--auto-approve", "--json"])
        .ok();
    let result = lines(&destroyed.stdout).pop().expect("a result");
    assert_eq!(result["destroy"], true, "{result}");
    assert_eq!(result["ok"], true, "{result}");
}
