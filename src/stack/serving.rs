//! What "serving" means for one wait, worked out from the stack alone, before
//! any cluster is asked (so it lives with the stack: parsing checks it, the
//! plan records it, and readiness only carries it out): the Serve applications the RayService's
//! `serveConfigV2` asks for (so readiness can tell the new config from the one
//! still running), the port Serve listens on, and the request that proves it
//! answers, from the model the stack names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Probe, ProbeSpec, WaitSpec};

/// Whether a route prefix serves a path, by Ray Serve's rule: the path starts
/// with the prefix, and the prefix ends with `/` or stops at a `/` of the path.
pub fn prefix_serves(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Ray Serve's default HTTP port, when `http_options.port` is not set.
pub const DEFAULT_SERVE_PORT: u16 = 8000;
const DEFAULT_PROBE_PATH: &str = "/v1/chat/completions";

/// One wait, resolved against its RayService.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Nested, not flattened: the wait has a `probe` (as written) of its own.
    pub wait: WaitSpec,
    /// The applications of `serveConfigV2`, by name, as the stack writes them.
    pub apps: BTreeMap<String, Value>,
    pub serve_port: u16,
    pub probe: Option<ProbeRequest>,
}

/// The request sent, and the model its answer must name (if the stack knows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRequest {
    #[serde(flatten)]
    pub request: Probe,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Target {
    /// `rayservice` is the RayService object the wait refers to, as rendered.
    pub fn resolve(wait: &WaitSpec, rayservice: &Value) -> Result<Target, String> {
        let config = serve_config(rayservice)?;
        let apps = apps(&config)?;
        let serve_port = match config.pointer("/http_options/port") {
            None | Some(Value::Null) => DEFAULT_SERVE_PORT,
            Some(p) => p
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| format!("serveConfigV2 http_options.port `{p}` is not a port"))?,
        };
        Ok(Target::from_parts(wait, apps, serve_port))
    }

    /// For a RayService with no `serveConfigV2`: nothing to compare, Serve's default port.
    pub fn without_config(wait: &WaitSpec) -> Target {
        Target::from_parts(wait, BTreeMap::new(), DEFAULT_SERVE_PORT)
    }

    fn from_parts(wait: &WaitSpec, apps: BTreeMap<String, Value>, serve_port: u16) -> Target {
        let model = wait
            .model
            .clone()
            .or_else(|| model_of(&apps, DEFAULT_PROBE_PATH));
        let probe = match &wait.probe {
            ProbeSpec::Off => None,
            ProbeSpec::Default => Some(ProbeRequest {
                request: Probe {
                    method: "POST".into(),
                    path: DEFAULT_PROBE_PATH.into(),
                    body: Some(chat_ping(model.as_deref()).to_string()),
                    timeout: Probe::DEFAULT_TIMEOUT,
                },
                model,
            }),
            ProbeSpec::Custom(p) => Some(ProbeRequest {
                // A custom body that names a model expects that model to answer.
                model: p
                    .body
                    .as_deref()
                    .and_then(|b| serde_json::from_str::<Value>(b).ok())
                    .and_then(|b| b["model"].as_str().map(str::to_string)),
                request: p.clone(),
            }),
        };
        Target {
            wait: wait.clone(),
            apps,
            serve_port,
            probe,
        }
    }
}

/// The smallest real request: one token from the model.
fn chat_ping(model: Option<&str>) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1});
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    body
}

fn serve_config(rayservice: &Value) -> Result<Value, String> {
    match rayservice.pointer("/spec/serveConfigV2") {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::String(text)) => serde_saphyr::from_str::<Value>(text)
            .map_err(|e| format!("serveConfigV2 is not YAML: {e}")),
        Some(_) => Err("serveConfigV2 must be a string holding YAML".into()),
    }
}

fn apps(config: &Value) -> Result<BTreeMap<String, Value>, String> {
    let Some(list) = config.get("applications") else {
        return Ok(BTreeMap::new());
    };
    let list = list
        .as_array()
        .ok_or("serveConfigV2 applications must be a list")?;
    list.iter()
        .map(|app| {
            let name = app["name"]
                .as_str()
                .ok_or("every application in serveConfigV2 needs a name")?;
            Ok((name.to_string(), app.clone()))
        })
        .collect()
}

/// The model id in the args of the application that serves `path`: the
/// `ray.serve.llm` form (one `llm_configs` entry), or a `model_id`/`model` arg.
fn model_of(apps: &BTreeMap<String, Value>, path: &str) -> Option<String> {
    let app = apps
        .values()
        .filter(|a| prefix_serves(a["route_prefix"].as_str().unwrap_or("/"), path))
        .max_by_key(|a| a["route_prefix"].as_str().unwrap_or("/").len())?;
    let args = &app["args"];
    let llm_model = match args["llm_configs"].as_array().map(Vec::as_slice) {
        Some([one]) => one.pointer("/model_loading_config/model_id"),
        _ => None,
    };
    llm_model
        .or_else(|| args.get("model_id"))
        .or_else(|| args.get("model"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait(probe: ProbeSpec, model: Option<&str>) -> WaitSpec {
        WaitSpec {
            rayservice: "llm".into(),
            path: "/v1/chat/completions".into(),
            url: None,
            timeout: Duration::from_secs(60),
            interval: Duration::from_millis(250),
            probe,
            model: model.map(str::to_string),
        }
    }

    fn rayservice(config: &str) -> Value {
        json!({"spec": {"serveConfigV2": config}})
    }

    #[test]
    fn the_default_probe_is_a_one_token_chat_completion_to_the_stacks_model() {
        let rs = rayservice(
            "applications:\n- name: llm\n  route_prefix: /\n  import_path: ray.serve.llm:build_openai_app\n  args:\n    llm_configs:\n    - model_loading_config: {model_id: mistralai/Mistral-7B-Instruct-v0.2}\n",
        );
        let t = Target::resolve(&wait(ProbeSpec::Default, None), &rs).unwrap();
        let probe = t.probe.unwrap();
        assert_eq!(probe.request.method, "POST");
        assert_eq!(probe.request.path, "/v1/chat/completions");
        assert_eq!(
            probe.model.as_deref(),
            Some("mistralai/Mistral-7B-Instruct-v0.2")
        );
        let body: Value = serde_json::from_str(probe.request.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["max_tokens"], 1);
        assert_eq!(body["model"], "mistralai/Mistral-7B-Instruct-v0.2");
        assert_eq!(t.serve_port, 8000);
        assert!(t.apps.contains_key("llm"));
    }

    #[test]
    fn the_stack_can_name_the_model_and_serve_can_move_its_port() {
        let rs = rayservice(
            "http_options: {port: 9123}\napplications:\n- name: a\n  import_path: x:y\n  args: {model_id: from-args}\n",
        );
        let t = Target::resolve(&wait(ProbeSpec::Default, Some("named")), &rs).unwrap();
        assert_eq!(t.serve_port, 9123);
        assert_eq!(t.probe.unwrap().model.as_deref(), Some("named"));
        let t = Target::resolve(&wait(ProbeSpec::Off, None), &rs).unwrap();
        assert_eq!(t.probe, None);
    }

    #[test]
    fn the_model_is_read_from_the_app_that_serves_the_path() {
        let rs = rayservice(
            "applications:\n- {name: web, route_prefix: /, import_path: w:app, args: {model: not-this}}\n- {name: llm, route_prefix: /v1, import_path: e:build, args: {model: echo-b}}\n",
        );
        let t = Target::resolve(&wait(ProbeSpec::Default, None), &rs).unwrap();
        assert_eq!(t.probe.unwrap().model.as_deref(), Some("echo-b"));
    }

    #[test]
    fn a_target_survives_a_saved_plan() {
        let rs =
            rayservice("applications:\n- {name: llm, import_path: e:build, args: {model: m}}\n");
        for spec in [ProbeSpec::Default, ProbeSpec::Off] {
            let t = Target::resolve(&wait(spec, None), &rs).unwrap();
            let saved = serde_json::to_string(&t).unwrap();
            assert_eq!(
                serde_json::from_str::<Target>(&saved).unwrap(),
                t,
                "{saved}"
            );
        }
    }

    #[test]
    fn a_bad_port_is_an_error_not_a_guess() {
        let rs = rayservice("http_options: {port: 70000}\napplications: []\n");
        let e = Target::resolve(&wait(ProbeSpec::Default, None), &rs).unwrap_err();
        assert!(e.contains("70000"), "{e}");
    }
}
