//! `rayform validate`: every malformed stack names file, line, column and
//! field, and no input makes the parser panic.

use std::path::Path;

use proptest::prelude::*;

use crate::support::repo;

/// (file under tests/stacks/invalid, line:col, what the error must say).
const CATALOGUE: &[(&str, &str, &str)] = &[
    (
        "01-unknown-top-level.toml",
        "4:2",
        "`rayservices`: unknown key `rayservices`\n  help: did you mean `rayservice`?",
    ),
    (
        "02-missing-stack-table.toml",
        "1:1",
        "`stack`: missing the [stack] table",
    ),
    (
        "03-missing-stack-name.toml",
        "1:2",
        "`stack.name`: missing required key `name`",
    ),
    (
        "04-bad-stack-name.toml",
        "2:8",
        "`stack.name`: `Mistral_7B` is not a valid name",
    ),
    (
        "05-unknown-stack-key.toml",
        "3:1",
        "`stack.namespce`: unknown key `namespce`\n  help: did you mean `namespace`?",
    ),
    (
        "06-ttl-not-a-duration.toml",
        "5:13",
        "`nodepool.default.empty_ttl`: `ten minutes` is not a duration",
    ),
    (
        "07-nodepool-karpenter-field-instead-of-intent.toml",
        "5:1",
        "`nodepool.default.ttlSecondsAfterEmpty`: unknown key",
    ),
    (
        "08-storage-bad-unit.toml",
        "5:11",
        "`nodeclass.default.storage`: `200GB` is not a volume size Karpenter accepts",
    ),
    (
        "09-ephemeral-storage-key.toml",
        "5:1",
        "`nodeclass.default.ephemeralStorage`: unknown key",
    ),
    (
        "10-secret-literal.toml",
        "5:26",
        "secret values are never written in a stack",
    ),
    (
        "11-secret-both-sources.toml",
        "5:26",
        "give exactly one of `env` or `file`",
    ),
    (
        "12-secret-no-data.toml",
        "4:9",
        "`secret.hf-token.data`: missing required table `data`",
    ),
    (
        "13-secret-bad-key.toml",
        "5:1",
        "`secret.hf-token.data.HF TOKEN`: a Secret key may hold only",
    ),
    (
        "14-rayservice-no-source.toml",
        "4:13",
        "`rayservice.llm`: give exactly one of `manifest` or `spec`",
    ),
    (
        "15-rayservice-missing-file.toml",
        "5:12",
        "`rayservice.llm.manifest`: cannot read",
    ),
    (
        "16-rayservice-both-sources.toml",
        "4:13",
        "give exactly one of `manifest` or `spec`",
    ),
    (
        "17-depends-on-unknown.toml",
        "9:15",
        "`secret.hf-tokn` is not declared in this stack\n  help: did you mean `secret.hf-token`?",
    ),
    (
        "18-depends-on-not-address.toml",
        "6:15",
        "`manifest.cfg.depends_on[0]`: `hf-token` is not a resource address",
    ),
    (
        "19-depends-on-cycle.toml",
        "10:15",
        "dependency cycle: manifest.b -> manifest.c -> manifest.a -> manifest.b",
    ),
    (
        "20-depends-on-self.toml",
        "6:15",
        "dependency cycle: manifest.a -> manifest.a",
    ),
    (
        "21-wait-unknown-rayservice.toml",
        "4:7",
        "`wait.chat.rayservice`: no [rayservice.mistral] in this stack",
    ),
    (
        "22-wait-bad-url.toml",
        "9:7",
        "`wait.chat.url`: `localhost:8000` is not an http:// URL",
    ),
    (
        "23-wait-path-relative.toml",
        "9:8",
        "`wait.chat.path`: must start with `/`",
    ),
    (
        "24-wait-probe-unknown-key.toml",
        "9:11",
        "`wait.chat.probe.methd`: unknown key `methd`\n  help: did you mean `method`?",
    ),
    ("25-toml-syntax.toml", "2:13", "invalid TOML"),
    (
        "26-manifest-secret.toml",
        "5:10",
        "a Secret in a manifest would put its value in the stack",
    ),
    (
        "27-resource-bad-name.toml",
        "4:9",
        "`secret.HF_Token`: `HF_Token` is not a valid Kubernetes name",
    ),
    (
        "28-ttl-wrong-type.toml",
        "5:13",
        "expected a duration, found a boolean",
    ),
    (
        "29-duplicate-key.toml",
        "3:1",
        "invalid TOML: duplicate key",
    ),
    (
        "30-manifest-namespace-mismatch.toml",
        "6:10",
        "metadata.namespace is `default` but the stack's namespace is `serving`",
    ),
    (
        "31-rayservice-wrong-kind.toml",
        "5:12",
        "expected a ray.io RayService, found v1 ConfigMap",
    ),
    // Rendering labels into these used to panic.
    (
        "32-manifest-labels-not-a-mapping.toml",
        "5:10",
        "metadata.labels must be a mapping of strings",
    ),
    (
        "33-manifest-annotations-a-list.toml",
        "5:10",
        "metadata.annotations must be a mapping of strings",
    ),
    // Numbers: ranges Karpenter and Kubernetes accept.
    (
        "34-ttl-zero.toml",
        "5:13",
        "`nodepool.default.empty_ttl`: must be longer than 0s",
    ),
    (
        "35-ttl-beyond-go-durations.toml",
        "5:13",
        "`nodepool.default.empty_ttl`: is longer than Kubernetes durations go (2562047h)",
    ),
    (
        "36-storage-too-large-gi.toml",
        "5:11",
        "`nodeclass.default.storage`: `60000Gi` is larger than Karpenter accepts for an EBS volume",
    ),
    (
        "37-storage-too-large-t.toml",
        "5:11",
        "`nodeclass.default.storage`: `65T` is larger than Karpenter accepts for an EBS volume",
    ),
    (
        "38-storage-ti-karpenter-skips.toml",
        "5:11",
        "`nodeclass.default.storage`: `18Ti` is larger than Karpenter accepts for an EBS volume",
    ),
    (
        "39-wait-timeout-zero.toml",
        "6:11",
        "`wait.chat.timeout`: must be longer than 0s",
    ),
    (
        "40-wait-interval-longer-than-timeout.toml",
        "7:12",
        "`wait.chat.interval`: the interval (10m) is longer than the timeout (5m): the wait would look once",
    ),
    (
        "41-probe-timeout-zero.toml",
        "6:58",
        "`wait.chat.probe.timeout`: must be longer than 0s",
    ),
    // Strings: device names, HTTP methods, types.
    (
        "42-device-empty.toml",
        "6:10",
        "`nodeclass.default.device`: `` is not a device path",
    ),
    (
        "43-device-not-a-path.toml",
        "6:10",
        "`nodeclass.default.device`: `xvdb` is not a device path",
    ),
    (
        "44-probe-method-unknown.toml",
        "6:20",
        "`wait.chat.probe.method`: `FETCH` is not an HTTP method",
    ),
    (
        "45-probe-path-relative.toml",
        "6:34",
        "`wait.chat.probe.path`: must start with `/`",
    ),
    (
        "46-secret-type-empty.toml",
        "5:8",
        "`secret.hf-token.type`: must not be empty",
    ),
    // URLs.
    (
        "47-wait-url-no-host.toml",
        "6:7",
        "`wait.chat.url`: `http://` names no host",
    ),
    (
        "48-wait-url-bad-port.toml",
        "6:7",
        "`wait.chat.url`: `http://serve.local:99999`: port 99999 is out of range (1-65535)",
    ),
    (
        "49-wait-url-with-space.toml",
        "6:7",
        "`wait.chat.url`: `http://serve local:8000` is not a valid URL: invalid uri character",
    ),
    // Paths: referenced files must be regular files (a secret's is never read here).
    (
        "50-rayservice-manifest-a-directory.toml",
        "5:12",
        "`rayservice.llm.manifest`: cannot read tests/stacks/invalid/.: Is a directory",
    ),
    (
        "51-secret-file-a-directory.toml",
        "5:23",
        "`secret.hf-token.data.TOKEN.file`: tests/stacks/invalid/. is not a regular file",
    ),
    (
        "52-secret-file-missing.toml",
        "5:23",
        "no-such-token-file cannot be read: No such file or directory",
    ),
    // YAML shapes.
    (
        "53-manifest-two-documents.toml",
        "5:8",
        "two-objects.yaml holds 2 objects; declare one resource per object",
    ),
    (
        "54-manifest-a-yaml-list.toml",
        "5:8",
        "a-list.yaml must hold a mapping (a Kubernetes object)",
    ),
    // Nesting.
    (
        "55-nodepool-without-a-name.toml",
        "5:1",
        "`nodepool.empty_ttl`: `empty_ttl` is a value, but [nodepool] holds named tables",
    ),
    // Encodings.
    (
        "56-not-utf8.toml",
        "3:6",
        "not UTF-8 text (byte 0xe9); TOML files are UTF-8",
    ),
    // Names and empty values.
    (
        "57-namespace-too-long.toml",
        "3:13",
        "`stack.namespace`: `nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn` is not a valid name",
    ),
    (
        "58-secret-env-empty-name.toml",
        "5:22",
        "`secret.hf-token.data.TOKEN.env`: names no environment variable",
    ),
    // The Auto Mode form: one table, a pool and a class the stack owns.
    (
        "59-gpu-nodes-no-storage.toml",
        "4:12",
        "`gpu_nodes.gpu.storage`: missing required key `storage`",
    ),
    (
        "60-gpu-nodes-class-from-itself.toml",
        "7:14",
        "`gpu_nodes.gpu.class_from`: the NodeClass `gpu` cannot be made from itself",
    ),
    (
        "61-gpu-nodes-and-a-nodepool-intent.toml",
        "8:11",
        "`nodepool.gpu`: [gpu_nodes.gpu] creates this object, and [nodepool.gpu] would patch it",
    ),
    (
        "62-gpu-nodes-unknown-key.toml",
        "7:1",
        "`gpu_nodes.gpu.instance_families`: unknown key `instance_families`",
    ),
];

fn validate(path: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rayform"))
        .arg("validate")
        .arg(path)
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .output()
        .expect("run rayform");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_malformed_stack_in_the_catalogue_gets_its_error_at_its_place() {
    let dir = Path::new("tests/stacks/invalid");
    let listed: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    assert_eq!(
        listed.len(),
        CATALOGUE.len(),
        "every file in the catalogue has an expectation"
    );
    for (file, position, message) in CATALOGUE {
        let path = dir.join(file);
        let (code, _, stderr) = validate(&path);
        assert_eq!(code, 1, "{file}: {stderr}");
        let at = format!("Error: {}:{position}: ", path.display());
        assert!(
            stderr.starts_with(&at),
            "{file}: expected the error at {position}, got:\n{stderr}"
        );
        // The message, read without the source lines shown under it.
        let said: Vec<&str> = stderr
            .lines()
            .filter(|l| {
                let l = l.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
                !l.starts_with('|')
            })
            .collect();
        assert!(
            said.join("\n").contains(message),
            "{file}: expected {message:?}, got:\n{stderr}"
        );
        // The line pointed at is shown under the error, with a caret.
        let line: usize = position.split(':').next().unwrap().parse().unwrap();
        if let Ok(text) = std::fs::read_to_string(repo().join(&path))
            && let Some(source) = text.lines().nth(line - 1)
        {
            let shown = format!("{line} | {source}");
            assert!(
                stderr.contains(&shown) && stderr.contains(" | ") && stderr.contains('^'),
                "{file}: expected the source line {shown:?} and a caret, got:\n{stderr}"
            );
        }
    }
}

#[test]
fn the_mission_stack_is_valid_and_ordered_like_the_guide() {
    let (code, stdout, stderr) = validate(Path::new("stacks/mistral-7b.toml"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("valid (5 resources)"), "{stdout}");

    let stack =
        rayform::stack::load(&repo().join("stacks/mistral-7b.toml"), &Default::default()).unwrap();
    let graph = rayform::graph::Graph::build(&stack).unwrap();
    let order: Vec<String> = graph
        .apply_order()
        .iter()
        .map(ToString::to_string)
        .collect();
    let pos = |a: &str| order.iter().position(|x| x == a).unwrap();
    for first in ["secret.hf-token", "nodepool.default", "nodeclass.default"] {
        assert!(
            pos(first) < pos("rayservice.mistral-7b"),
            "{first} before the RayService: {order:?}"
        );
    }
    assert_eq!(order.last().map(String::as_str), Some("wait.chat"));
    let destroy: Vec<String> = graph
        .destroy_order()
        .iter()
        .map(ToString::to_string)
        .collect();
    let dpos = |a: &str| destroy.iter().position(|x| x == a).unwrap();
    assert!(
        dpos("rayservice.mistral-7b") < dpos("nodepool.default"),
        "revert only after the RayService is gone"
    );
    let dot = graph.to_dot(true);
    assert!(dot.starts_with("digraph destroy"), "{dot}");
    assert!(
        dot.contains("\"rayservice.mistral-7b\" -> \"secret.hf-token\""),
        "{dot}"
    );
}

fn mission_text() -> String {
    std::fs::read_to_string(repo().join("stacks/mistral-7b.toml")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = rayform::stack::parse_str(Path::new("fuzz.toml"), &text, &Default::default());
    }

    #[test]
    fn mangled_stacks_never_panic(cut in 0usize..2000, insert in "[\\[\\]{}=\".a-z0-9 \n]{0,12}") {
        let text = mission_text();
        let at = text.char_indices().map(|(i, _)| i).nth(cut % text.chars().count()).unwrap_or(0);
        let mangled = format!("{}{insert}{}", &text[..at], &text[at..]);
        if let Err(e) = rayform::stack::parse_str(&repo().join("stacks/fuzz.toml"), &mangled, &Default::default()) {
            // Every error names its place.
            let shown = e.to_string();
            prop_assert!(shown.contains("fuzz.toml"), "{}", shown);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Any acyclic set of depends_on edges is respected by the apply order,
    /// and destroy is exactly its reverse.
    #[test]
    fn the_apply_order_respects_every_dependency(
        edges in proptest::collection::vec((0usize..12, 0usize..12), 0..30),
        hidden in Just((0usize..12).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let mut text = String::from("[stack]\nname = \"order\"\n");
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); 12];
        // Edges follow a hidden random order (so the graph stays acyclic),
        // not the order of declaration: keeping the file's order fails.
        let rank = |m: usize| hidden.iter().position(|&x| x == m).unwrap_or(m);
        for (a, b) in edges {
            if rank(a) < rank(b) && !deps[b].contains(&a) {
                deps[b].push(a);
            }
        }
        for (i, d) in deps.iter().enumerate() {
            let list: Vec<String> = d.iter().map(|j| format!("\"manifest.m{j}\"")).collect();
            text.push_str(&format!(
                "\n[manifest.m{i}]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\" }}\ndepends_on = [{}]\n",
                list.join(", ")
            ));
        }
        let stack = rayform::stack::parse_str(Path::new("order.toml"), &text, &Default::default()).unwrap();
        let graph = rayform::graph::Graph::build(&stack).unwrap();
        let order: Vec<String> = graph.apply_order().iter().map(ToString::to_string).collect();
        let pos = |name: String| order.iter().position(|x| *x == name).unwrap();
        for (i, d) in deps.iter().enumerate() {
            for j in d {
                let (dependency, dependent) = (pos(format!("manifest.m{j}")), pos(format!("manifest.m{i}")));
                prop_assert!(dependency < dependent, "m{} must come before m{}", j, i);
            }
        }
        let mut reversed: Vec<String> = graph.destroy_order().iter().map(ToString::to_string).collect();
        reversed.reverse();
        prop_assert_eq!(reversed, order);
    }
}

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
fn a_rayservice_of_the_wrong_shape_is_rendered_without_a_panic_for_the_server_to_judge() {
    let dir = tempfile::tempdir().unwrap();
    let stack_file = dir.path().join("shape.toml");
    let stack = "[stack]\nname = \"shape\"\n\n[secret.tok.data]\nT = { env = \"SHAPE_TOKEN\" }\n\n[rayservice.llm]\nmanifest = \"llm.yaml\"\n";
    for body in [
        "spec: oops\n",
        "spec:\n  rayClusterConfig: [1, 2]\n",
        "spec:\n  rayClusterConfig:\n    headGroupSpec:\n      template: {metadata: nope}\n    workerGroupSpecs: [{template: 3}, 4]\n",
    ] {
        std::fs::write(
            dir.path().join("llm.yaml"),
            // It names the stack's Secret, so rendering annotates its pod templates.
            format!(
                "apiVersion: ray.io/v1\nkind: RayService\nmetadata:\n  name: llm\nref: {{secretKeyRef: {{name: tok, key: T}}}}\n{body}"
            ),
        )
        .unwrap();
        let Ok(stack) = rayform::stack::parse_str(&stack_file, stack, &Default::default()) else {
            continue; // refused with an error: also fine
        };
        let rendered =
            rayform::desired::render(&stack, "key", "lineage", rayform::desired::Secrets::Skip);
        assert!(rendered.is_ok(), "{body}");
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

/// All the errors of a stack, each at its place, in the order of the file.
#[test]
fn validate_reports_every_error_in_the_order_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.toml");
    std::fs::write(
        &path,
        "[stack]\nname = \"demo\"\n\n[secret.hf-token.data]\nTOKEN = \"hf_literal\"\n\n[nodepool.default]\nempty_ttl = \"ten minutes\"\n\n[secret.other.data]\nX = \"literal\"\n",
    )
    .unwrap();
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, 1, "{stderr}");
    let at: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("Error: "))
        .map(|l| l.split(": ").next().unwrap_or_default())
        .collect();
    let file = path.display();
    assert_eq!(
        at,
        [
            format!("{file}:5:9"),
            format!("{file}:8:13"),
            format!("{file}:11:5")
        ],
        "{stderr}"
    );
    for line in ["5 | TOKEN", "8 | empty_ttl", "11 | X"] {
        assert!(stderr.contains(line), "each error shows its line: {stderr}");
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

/// JSON of any shape, with the keys rayform reads among the random ones, so
/// that the readers of RayServices and Karpenter objects meet their fields
/// holding the wrong types.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        proptest::sample::select(vec![
            "spec",
            "metadata",
            "status",
            "annotations",
            "labels",
            "name",
            "rayClusterConfig",
            "headGroupSpec",
            "workerGroupSpecs",
            "template",
            "containers",
            "resources",
            "limits",
            "requests",
            "nvidia.com/gpu",
            "replicas",
            "minReplicas",
            "serveConfigV2",
            "upgradeStrategy",
            "type",
            "disruption",
            "consolidationPolicy",
            "consolidateAfter",
            "ttlSecondsAfterEmpty",
            "consolidation",
            "enabled",
            "blockDeviceMappings",
            "deviceName",
            "ebs",
            "volumeSize",
            "rootVolume",
            "amiFamily",
            "amiSelectorTerms",
            "alias",
            "launchTemplate",
            "requirements",
            "key",
            "operator",
            "values",
            "taints",
            "effect",
            "tolerations",
            "nodeSelector",
            "nodeClassRef",
            "providerRef",
        ])
        .prop_map(str::to_string),
        "[a-z]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9/@._ -]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Parsing is not the only place input arrives: a RayService of any shape
    /// is rendered and planned, and live Karpenter objects and RayServices of
    /// any shape are read by the floors, the AMI families, the fit checks and
    /// the rollout rules. None of it may panic.
    #[test]
    fn no_shape_of_stack_or_live_object_makes_rendering_or_planning_panic(
        spec in any_json(),
        live in any_json(),
        after in any_json(),
    ) {
        use rayform::karpenter::{ClassApi, PoolApi, family, fit, floor};
        use rayform::observe::{Observed, ObservedObject, ObservedPatch, World};
        use rayform::stack::{Address, NodeClassIntent, NodePoolIntent, ResourceType};

        let ttl = NodePoolIntent { empty_ttl: std::time::Duration::from_secs(600) };
        let disk = NodeClassIntent { storage: "200Gi".into(), device: None };
        for api in PoolApi::ALL {
            let _ = floor::pool(api, &ttl, &live);
            let _ = fit::class_of(api, &live);
        }
        for api in ClassApi::ALL {
            let _ = floor::class(api, &disk, &live, &after);
            let _ = family::Family::of(api, &live);
        }
        let _ = floor::original_view(&live);
        let _ = rayform::karpenter::revert("s", &live, &Default::default());
        let workers = fit::gpu_workers(&serde_json::json!({ "spec": spec.clone() }));
        for w in &workers {
            let _ = fit::misfits(PoolApi::V1, &live, w);
        }
        // Through KubeRay's hash too: any spec is hashed or refused, never a panic.
        let built = rayform::observe::BuiltFrom { hash: "H".into(), worker_groups: Some(1) };
        for built_from in [None, Some(&built)] {
            let live = rayform::plan::rollout::Live { spec: &live, built_from };
            let _ = rayform::plan::rollout::assess(Some(live), &after, None).describe();
        }

        let dir = tempfile::tempdir().unwrap();
        let manifest = serde_json::json!({
            "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "llm"}, "spec": spec,
        });
        std::fs::write(dir.path().join("llm.yaml"), manifest.to_string()).unwrap();
        let text = "[stack]\nname = \"shapes\"\n\n[nodepool.default]\nempty_ttl = \"600s\"\n\n[rayservice.llm]\nmanifest = \"llm.yaml\"\n";
        let Ok(stack) = rayform::stack::parse_str(&dir.path().join("shapes.toml"), text, &Default::default()) else {
            return Ok(());
        };
        let graph = rayform::graph::Graph::build(&stack).unwrap();
        let state = rayform::state::State::new("shapes").unwrap();
        let desired = rayform::desired::render(&stack, "key", &state.lineage, rayform::desired::Secrets::Skip).unwrap();
        let world = World {
            cluster: rayform::target::ClusterId { server: "https://127.0.0.1:1".into(), context: None },
            karpenter: rayform::karpenter::Served { pools: vec![PoolApi::V1], classes: vec![ClassApi::V1], ..Default::default() },
            kuberay_operator_missing: None,
            resources: [
                (
                    Address::new(ResourceType::RayService, "llm"),
                    Observed::Object(ObservedObject {
                        namespaced: true,
                        owned: true,
                        live: Some(live.clone()),
                        after: Some(after.clone()),
                        ..Default::default()
                    }),
                ),
                (
                    Address::new(ResourceType::NodePool, "default"),
                    Observed::Patch(Box::new(ObservedPatch {
                        api_version: "karpenter.sh/v1".into(),
                        kind: "NodePool".into(),
                        name: "default".into(),
                        patch: match floor::pool(PoolApi::V1, &ttl, &live) {
                            Ok(rayform::karpenter::Wanted::Write { fields, .. }) => {
                                Some(rayform::karpenter::patch("shapes", &live, &fields))
                            }
                            _ => None,
                        },
                        after: Some(after.clone()),
                        live: Some(live),
                        ..Default::default()
                    })),
                ),
            ]
            .into(),
        };
        let plan = rayform::plan::build(&stack, &graph, &desired, &state, true, &world, &Default::default());
        let _ = rayform::plan::render_text(&plan, Default::default());
        let _ = rayform::plan::render_json(&plan);
    }
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
