//! The library's operations, driven as another tool would drive them: no
//! binary, no terminal. What the CLI adds (prompts, rendering, exit codes)
//! is tested through the binary elsewhere; these guard that plan, apply and
//! destroy are whole without it.

use std::sync::Mutex;
use std::time::Duration;

use rayform::apply::{ApplyOptions, Readiness, SecretValues, Stop};
use rayform::ops::{self, Intent, Notes, Operation, Place, PlanRequest};
use rayform::plan::Summary;
use rayform::secret::Redactor;
use rayform::stack::{BackendKind, StateOverride};

use crate::support::*;

/// What an operation said on the way, kept for the test to read.
#[derive(Default)]
struct Heard {
    masks: Mutex<Redactor>,
    warnings: Mutex<Vec<String>>,
}

impl Notes for Heard {
    fn note(&self, _: &str) {}

    fn warn(&self, message: &str) {
        self.warnings.lock().unwrap().push(message.to_string());
    }

    fn mask(&self, values: &Redactor) {
        self.masks.lock().unwrap().merge(values);
    }

    fn redact(&self, text: &str) -> String {
        self.masks.lock().unwrap().redact(text).into_owned()
    }
}

fn place(env: &Env, stack: &str) -> Place {
    Place {
        stack: env.path(stack),
        state: StateOverride {
            backend: Some(BackendKind::File),
            path: Some(env.path("state.json")),
            namespace: None,
        },
        connect: rayform::cluster::ConnectOptions {
            kubeconfig: Some(env.kubeconfig.clone()),
            context: None,
        },
    }
}

fn options() -> ApplyOptions {
    ApplyOptions {
        parallelism: 4,
        wait: Readiness::Skip,
        delete_timeout: Duration::from_secs(60),
        endpoint: None,
        detail: rayform::readiness::Detail::Changes,
        progress: std::sync::Arc::new(|_| {}),
        stop: Stop::default(),
    }
}

/// A Secret read from a file, a ConfigMap, and the pool's empty-node TTL.
fn write_stack(env: &Env) -> &'static str {
    env.write("token", &env.token);
    env.write(
        "config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n",
    );
    env.write(
        "lib.toml",
        &format!(
            r#"[stack]
name = "lib"
namespace = "{ns}"

[nodepool.{pool}]
empty_ttl = "600s"

[secret.token.data]
TOKEN = {{ file = "token" }}

[manifest.settings]
file = "config.yaml"
"#,
            ns = env.ns,
            pool = env.pool
        ),
    );
    "lib.toml"
}

#[tokio::test]
async fn the_library_plans_applies_and_destroys_a_stack_without_the_cli() {
    let env = Env::new(Profile::V1, "ops-lib").await;
    let stack = write_stack(&env);
    let heard = Heard::default();
    let place = place(&env, stack);

    let session = ops::open(&place, Operation::Apply, &heard).await.unwrap();
    let plan = session
        .plan(&PlanRequest::new(Intent::Apply), &heard)
        .await
        .unwrap();
    assert_eq!(
        plan.summary(),
        Summary {
            add: 2,
            patch: 1,
            ..Summary::default()
        }
    );
    let secrets = ops::read_secrets(&session.stack, &heard).unwrap();
    session
        .into_held()
        .unwrap()
        .execute(&plan, secrets, options())
        .await
        .unwrap();
    let settings = env.get("v1", "ConfigMap", Some(&env.ns), "settings").await;
    assert_eq!(settings.unwrap()["data"]["mode"], "fast");

    // Applied once, the same stack is nothing to do.
    let session = ops::open(&place, Operation::Plan, &heard).await.unwrap();
    let again = session
        .plan(&PlanRequest::new(Intent::Apply), &heard)
        .await
        .unwrap();
    assert!(!ops::has_work(&again, true), "{again:?}");
    drop(session);

    let session = ops::open(&place, Operation::Destroy, &heard).await.unwrap();
    let destroy = session
        .plan(&PlanRequest::new(Intent::Destroy { force: false }), &heard)
        .await
        .unwrap();
    assert_eq!(
        destroy.summary(),
        Summary {
            destroy: 2,
            revert: 1,
            ..Summary::default()
        }
    );
    session
        .into_held()
        .unwrap()
        .execute(&destroy, SecretValues::new(), options())
        .await
        .unwrap();
    assert!(
        env.get("v1", "ConfigMap", Some(&env.ns), "settings")
            .await
            .is_none()
    );
    // The token was masked as soon as it was read, and the plan holds no trace of it.
    assert_eq!(heard.redact(&env.token), "(sensitive value)");
    assert!(!serde_json::to_string(&plan).unwrap().contains(&env.token));
    assert_eq!(*heard.warnings.lock().unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn a_second_run_on_the_same_state_is_refused_while_the_first_holds_the_lock() {
    let env = Env::new(Profile::V1, "ops-lock").await;
    let stack = write_stack(&env);
    let heard = Heard::default();
    let place = place(&env, stack);
    let first = ops::open(&place, Operation::Apply, &heard).await.unwrap();
    let second = ops::open(&place, Operation::Apply, &heard).await;
    match second {
        Err(ops::OpsError::Locked(holder)) => assert_eq!(holder.operation, "apply"),
        Err(e) => panic!("expected the lock to be held, got: {e}"),
        Ok(_) => panic!("a second run opened a state the first holds"),
    }
    drop(first);
    ops::open(&place, Operation::Apply, &heard).await.unwrap();
}
