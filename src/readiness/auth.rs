//! The Ray dashboard's token, when the head runs Ray with token
//! authentication (Ray ≥ 2.52: the dashboard then answers 401 to a request
//! without one, 403 to a wrong one).
//!
//! KubeRay ≥ v1.5.1 sets it up from `authOptions: {mode: token}`: a Secret
//! named after the RayCluster (or `authOptions.secretName`), key
//! `auth_token`, given to every Ray container as `RAY_AUTH_TOKEN`; older
//! KubeRay users write the same env by hand. So the token is read where the
//! head itself gets it, its Ray container's env, which covers both, and sent
//! as KubeRay sends it: `x-ray-authorization: Bearer …`. Serve's HTTP proxy
//! checks no token (Ray 2.60), so the probe, which reaches user code, never
//! carries it.
//!
//! The token is a [`SecretValue`], and every answer of the dashboard is
//! masked with a [`Redactor`] of it before rayform quotes a word of it.

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use super::NotYet;
use crate::cluster::{Cluster, ClusterError};
use crate::secret::{Redactor, SecretValue};

/// How the head's Ray container gets its token, as its pod spec says.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Source {
    /// No token authentication that the pod spec shows.
    #[default]
    Off,
    /// `RAY_AUTH_TOKEN` from a Secret's key: KubeRay's way, and the manual one.
    Secret { name: String, key: String },
    /// `RAY_AUTH_TOKEN` written into the pod spec itself.
    Literal(SecretValue),
    /// `RAY_ENABLE_K8S_TOKEN_AUTH`: Ray checks Kubernetes tokens (Ray ≥ 2.55).
    Kubernetes,
    /// Token mode with no `RAY_AUTH_TOKEN`: a file in the container.
    InPod,
}

/// Reads the source of the token from the head pod: its Ray container is
/// the first (KubeRay's `RayContainerIndex`).
pub fn source(pod: &Value) -> Source {
    let env = pod
        .pointer("/spec/containers/0/env")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let var = |name: &str| env.iter().find(|e| e["name"] == name);
    let plain = |name: &str| var(name).and_then(|e| e["value"].as_str());
    let token = var("RAY_AUTH_TOKEN");
    // Ray 2.60's `ray start` turns token mode on by itself when it finds a
    // token and RAY_AUTH_MODE is unset.
    let on = match plain("RAY_AUTH_MODE") {
        Some(mode) => mode.eq_ignore_ascii_case("token"),
        None => token.is_some(),
    };
    if !on {
        return Source::Off;
    }
    if plain("RAY_ENABLE_K8S_TOKEN_AUTH").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Source::Kubernetes;
    }
    let Some(token) = token else {
        return Source::InPod;
    };
    if let Some(r) = token.pointer("/valueFrom/secretKeyRef") {
        return Source::Secret {
            name: r["name"].as_str().unwrap_or_default().to_string(),
            key: r["key"].as_str().unwrap_or_default().to_string(),
        };
    }
    match token["value"].as_str() {
        Some(v) if !v.is_empty() => Source::Literal(SecretValue::new(v.as_bytes().to_vec())),
        _ => Source::InPod,
    }
}

/// Whether the RayService's head will run Ray with a token rayform reads
/// from a Secret, as its manifest says (KubeRay's `authOptions`, or the env
/// written by hand): `doctor` then asks for `get` on Secrets.
pub fn reads_a_secret(rayservice: &Value) -> bool {
    let config = &rayservice["spec"]["rayClusterConfig"];
    let auth = &config["authOptions"];
    let kuberay = auth["mode"] == "token" && auth["enableK8sTokenAuth"] != true;
    let head = serde_json::json!({"spec": config.pointer("/headGroupSpec/template/spec")});
    kuberay || matches!(source(&head), Source::Secret { .. })
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Off => "the head pod names no token".into(),
            Source::Secret { name, key } => format!(
                "the token in Secret `{name}` (key `{key}`), the head's RAY_AUTH_TOKEN"
            ),
            Source::Literal(_) => "the token written in the head pod's RAY_AUTH_TOKEN".into(),
            Source::Kubernetes => {
                "the head checks Kubernetes tokens (RAY_ENABLE_K8S_TOKEN_AUTH), which rayform does not send".into()
            }
            Source::InPod => {
                "the head pod names no RAY_AUTH_TOKEN (its token is a file in the container), which rayform cannot read".into()
            }
        }
    }
}

/// The token of one head pod, read, with the mask of its every form.
#[derive(Debug, Clone, Default)]
pub struct Token {
    source: Source,
    value: Option<SecretValue>,
    masks: Redactor,
}

impl Token {
    fn new(source: Source, value: Option<SecretValue>) -> Token {
        let mut masks = Redactor::new();
        masks.add(value.iter().map(SecretValue::expose));
        Token {
            source,
            value,
            masks,
        }
    }

    /// What to send the dashboard, if anything.
    pub fn value(&self) -> Option<&SecretValue> {
        self.value.as_ref()
    }

    /// `text` the dashboard wrote, with the token masked wherever it quotes it.
    pub fn redact(&self, text: &str) -> String {
        self.masks.redact(text).into_owned()
    }

    /// Why the dashboard on `pod` answered `status` (401 or 403), and what to
    /// do: no retry sends another token.
    pub fn refused(&self, status: u16, body: &str, pod: &str) -> String {
        let said = format!("{status} {}", self.redact(body.trim()));
        let help = match (&self.source, &self.value) {
            (_, Some(_)) => {
                "a running Ray keeps the token it started with: if the Secret changed since, put the old token back or restart the RayCluster's pods (`kubectl delete pod` on the head)"
            }
            (Source::Kubernetes, _) => {
                "rayform sends a static token only: use `authOptions: {mode: token}` without `enableK8sTokenAuth`"
            }
            _ => {
                "give the head RAY_AUTH_TOKEN from a Secret (KubeRay v1.5.1 and later do with `authOptions: {mode: token}` in rayClusterConfig); rayform reads it from there"
            }
        };
        format!(
            "the Ray dashboard on {pod} refused rayform's request ({said}); {}\n  help: {help}",
            self.source.describe()
        )
    }
}

/// The token of the head looked at last, kept for the wait: a pod's env
/// does not change, and a Secret read on each look would be one more
/// request to the API server every 100 ms.
#[derive(Debug, Default)]
pub struct Tokens {
    kept: Option<(String, Token)>,
    /// The RayCluster KubeRay was last seen to send a token to.
    kuberay_sends: Option<String>,
}

impl Tokens {
    /// The token of the head pod `pod`, read from `source`.
    pub(super) async fn token(
        &mut self,
        cluster: &Cluster,
        namespace: &str,
        pod: &str,
        source: &Source,
    ) -> Result<Token, NotYet> {
        if let Some((kept_for, token)) = &self.kept
            && kept_for == pod
        {
            return Ok(token.clone());
        }
        let value = match source {
            Source::Off | Source::Kubernetes | Source::InPod => None,
            Source::Literal(v) => Some(v.clone()),
            Source::Secret { name, key } => Some(read(cluster, namespace, name, key).await?),
        };
        let token = Token::new(source.clone(), value);
        self.kept = Some((pod.to_string(), token.clone()));
        Ok(token)
    }

    /// Fails when the head `pod` of `raycluster` runs Ray with token
    /// authentication and KubeRay sends its dashboard no token: asked while
    /// Serve lacks the stack's config, which KubeRay then never delivers.
    pub(super) async fn kuberay_sends_a_token(
        &mut self,
        cluster: &Cluster,
        namespace: &str,
        raycluster: &str,
        pod: &str,
        source: &Source,
    ) -> Result<(), NotYet> {
        if *source == Source::Off || self.kuberay_sends.as_deref() == Some(raycluster) {
            return Ok(());
        }
        let Some(kind) = cluster.kind("ray.io/v1", "RayCluster") else {
            return Ok(());
        };
        let Ok(Some(object)) = cluster.get(&kind, Some(namespace), raycluster).await else {
            return Ok(());
        };
        let Some(why) = kuberay_left_out(&object) else {
            self.kuberay_sends = Some(raycluster.to_string());
            return Ok(());
        };
        Err(NotYet::Failed(format!(
            "the head pod {pod} runs Ray with token authentication, and {why}, so Serve never receives its config (the dashboard, asked with the head's token, shows no application)\n  \
             help: set `authOptions: {{mode: token}}` in rayClusterConfig (KubeRay v1.5.1 or later) and leave the token to KubeRay, which makes the Secret and gives it to Ray and to itself; or turn token authentication off (`RAY_AUTH_MODE=disabled`)"
        )))
    }
}

/// The token in key `key` of Secret `name`, without the whitespace a file
/// leaves (an HTTP header cannot carry a newline).
async fn read(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<SecretValue, NotYet> {
    let waiting = || {
        NotYet::Waiting(format!(
            "Secret {name} to hold the Ray dashboard's token (key {key})"
        ))
    };
    let secret = match cluster.get_typed::<Secret>(namespace, name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => return Err(waiting()),
        Err(e @ ClusterError::Forbidden { .. }) => {
            return Err(NotYet::Failed(format!(
                "the head runs Ray with token authentication, and reading its token failed: {e}"
            )));
        }
        Err(e) => return Err(NotYet::Waiting(format!("the Ray dashboard's token ({e})"))),
    };
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|b| b.0)
        .ok_or_else(waiting)?;
    Ok(SecretValue::new(bytes.trim_ascii().to_vec()))
}

/// KubeRay sends the dashboard a token only for a RayCluster with
/// `authOptions: {mode: token}` (v1.5.1 and later; older ones drop the
/// field): a head in token mode without it answers KubeRay's every request
/// with 401.
/// Why KubeRay sends no token to this RayCluster's dashboard, if it sends none.
fn kuberay_left_out(raycluster: &Value) -> Option<String> {
    let mode = raycluster
        .pointer("/spec/authOptions/mode")
        .and_then(Value::as_str);
    if mode == Some("token") {
        return None;
    }
    let version = raycluster
        .pointer("/metadata/annotations/ray.io~1kuberay-version")
        .and_then(Value::as_str)
        .map(|v| format!(" ({v})"))
        .unwrap_or_default();
    Some(format!(
        "KubeRay{version} sends the dashboard no token: RayCluster {} has no `authOptions: {{mode: token}}`, and KubeRay's requests get 401 Unauthorized",
        raycluster
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn head(env: Value) -> Value {
        json!({"spec": {"containers": [{"name": "ray-head", "env": env}, {"name": "sidecar"}]}})
    }

    #[test]
    fn the_token_is_read_where_kuberay_gives_it_to_ray() {
        // What KubeRay v1.6.0's SetContainerTokenAuthEnvVars writes for `authOptions: {mode: token}`.
        let kuberay = head(json!([
            {"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "llm-x7k2p", "key": "auth_token"}}}]));
        assert_eq!(
            source(&kuberay),
            Source::Secret {
                name: "llm-x7k2p".into(),
                key: "auth_token".into()
            }
        );
        // Ray 2.60 turns token mode on when it finds a token and the mode is unset.
        let implied = head(json!([{"name": "RAY_AUTH_TOKEN", "value": "t0k3n-in-spec"}]));
        assert!(matches!(source(&implied), Source::Literal(v) if v.expose() == b"t0k3n-in-spec"));
        let off = head(json!([
            {"name": "RAY_AUTH_MODE", "value": "disabled"},
            {"name": "RAY_AUTH_TOKEN", "value": "unused"}]));
        assert_eq!(source(&off), Source::Off);
        assert_eq!(source(&head(json!([]))), Source::Off);
        assert_eq!(
            source(&head(json!([{"name": "RAY_AUTH_MODE", "value": "TOKEN"}]))),
            Source::InPod
        );
        let k8s = head(json!([
            {"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_ENABLE_K8S_TOKEN_AUTH", "value": "true"}]));
        assert_eq!(source(&k8s), Source::Kubernetes);
    }

    #[test]
    fn a_refusal_names_where_the_token_came_from_never_the_token() {
        let token = Token::new(
            Source::Secret {
                name: "llm-ray-token".into(),
                key: "auth_token".into(),
            },
            Some(SecretValue::new(b"s3cr3t-dashboard-token".to_vec())),
        );
        // A dashboard (or a proxy before it) that quotes what it was sent.
        let said = token.refused(
            403,
            "Forbidden: bad token s3cr3t-dashboard-token",
            "llm-head-1",
        );
        assert!(!said.contains("s3cr3t"), "{said}");
        assert!(
            said.starts_with("the Ray dashboard on llm-head-1 refused rayform's request (403 Forbidden: bad token (sensitive value)); the token in Secret `llm-ray-token` (key `auth_token`)"),
            "{said}"
        );
        assert!(
            said.contains("help: a running Ray keeps the token it started with"),
            "{said}"
        );
        let none = Token::default().refused(401, "Unauthorized: Missing authentication token", "p");
        assert!(none.contains("the head pod names no token"), "{none}");
        assert!(none.contains("authOptions: {mode: token}"), "{none}");
        assert!(!format!("{token:?}").contains("s3cr3t"));
    }

    #[test]
    fn doctor_asks_for_secrets_only_where_a_token_is_read_from_one() {
        let rayservice = |config: Value| json!({"spec": {"rayClusterConfig": config}});
        let head_env = |env: Value| {
            rayservice(
                json!({"headGroupSpec": {"template": {"spec": {"containers": [{"name": "ray-head", "env": env}]}}}}),
            )
        };
        assert!(reads_a_secret(&rayservice(
            json!({"authOptions": {"mode": "token"}})
        )));
        assert!(!reads_a_secret(&rayservice(
            json!({"authOptions": {"mode": "token", "enableK8sTokenAuth": true}})
        )));
        assert!(reads_a_secret(&head_env(json!([
            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "auth_token"}}}]))));
        assert!(!reads_a_secret(&head_env(
            json!([{"name": "HF_TOKEN", "value": "x"}])
        )));
        assert!(!reads_a_secret(&rayservice(json!({}))));
    }

    #[test]
    fn kuberay_authenticates_only_a_raycluster_with_token_auth_options() {
        let mut rc = json!({"metadata": {"name": "llm-x7k2p", "annotations": {"ray.io/kuberay-version": "v1.5.0"}},
            "spec": {"headGroupSpec": {}}});
        let why = kuberay_left_out(&rc).expect("v1.5.0 sends none");
        assert_eq!(
            why,
            "KubeRay (v1.5.0) sends the dashboard no token: RayCluster llm-x7k2p has no `authOptions: {mode: token}`, and KubeRay's requests get 401 Unauthorized"
        );
        rc["spec"]["authOptions"] = json!({"mode": "token"});
        assert_eq!(kuberay_left_out(&rc), None);
    }
}
