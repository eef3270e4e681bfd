//! Secret values in text rayform did not write: an admission policy's
//! message that quotes the decoded token, and kube-client's logs of the
//! response that carried it, at the highest verbosity there is.

use std::collections::BTreeMap;

use base64::Engine as _;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::json;

use crate::support::{Env, Profile, Run, resource};

/// A token with what JSON, Go's encoder and Rust's `{:?}` each escape; a
/// whole number of base64 groups long, for the policy's decoder.
fn awkward_token(env: &Env) -> String {
    let mut token = format!(r#"{}"<&>\x"#, env.token);
    while token.len() % 3 != 0 {
        token.push('z');
    }
    token
}

/// Every form the token could take in rayform's output.
fn forms(token: &str) -> BTreeMap<&'static str, String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let json = serde_json::to_string(token).unwrap();
    let json = json.trim_matches('"').to_string();
    let go = json
        .replace('<', r"\u003c")
        .replace('>', r"\u003e")
        .replace('&', r"\u0026");
    BTreeMap::from([
        ("plain", token.to_string()),
        ("base64", STANDARD.encode(token)),
        ("base64 without padding", STANDARD_NO_PAD.encode(token)),
        ("URL-safe base64", URL_SAFE.encode(token)),
        (
            "URL-safe base64 without padding",
            URL_SAFE_NO_PAD.encode(token),
        ),
        ("JSON-escaped", json),
        ("JSON-escaped by Go", go),
        (
            "Debug-escaped",
            format!("{token:?}").trim_matches('"').to_string(),
        ),
    ])
}

#[track_caller]
fn assert_masked(token: &str, what: &str, run: &Run) {
    let all = run.all();
    for (form, text) in forms(token) {
        assert!(
            !all.contains(&text),
            "{what}: the token leaked, {form}:\n{all}"
        );
    }
    // The tail of the token is in no form a mask could leave behind either.
    let tail = &token[token.len() - 16..];
    assert!(
        !all.contains(tail),
        "{what}: part of the token leaked:\n{all}"
    );
}

/// What the policy refuses: a Secret written, or one deleted.
#[derive(Clone, Copy, PartialEq)]
enum Refuses {
    Writes,
    Deletes,
}

/// A ValidatingAdmissionPolicy on the test's namespace that refuses every
/// Secret written or deleted, quoting its decoded token in the refusal
/// (from the object sent, or for a delete the object as it was). Kubernetes' CEL has no
/// base64 decoder (cel-go's encoders are not in its environment, and a
/// Secret's `data` reaches CEL as the base64 text), so the policy decodes
/// it by hand: four characters to 24 bits to three printable ASCII bytes.
async fn quoting_policy(env: &Env, refuses: Refuses) {
    let (operations, object) = match refuses {
        Refuses::Writes => (json!(["CREATE", "UPDATE"]), "object"),
        Refuses::Deletes => (json!(["DELETE"]), "oldObject"),
    };
    // ' ' to '~', as a CEL string literal: the byte b is at b - 32.
    let mut printable = String::from("'");
    for c in (32u8..127).map(char::from) {
        if c == '\'' || c == '\\' {
            printable.push('\\');
        }
        printable.push(c);
    }
    printable.push('\'');
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": env.ns},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": operations, "resources": ["secrets"],
            }]},
            "variables": [
                {"name": "d", "expression": format!("{object}.data.HUGGING_FACE_HUB_TOKEN")},
                {"name": "alphabet", "expression":
                    "'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'"},
                {"name": "printable", "expression": printable},
                {"name": "groups", "expression":
                    "lists.range(size(variables.d) / 4).map(g, \
                     variables.alphabet.indexOf(variables.d.charAt(4 * g)) * 262144 + \
                     variables.alphabet.indexOf(variables.d.charAt(4 * g + 1)) * 4096 + \
                     variables.alphabet.indexOf(variables.d.charAt(4 * g + 2)) * 64 + \
                     variables.alphabet.indexOf(variables.d.charAt(4 * g + 3)))"},
                {"name": "bytes", "expression":
                    "variables.groups.map(v, [v / 65536, v / 256 % 256, v % 256]).flatten()"},
            ],
            "validations": [{
                "expression": "false",
                "messageExpression":
                    "'the token ' + variables.bytes.map(b, variables.printable.substring(b - 32, b - 31)).join('') + ' is not allowed here'",
            }],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": env.ns},
        "spec": {
            "policyName": env.ns,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": env.ns},
            }},
        },
    });
    for object in [policy, binding] {
        let kind = object["kind"].as_str().unwrap();
        let api: Api<DynamicObject> = Api::all_with(
            env.client.clone(),
            &resource("admissionregistration.k8s.io/v1", kind),
        );
        api.create(
            &PostParams::default(),
            &serde_json::from_value(object).unwrap(),
        )
        .await
        .unwrap();
    }
    // The API server takes the policy up within a few seconds: probe with a
    // dry run until it refuses.
    let secrets: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &resource("v1", "Secret"));
    let started = std::time::Instant::now();
    loop {
        let refused = match refuses {
            Refuses::Writes => secrets
                .create(
                    &PostParams {
                        dry_run: true,
                        ..PostParams::default()
                    },
                    &probe(),
                )
                .await
                .err(),
            Refuses::Deletes => secrets
                .delete(
                    "probe",
                    &DeleteParams {
                        dry_run: true,
                        ..DeleteParams::default()
                    },
                )
                .await
                .err(),
        };
        match refused {
            Some(kube::Error::Api(s)) if s.message.contains("the token probe1 is") => return,
            other => assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "the policy never took effect: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// A Secret whose token is `probe1`.
fn probe() -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "probe"},
        "data": {"HUGGING_FACE_HUB_TOKEN": "cHJvYmUx"},
    }))
    .unwrap()
}

async fn cleanup(env: &Env) {
    for kind in [
        "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy",
    ] {
        let api: Api<DynamicObject> = Api::all_with(
            env.client.clone(),
            &resource("admissionregistration.k8s.io/v1", kind),
        );
        let _ = api.delete(&env.ns, &Default::default()).await;
    }
}

#[tokio::test]
async fn a_policy_message_quoting_the_token_is_masked_in_every_form_at_every_verbosity() {
    let env = Env::new(Profile::V1, "redact").await;
    let stack = env.mission_stack("redact");
    quoting_policy(&env, Refuses::Writes).await;
    let token = awkward_token(&env);
    let run = |args: &[&str]| {
        let mut cmd = env.command(args);
        cmd.env("HUGGING_FACE_HUB_TOKEN", &token)
            .env("RAYFORM_LOG", "trace");
        Run::from(cmd.output().expect("run rayform"))
    };

    // The plan's server-side dry run is refused, quoting the token.
    let plan = run(&["plan", &stack, "-vv"]).code(1);
    assert_masked(&token, "plan -vv", &plan);
    plan.stdout_has("the token (sensitive value) is not allowed here");

    // So is the apply itself, with no dry run before it.
    let apply = run(&[
        "apply",
        &stack,
        "--auto-approve",
        "--no-wait",
        "--server-dry-run",
        "none",
        "-vv",
    ])
    .code(1);
    assert_masked(&token, "apply -vv", &apply);
    apply.stderr_has("the token (sensitive value) is not allowed here");
    // As JSON events for CI: the error's string is masked before it is escaped.
    let json = run(&[
        "apply",
        &stack,
        "--auto-approve",
        "--no-wait",
        "--server-dry-run",
        "none",
        "--json",
    ])
    .code(1);
    assert_masked(&token, "apply --json", &json);
    json.stdout_has("the token (sensitive value) is not allowed here");
    // kube's request logs are still there at -vv; its body logs are not.
    apply.stderr_has("kube_client::client::builder");
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_none()
    );
    // Nor anything rayform wrote beside the stack (state, journal, lock).
    let mut files = String::new();
    for entry in std::fs::read_dir(env.path("state")).unwrap() {
        files += &std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
    }
    let written = Run {
        code: 0,
        stdout: files,
        stderr: String::new(),
    };
    assert_masked(&token, "the state directory", &written);
    cleanup(&env).await;
}

#[tokio::test]
async fn a_policy_refusing_a_delete_with_the_token_is_masked_in_destroy() {
    let env = Env::new(Profile::V1, "redactdel").await;
    let stack = env.mission_stack("redactdel");
    let token = awkward_token(&env);
    let run = |args: &[&str]| {
        let mut cmd = env.command(args);
        cmd.env("HUGGING_FACE_HUB_TOKEN", &token)
            .env("RAYFORM_LOG", "trace");
        Run::from(cmd.output().expect("run rayform"))
    };
    run(&["apply", &stack, "--auto-approve", "--no-wait"]).ok();
    let secrets: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &resource("v1", "Secret"));
    secrets
        .create(&PostParams::default(), &probe())
        .await
        .unwrap();
    quoting_policy(&env, Refuses::Deletes).await;

    // Destroy needs no secret value, yet masks those the stack declares.
    let destroy = run(&["destroy", &stack, "--auto-approve", "-vv"]).code(1);
    assert_masked(&token, "destroy -vv", &destroy);
    destroy.stderr_has("the token (sensitive value) is not allowed here");
    assert!(
        env.get("v1", "Secret", Some(&env.ns), "hf-token")
            .await
            .is_some()
    );
    cleanup(&env).await;
}
