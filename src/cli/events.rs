//! `apply --json` and `destroy --json`: what the run says, one JSON object a
//! line on stdout, for CI to follow without parsing English.
//!
//! Every object has `type` and `time` (RFC 3339, UTC). In order: the `plan`
//! (the object `plan --json` prints), a `change` for each step on a resource
//! (`address`, `message`), the readiness wait's events (`phase`, `still`,
//! `pod`, `account` with `-v`, `failed`; fields in `readiness::progress`),
//! and last a `result`: `ok`, the summary and where each service answers, or
//! the error and its help line. Everything goes through the run's masks, as
//! all output does: no secret value reaches an event.

use std::sync::Arc;

use rayform::apply::{ApplyReport, Event};
use rayform::plan::{self, Plan};
use rayform::readiness::{Endpoint, Ready, Said};
use serde_json::{Value, json};

use super::output::Out;

fn emit(out: &Out, kind: &str, mut fields: Value) {
    if let Value::Object(map) = &mut fields {
        map.insert("type".into(), kind.into());
        map.insert("time".into(), jiff::Timestamp::now().to_string().into());
    }
    masked(out, &mut fields);
    // The line is masked again as all output is; each string was masked
    // before JSON escaped it, which makes forms the masks do not all know
    // (a Go-escaped value quoted by an API server, escaped again here).
    out.line(&fields.to_string());
}

fn masked(out: &Out, value: &mut Value) {
    match value {
        Value::String(text) => *text = out.masks().redact(text),
        Value::Array(items) => items.iter_mut().for_each(|v| masked(out, v)),
        Value::Object(map) => map.values_mut().for_each(|v| masked(out, v)),
        _ => {}
    }
}

/// The plan, as `plan --json` has it, on one line.
pub fn plan(out: &Out, plan: &Plan) {
    let value: Value = serde_json::from_str(&plan::render_json(plan)).unwrap_or_default();
    emit(out, "plan", json!({ "plan": value }));
}

/// Where apply's and destroy's progress goes: JSON lines on stdout with
/// `--json`, else `address: message` lines on stderr.
pub fn progress(out: &Out, json: bool) -> rayform::apply::Progress {
    if json {
        return sink(out);
    }
    let out = out.clone();
    Arc::new(move |e: Event| {
        // The wait's failure is its error, which is printed once, as errors are.
        if e.wait.as_ref().is_none_or(|w| w.said != Said::Failed) {
            out.progress(&e.address.to_string(), &e.message);
        }
    })
}

fn sink(out: &Out) -> rayform::apply::Progress {
    let out = out.clone();
    Arc::new(move |e: Event| match e.wait {
        Some(progress) => {
            let mut fields = serde_json::to_value(&progress).unwrap_or_default();
            let kind = fields["type"].as_str().unwrap_or("wait").to_string();
            fields["address"] = e.address.to_string().into();
            emit(&out, &kind, fields);
        }
        None => emit(
            &out,
            "change",
            json!({"address": e.address.to_string(), "message": e.message}),
        ),
    })
}

/// The last object of a run that did its work.
pub fn complete(out: &Out, plan: &Plan, report: &ApplyReport) {
    let ready: Vec<Value> = report.ready.iter().map(ready).collect();
    emit(
        out,
        "result",
        json!({"ok": true, "destroy": plan.destroy, "summary": plan.summary(), "ready": ready}),
    );
}

fn ready(r: &Ready) -> Value {
    let endpoint = match &r.endpoint {
        Endpoint::Url(url) => json!({"url": url}),
        Endpoint::Pod {
            namespace,
            pod,
            serve_port,
            dashboard_port,
        } => json!({"namespace": namespace, "pod": pod, "serve_port": serve_port,
            "dashboard_port": dashboard_port}),
    };
    json!({"rayservice": r.rayservice, "path": r.path, "route": r.route, "app": r.app,
        "elapsed": (r.elapsed.as_secs_f64() * 1000.0).round() / 1000.0, "endpoint": endpoint})
}

/// The last object of a run that ended otherwise: the error as stderr says
/// it, its help line apart; or the exit code of a run that stopped short.
pub fn ended(out: &Out, outcome: &Result<u8, super::Error>) {
    match outcome {
        Ok(0) => {}
        Ok(code) => emit(out, "result", json!({"ok": false, "exit_code": code})),
        Err(e) => {
            let text = e.to_string();
            let (error, help) = match text.split_once("\n  help: ") {
                Some((error, help)) => (error.to_string(), Some(help.to_string())),
                None => (text, None),
            };
            emit(
                out,
                "result",
                json!({"ok": false, "error": error, "help": help}),
            );
        }
    }
}
