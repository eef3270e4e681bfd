//! KubeRay's own cluster hash, so a rollout is predicted by the test KubeRay
//! itself makes. KubeRay v1.5 decides whether a RayService change builds a
//! new RayCluster by hashing the planned `rayClusterConfig` (worker replicas
//! and `workersToDelete` left out) and comparing it with the
//! `ray.io/hash-without-replicas-and-workers-to-delete` annotation on the
//! RayCluster it built last (controllers/ray/rayservice_controller.go,
//! generateHashWithoutReplicasAndWorkersToDelete). The hash is SHA-1, in
//! base32's hex alphabet, of what Go's encoding/json writes for the spec
//! decoded into KubeRay's structs: fields in the structs' order, omitempty
//! and omitzero honoured, absent non-pointer fields written as their zero
//! values, unknown fields dropped and quantities canonical (`8192Mi` is
//! `8Gi`).
//!
//! The structs' shape is read from KubeRay's own types by
//! tools/kuberay/hashschema (kuberay_hash_schema.json). Whatever the encoder
//! cannot reproduce byte for byte (a float, a field type it does not know)
//! is an error, never a guess: the caller then falls back to comparing specs.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha1::{Digest, Sha1};

pub use crate::observe::{
    HASH_ANNOTATION as ANNOTATION, WORKER_GROUPS_ANNOTATION as WORKER_GROUPS,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("KubeRay's cluster hash cannot be reproduced at `{at}`: {why}")]
pub struct HashError {
    at: String,
    why: String,
}

fn error(at: &str, why: impl Into<String>) -> HashError {
    HashError {
        at: at.to_string(),
        why: why.into(),
    }
}

#[derive(Deserialize)]
struct Schema {
    root: String,
    structs: HashMap<String, Vec<Field>>,
}

#[derive(Deserialize)]
struct Field {
    json: String,
    omitempty: bool,
    omitzero: bool,
    #[serde(rename = "type")]
    ty: String,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::from_str(include_str!("kuberay_hash_schema.json"))
            .expect("the embedded schema is generated JSON")
    })
}

/// KubeRay v1.5's hash of `rayClusterConfig`.
pub fn cluster_hash(config: &Value) -> Result<String, HashError> {
    hash_of(without_replicas(config, None))
}

/// The hash of `rayClusterConfig` with only its first `groups` worker groups:
/// what KubeRay compares to tell worker groups appended at the end.
pub fn cluster_hash_of_first(config: &Value, groups: usize) -> Result<String, HashError> {
    hash_of(without_replicas(config, Some(groups)))
}

fn hash_of(config: Value) -> Result<String, HashError> {
    Ok(base32_hex(&Sha1::digest(go_json(&config)?.as_bytes())))
}

/// What encoding/json writes for `config` decoded into a RayClusterSpec.
fn go_json(config: &Value) -> Result<String, HashError> {
    let schema = schema();
    let mut out = String::new();
    encode(
        schema,
        &schema.root,
        Some(config),
        "rayClusterConfig",
        &mut out,
    )?;
    Ok(out)
}

/// `rayClusterConfig` without what KubeRay leaves out of its hash (worker
/// replicas, workers to delete), and only its first `groups` worker groups.
pub(super) fn without_replicas(config: &Value, groups: Option<usize>) -> Value {
    let mut config = config.clone();
    if let Some(list) = config
        .get_mut("workerGroupSpecs")
        .and_then(Value::as_array_mut)
    {
        if let Some(n) = groups {
            list.truncate(n);
        }
        for group in list.iter_mut().filter_map(Value::as_object_mut) {
            for key in ["replicas", "minReplicas", "maxReplicas"] {
                group.remove(key);
            }
            if let Some(scale) = group
                .get_mut("scaleStrategy")
                .and_then(Value::as_object_mut)
            {
                scale.remove("workersToDelete");
            }
        }
    }
    config
}

/// Writes `value` (`None`: absent) as encoding/json writes the Go value it
/// decodes into.
fn encode(
    schema: &Schema,
    ty: &str,
    value: Option<&Value>,
    at: &str,
    out: &mut String,
) -> Result<(), HashError> {
    let value = value.filter(|v| !v.is_null());
    if let Some(inner) = ty.strip_prefix("ptr:") {
        if value.is_some() {
            return encode(schema, inner, value, at, out);
        }
        out.push_str("null");
        return Ok(());
    }
    if let Some(name) = ty.strip_prefix("struct:") {
        return encode_struct(schema, name, value, at, out);
    } else if let Some(inner) = ty.strip_prefix("slice:") {
        return encode_slice(schema, inner, value, at, out);
    } else if let Some(inner) = ty.strip_prefix("map:") {
        return encode_map(schema, inner, value, at, out);
    } else if let Some(name) = ty.strip_prefix("marshaler:") {
        return marshaled(name, value, at, out);
    }
    match (ty, value) {
        ("string", None) => string(out, ""),
        ("string", Some(Value::String(s))) => string(out, s),
        ("bool", None) => out.push_str("false"),
        ("bool", Some(Value::Bool(b))) => out.push_str(if *b { "true" } else { "false" }),
        ("int" | "uint", None) => out.push('0'),
        ("int" | "uint", Some(Value::Number(n))) if n.is_i64() || n.is_u64() => {
            out.push_str(&n.to_string())
        }
        _ => return Err(error(at, format!("not a value of Go type {ty}"))),
    }
    Ok(())
}

fn encode_struct(
    schema: &Schema,
    name: &str,
    value: Option<&Value>,
    at: &str,
    out: &mut String,
) -> Result<(), HashError> {
    let fields = schema
        .structs
        .get(name)
        .ok_or_else(|| error(at, format!("struct {name} is not in the schema")))?;
    let object = match value {
        None => None,
        Some(Value::Object(o)) => Some(o),
        Some(_) => return Err(error(at, "not an object")),
    };
    out.push('{');
    let mut first = true;
    for field in fields {
        let v = object
            .and_then(|o| o.get(&field.json))
            .filter(|v| !v.is_null());
        if (field.omitempty && empty(&field.ty, v)) || (field.omitzero && zero(&field.ty, v)) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        string(out, &field.json);
        out.push(':');
        encode(schema, &field.ty, v, &format!("{at}.{}", field.json), out)?;
    }
    out.push('}');
    Ok(())
}

fn encode_slice(
    schema: &Schema,
    inner: &str,
    value: Option<&Value>,
    at: &str,
    out: &mut String,
) -> Result<(), HashError> {
    let items = match value {
        None => {
            out.push_str("null");
            return Ok(());
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(error(at, "not a list")),
    };
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        encode(schema, inner, Some(item), &format!("{at}[{i}]"), out)?;
    }
    out.push(']');
    Ok(())
}

fn encode_map(
    schema: &Schema,
    inner: &str,
    value: Option<&Value>,
    at: &str,
    out: &mut String,
) -> Result<(), HashError> {
    let map: &Map<String, Value> = match value {
        None => {
            out.push_str("null");
            return Ok(());
        }
        Some(Value::Object(map)) => map,
        Some(_) => return Err(error(at, "not a map")),
    };
    // Go writes map keys sorted by their bytes.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(out, key);
        out.push(':');
        encode(schema, inner, map.get(key), &format!("{at}.{key}"), out)?;
    }
    out.push('}');
    Ok(())
}

/// The few Kubernetes types with their own MarshalJSON.
fn marshaled(
    name: &str,
    value: Option<&Value>,
    at: &str,
    out: &mut String,
) -> Result<(), HashError> {
    match (name.rsplit('/').next().unwrap_or(name), value) {
        ("resource.Quantity", None) => string(out, "0"),
        ("resource.Quantity", Some(v)) => {
            let text = match v {
                Value::String(s) => s.trim().to_string(),
                Value::Number(n) => n.to_string(),
                _ => return Err(error(at, "not a quantity")),
            };
            let canonical = super::quantity::canonical(&text)
                .ok_or_else(|| error(at, format!("quantity `{text}`")))?;
            string(out, &canonical);
        }
        ("intstr.IntOrString", None) => out.push('0'),
        ("intstr.IntOrString", Some(Value::String(s))) => string(out, s),
        ("intstr.IntOrString", Some(Value::Number(n))) if n.is_i64() => {
            out.push_str(&n.to_string())
        }
        // A zero metav1.Time is written as null; a set one would need Go's
        // UTC RFC 3339 rendering, which pod templates have no use for.
        ("v1.Time", None) => out.push_str("null"),
        (other, _) => return Err(error(at, format!("a value of Go type {other}"))),
    }
    Ok(())
}

/// Go's omitempty: false, 0, "", and nil or empty pointers, slices and maps.
/// A struct is never empty, so a missing non-pointer struct is still written.
fn empty(ty: &str, value: Option<&Value>) -> bool {
    let Some(value) = value else {
        return !ty.starts_with("struct:") && !ty.starts_with("marshaler:");
    };
    if ty.starts_with("ptr:") {
        return false;
    }
    match value {
        Value::Bool(b) => !b && ty == "bool",
        Value::Number(n) => n.as_f64() == Some(0.0) && (ty == "int" || ty == "uint"),
        Value::String(s) => s.is_empty() && ty == "string",
        Value::Array(a) => a.is_empty() && ty.starts_with("slice:"),
        Value::Object(o) => o.is_empty() && ty.starts_with("map:"),
        Value::Null => true,
    }
}

/// Go's omitzero, as far as the schema uses it (a zero metav1.Time).
fn zero(ty: &str, value: Option<&Value>) -> bool {
    value.is_none() || empty(ty, value)
}

/// A JSON string as encoding/json writes it: HTML characters, U+2028 and
/// U+2029 escaped as well.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' | '"' => {
                out.push('\\');
                out.push(c);
            }
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// base32 in the "extended hex" alphabet, as Go's base32.HexEncoding.
fn base32_hex(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHIJKLMNOPQRSTUV";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    while !out.len().is_multiple_of(8) {
        out.push('=');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// A RayService's `rayClusterConfig` as the API server returned it, and
    /// the hash the real KubeRay v1.5.0 wrote on the RayCluster it built.
    fn fixture(text: &str) -> (Value, String) {
        let fixture: Value = serde_json::from_str(text).expect("fixture JSON");
        let hash = fixture["hash"].as_str().expect("hash").to_string();
        (fixture["rayClusterConfig"].clone(), hash)
    }

    #[test]
    fn the_hash_is_the_one_kuberay_wrote() {
        for text in [
            include_str!("kuberay_hash_fixtures/plain.json"),
            include_str!("kuberay_hash_fixtures/gpu.json"),
            include_str!("kuberay_hash_fixtures/onegroup.json"),
        ] {
            let (config, hash) = fixture(text);
            assert_eq!(cluster_hash(&config), Ok(hash));
        }
    }

    #[test]
    fn groups_appended_are_told_by_the_hash_of_the_first_groups() {
        // `gpu` is `onegroup` with a CPU group appended, and its memory
        // written 8192Mi and 0.5Gi where `onegroup` says 8Gi and 512Mi.
        let (gpu, _) = fixture(include_str!("kuberay_hash_fixtures/gpu.json"));
        let (_, onegroup) = fixture(include_str!("kuberay_hash_fixtures/onegroup.json"));
        assert_eq!(cluster_hash_of_first(&gpu, 1), Ok(onegroup.clone()));
        assert_ne!(cluster_hash(&gpu), Ok(onegroup));
    }

    #[test]
    fn respellings_kuberay_reads_the_same_leave_the_hash_alone() {
        let (plain, hash) = fixture(include_str!("kuberay_hash_fixtures/plain.json"));
        let mut respelled = plain.clone();
        let head = &mut respelled["headGroupSpec"]["template"]["spec"]["containers"][0];
        head["resources"] = json!({});
        head["env"][0]["valueFrom"] = Value::Null;
        respelled["workerGroupSpecs"] = json!([]);
        assert_eq!(cluster_hash(&respelled), Ok(hash.clone()));

        let mut replicas = plain.clone();
        replicas["workerGroupSpecs"] = json!([{"groupName": "w", "replicas": 1, "template": {}}]);
        let mut more = replicas.clone();
        more["workerGroupSpecs"][0]["replicas"] = json!(5);
        more["workerGroupSpecs"][0]["scaleStrategy"] = json!({"workersToDelete": ["w-1"]});
        assert_eq!(cluster_hash(&replicas), cluster_hash(&more));
        assert_ne!(cluster_hash(&replicas), Ok(hash));
    }

    #[test]
    fn what_cannot_be_reproduced_is_an_error_not_a_guess() {
        let (mut plain, _) = fixture(include_str!("kuberay_hash_fixtures/plain.json"));
        plain["headGroupSpec"]["template"]["metadata"]["deletionTimestamp"] =
            json!("2026-01-01T00:00:00Z");
        assert!(cluster_hash(&plain).is_err());
        let (mut plain, _) = fixture(include_str!("kuberay_hash_fixtures/plain.json"));
        plain["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"] =
            json!({"limits": {"memory": "8GB"}});
        assert!(cluster_hash(&plain).is_err());
    }

    #[test]
    fn strings_are_escaped_as_go_escapes_them() {
        let mut out = String::new();
        string(&mut out, "a<b>&\"\\\u{8}\u{1}\u{2028}é");
        assert_eq!(out, r#""a\u003cb\u003e\u0026\"\\\b\u0001\u2028é""#);
    }

    #[test]
    fn base32_is_go_s_hex_encoding() {
        assert_eq!(base32_hex(b"foobar"), "CPNMUOJ1E8======");
        assert_eq!(base32_hex(&[0xff; 20]), "VVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVV");
    }
}
