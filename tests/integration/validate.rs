//! `rayform validate`: every malformed stack names file, line, column and
//! field, no input makes the parser panic, and the apply order keeps every
//! dependency.

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
