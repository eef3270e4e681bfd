//! The command line's own surface, with no cluster: Terraform's exit codes
//! for usage errors, flags a saved plan cannot honour, completions and man
//! pages, colour flags, and help text for every argument.

/// Exit codes as Terraform's: 2 means "changes present" to `plan
/// --detailed-exitcode`, so a usage error must not exit 2.
#[test]
fn a_usage_error_exits_1_and_help_and_version_exit_0() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rayform"))
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("run rayform")
    };
    for args in [
        &["plan"][..],
        &["plan", "x.toml", "--no-such-flag"],
        &["no-such-command"],
        &["apply", "x.toml", "--parallelism", "many"],
        &["apply", "x.toml", "--parallelism", "0"],
        &["destroy", "x.toml", "-parallelism=0"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} says why");
    }
    let zero = run(&["apply", "x.toml", "--parallelism", "0"]);
    assert!(
        String::from_utf8_lossy(&zero.stderr).contains("0 would work on nothing"),
        "--parallelism 0 is refused before anything is read"
    );
    for args in [&["--help"][..], &["--version"], &["plan", "--help"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?} answers on stdout");
    }
}

#[test]
fn a_saved_plan_refuses_flags_it_cannot_honour_and_a_bad_endpoint_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("saved.plan"), "{}").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rayform"))
            .args(args)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .output()
            .expect("run rayform")
    };
    // What the plan was made for is read first: the help line names its stack.
    let out = run(&[
        "apply",
        "saved.plan",
        "--adopt",
        "secret.x",
        "--force-conflicts",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("saved.plan is not a rayform plan"),
        "{stderr}"
    );
    for bad in ["localhost:8000", "ftp://host:1", "not a url"] {
        let out = run(&["apply", "saved.plan", "--endpoint", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--endpoint"), "{bad}: {stderr}");
    }
}

#[test]
fn completions_and_a_man_page_are_printed_for_the_asking() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rayform"))
            .args(args)
            .output()
            .expect("run rayform");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F _rayform"), "{bash}");
    assert!(bash.contains("force-unlock"), "subcommands are completed");
    assert!(run(&["completions", "zsh"]).contains("#compdef rayform"));
    for command in ["plan", "apply", "destroy"] {
        assert!(
            run(&[command, "--help"]).contains("Examples:\n  rayform"),
            "{command} --help shows examples"
        );
    }
    let man = run(&["man"]);
    assert!(man.contains(".TH rayform"), "{man}");
    assert!(
        man.contains("Exit codes"),
        "the man page carries the exit codes"
    );
}

/// Every page a man page names (`rayform-plan(1)`, `rayform-state-push(1)`)
/// is one `rayform man` prints.
#[test]
fn every_man_page_named_can_be_printed() {
    let man = |words: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rayform"))
            .arg("man")
            .args(words)
            .output()
            .expect("run rayform");
        assert_eq!(out.status.code(), Some(0), "man {words:?}");
        String::from_utf8_lossy(&out.stdout).replace("\\-", "-")
    };
    let mut pages = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(words) = pages.pop() {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let page = man(&words);
        let name = ["rayform"]
            .iter()
            .chain(&words)
            .copied()
            .collect::<Vec<_>>()
            .join("-");
        assert!(page.contains(&format!(".TH {name} 1")), "{name}:\n{page}");
        for line in page.lines() {
            if let Some(named) = line
                .strip_prefix(&format!("{name}-"))
                .and_then(|l| l.strip_suffix("(1)"))
            {
                let mut sub: Vec<String> = words.iter().map(|w| w.to_string()).collect();
                sub.push(named.to_string());
                pages.push(sub);
            }
        }
        seen += 1;
    }
    assert!(
        seen > 15,
        "the commands and the state commands have pages: {seen}"
    );
}

/// The flags that choose the cluster and the state are not offered where
/// they mean nothing.
#[test]
fn location_flags_are_offered_only_where_they_mean_something() {
    let help = |words: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rayform"))
            .args(words)
            .arg("--help")
            .output()
            .expect("run rayform");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for local in [
        &["man"][..],
        &["completions"],
        &["show"],
        &["validate"],
        &["graph"],
    ] {
        let text = help(local);
        for flag in ["--kubeconfig", "--context", "--state", "--backend"] {
            assert!(
                !text.contains(flag),
                "`rayform {local:?} --help` offers {flag}:\n{text}"
            );
        }
    }
    for remote in [&["plan"][..], &["state", "push"], &["doctor"]] {
        assert!(help(remote).contains("--kubeconfig"), "{remote:?}");
    }
}

#[test]
fn colour_follows_the_color_flag_no_color_and_clicolor_force() {
    // An error's "Error:" label is coloured when colour is on; stderr is a pipe here.
    let coloured = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rayform"));
        cmd.args(args)
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run rayform");
        String::from_utf8_lossy(&out.stderr).contains("\u{1b}[")
    };
    let missing = ["validate", "no-such-stack.toml"];
    assert!(!coloured(&missing, &[]), "auto: not a terminal, no colour");
    assert!(coloured(&missing, &[("CLICOLOR_FORCE", "1")]));
    assert!(!coloured(
        &missing,
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]
    ));
    assert!(coloured(
        &[&["--color", "always"][..], &missing].concat(),
        &[("NO_COLOR", "1")]
    ));
    assert!(!coloured(
        &[&["--color", "never"][..], &missing].concat(),
        &[("CLICOLOR_FORCE", "1")]
    ));
    assert!(!coloured(
        &[&["--no-color"][..], &missing].concat(),
        &[("CLICOLOR_FORCE", "1")]
    ));
}

#[test]
fn every_argument_and_flag_says_what_it_is_for() {
    let commands: &[&[&str]] = &[
        &["validate"],
        &["graph"],
        &["plan"],
        &["apply"],
        &["destroy"],
        &["show"],
        &["state", "list"],
        &["state", "show"],
        &["state", "mv"],
        &["state", "rm"],
        &["state", "pull"],
        &["state", "push"],
        &["import"],
        &["doctor"],
        &["completions"],
        &["man"],
        &["force-unlock"],
    ];
    // clap indents arguments by 2 (`  <STACK>`, `  -v, --verbose`) or 6
    // (`      --json`); wrapped help text sits deeper.
    let is_argument = |l: &str| {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        (2..=6).contains(&indent)
            && (t.starts_with('<') || t.starts_with('-') || t.starts_with('['))
    };
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rayform"))
            .args(&args)
            .output()
            .expect("run rayform");
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !is_argument(line) {
                continue;
            }
            let named = line.trim_start();
            // Help on the same line (after two spaces), or on the next, indented deeper.
            let same_line = named
                .split_once("  ")
                .is_some_and(|(_, rest)| !rest.trim().is_empty());
            let next_line = lines.get(i + 1).is_some_and(|n| {
                !n.trim().is_empty()
                    && !is_argument(n)
                    && n.len() - n.trim_start().len() > line.len() - named.len()
            });
            assert!(
                same_line || next_line,
                "`rayform {}`: {named:?} has no help text:\n{help}",
                command.join(" ")
            );
        }
    }
}
