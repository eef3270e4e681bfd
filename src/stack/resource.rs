//! One parser per resource type of a stack, each checking everything that
//! can be checked without a cluster: ranges Karpenter and Kubernetes accept,
//! URLs and HTTP methods, device names, and that referenced files are
//! regular files (a secret's file is looked at, never read).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::error::StackError;
use super::model::*;
use super::parse::{Source, Table, as_string, as_table, fill_identity, to_json};
use crate::util::format_duration;

/// The NodeClass EKS Auto Mode provisions, which `[gpu_nodes]` copies by
/// default (the karpenter layer names it too, as `automode::BUILT_IN_CLASS`).
pub const EKS_DEFAULT_CLASS: &str = "default";

/// A wait looks at Serve no more often than this, whatever the stack says.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// The longest duration Kubernetes and Karpenter parse (Go's `time.Duration`).
const MAX_DURATION: Duration = Duration::from_secs(2_562_047 * 3600);

const HTTP_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The resources one table declares: one, but two for `[gpu_nodes]`.
pub(super) fn resources(
    src: &Source<'_>,
    dir: &Path,
    kind: ResourceType,
    name: String,
    t: &Table<'_, '_>,
    namespace: &str,
    location: Location,
) -> Result<Vec<Resource>, StackError> {
    let spec = match kind {
        ResourceType::GpuPool | ResourceType::GpuClass => {
            return gpu_nodes(src, name, t, location);
        }
        ResourceType::NodePool => node_pool(src, t)?,
        ResourceType::NodeClass => node_class(src, t)?,
        ResourceType::Secret => secret(src, dir, t)?,
        ResourceType::RayService | ResourceType::Manifest => {
            object(src, dir, kind, &name, namespace, t)?
        }
        ResourceType::Wait => wait(src, t)?,
        // Has no table (`ResourceType::table`), so is never declared.
        ResourceType::Provisioner => return Ok(Vec::new()),
    };
    Ok(vec![Resource {
        address: Address::new(kind, name),
        spec,
        depends_on: depends_on(src, t)?,
        location,
    }])
}

/// `[gpu_nodes.NAME]`: the NodeClass `gpuclass.NAME` and the NodePool
/// `gpupool.NAME` that launches from it, both declared where the table is.
/// The table's `depends_on` holds for both.
fn gpu_nodes(
    src: &Source<'_>,
    name: String,
    t: &Table<'_, '_>,
    location: Location,
) -> Result<Vec<Resource>, StackError> {
    t.only(src, &["empty_ttl", "storage", "class_from", "depends_on"])?;
    if t.get("empty_ttl").is_none() {
        return Err(src.error_help(
            &t.span,
            &t.field("empty_ttl"),
            "missing required key `empty_ttl`",
            "how long Karpenter keeps an empty GPU node, e.g. empty_ttl = \"600s\"",
        ));
    }
    let empty_ttl = positive_duration(src, t, "empty_ttl", Duration::ZERO)?;
    let (storage, span) = t.required_string(src, "storage")?;
    if let Err(why) = storage_quantity(&storage) {
        return Err(src.error_help(&span, &t.field("storage"), why,
            "use a whole number with Gi (at most 59000), G (64000), Ti (58) or T (64), e.g. \"200Gi\""));
    }
    let class_from = match t.string(src, "class_from")? {
        None => EKS_DEFAULT_CLASS.to_string(),
        Some((from, span)) if from == name => {
            return Err(src.error_help(
                &span,
                &t.field("class_from"),
                format!("the NodeClass `{name}` cannot be made from itself"),
                "name the NodeClass to take the role, subnets and security groups from, e.g. class_from = \"default\"",
            ));
        }
        Some((from, span)) if !is_object_name(&from) => {
            return Err(src.error_help(
                &span,
                &t.field("class_from"),
                format!("`{from}` is not a valid Kubernetes name"),
                "name an existing NodeClass, e.g. class_from = \"default\"",
            ));
        }
        Some((from, _)) => from,
    };
    let intent = GpuNodesIntent {
        empty_ttl,
        storage,
        class_from,
    };
    let depends_on = depends_on(src, t)?;
    Ok(vec![
        Resource {
            address: Address::new(ResourceType::GpuClass, name.clone()),
            spec: ResourceSpec::GpuClass(intent.clone()),
            depends_on: depends_on.clone(),
            location: location.clone(),
        },
        Resource {
            address: Address::new(ResourceType::GpuPool, name),
            spec: ResourceSpec::GpuPool(intent),
            depends_on,
            location,
        },
    ])
}

/// A name the API server takes for a cluster-scoped object (a DNS subdomain).
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn node_pool(src: &Source<'_>, t: &Table<'_, '_>) -> Result<ResourceSpec, StackError> {
    t.only(src, &["empty_ttl", "depends_on"])?;
    if t.get("empty_ttl").is_none() {
        return Err(src.error_help(
            &t.span,
            &t.field("empty_ttl"),
            "missing required key `empty_ttl`",
            "how long Karpenter keeps an empty node, e.g. empty_ttl = \"600s\"",
        ));
    }
    let empty_ttl = positive_duration(src, t, "empty_ttl", Duration::ZERO)?;
    Ok(ResourceSpec::NodePool(NodePoolIntent { empty_ttl }))
}

fn node_class(src: &Source<'_>, t: &Table<'_, '_>) -> Result<ResourceSpec, StackError> {
    t.only(src, &["storage", "device", "depends_on"])?;
    let (storage, span) = t.required_string(src, "storage")?;
    if let Err(why) = storage_quantity(&storage) {
        return Err(src.error_help(&span, &t.field("storage"), why,
            "use a whole number with Gi (at most 59000), G (64000), Ti (58) or T (64), e.g. \"200Gi\""));
    }
    let device = match t.string(src, "device")? {
        Some((d, span)) if !d.starts_with("/dev/") || d.len() <= "/dev/".len() => {
            return Err(src.error_help(
                &span,
                &t.field("device"),
                format!("`{d}` is not a device path"),
                "name the block device as the node class does, e.g. device = \"/dev/xvdb\"",
            ));
        }
        other => other.map(|(d, _)| d),
    };
    Ok(ResourceSpec::NodeClass(NodeClassIntent { storage, device }))
}

/// Why Karpenter's volumeSize pattern refuses a quantity, if it does.
fn storage_quantity(s: &str) -> Result<(), String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    let n: u64 = match digits.parse() {
        Ok(n) if !digits.starts_with('0') && ["Gi", "G", "Ti", "T"].contains(&unit) => n,
        _ => return Err(format!("`{s}` is not a volume size Karpenter accepts")),
    };
    // Karpenter's pattern for Ti skips 18, 19, 28, 29... (its regex, kept as it is).
    let accepted = match unit {
        "Gi" => n <= 59_000,
        "G" => n <= 64_000,
        "Ti" => n <= 58 && !(n >= 18 && n % 10 >= 8),
        _ => n <= 64,
    };
    if accepted {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is larger than Karpenter accepts for an EBS volume"
        ))
    }
}

fn secret(src: &Source<'_>, dir: &Path, t: &Table<'_, '_>) -> Result<ResourceSpec, StackError> {
    t.only(src, &["type", "data", "depends_on"])?;
    let type_ = match t.string(src, "type")? {
        None => "Opaque".to_string(),
        Some((s, span)) if s.trim().is_empty() => {
            return Err(src.error_help(
                &span,
                &t.field("type"),
                "must not be empty",
                "leave `type` out for an Opaque Secret",
            ));
        }
        Some((s, _)) => s,
    };
    let data_t = t.sub(src, "data")?.ok_or_else(|| {
        src.error_help(
            &t.span,
            &t.field("data"),
            "missing required table `data`",
            "e.g. data.HUGGING_FACE_HUB_TOKEN = { env = \"HUGGING_FACE_HUB_TOKEN\" }",
        )
    })?;
    let mut data = BTreeMap::new();
    for (key, v) in data_t.table.iter() {
        let k = key.get_ref().to_string();
        let source = secret_source(src, dir, &data_t, &k, key.span(), v)?;
        data.insert(k, source);
    }
    Ok(ResourceSpec::Secret(SecretSpec { type_, data }))
}

fn secret_source(
    src: &Source<'_>,
    dir: &Path,
    data: &Table<'_, '_>,
    k: &str,
    key_span: Range<usize>,
    v: &Spanned<DeValue<'_>>,
) -> Result<SecretSource, StackError> {
    let field = data.field(k);
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        return Err(src.error(
            &key_span,
            &field,
            "a Secret key may hold only letters, digits, `-`, `_` and `.`",
        ));
    }
    if let DeValue::String(_) = v.get_ref() {
        return Err(src.error_help(
            &v.span(),
            &field,
            "secret values are never written in a stack",
            format!("take it from the environment or a file: {k} = {{ env = \"VAR\" }} or {{ file = \"path\" }}"),
        ));
    }
    let source = as_table(src, v, &field, key_span)?;
    source.only(src, &["env", "file"])?;
    match (source.string(src, "env")?, source.string(src, "file")?) {
        (Some((var, span)), None) if var.is_empty() => {
            Err(src.error(&span, &source.field("env"), "names no environment variable"))
        }
        (Some((var, _)), None) => Ok(SecretSource::Env(var)),
        (None, Some((file, span))) => {
            let path = dir.join(&file);
            // Only what the path is: the value is read at apply, never here.
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => Ok(SecretSource::File(path)),
                Ok(_) => Err(src.error(
                    &span,
                    &source.field("file"),
                    format!("{} is not a regular file", path.display()),
                )),
                Err(e) => Err(src.error_help(
                    &span,
                    &source.field("file"),
                    format!("{} cannot be read: {e}", path.display()),
                    "paths are relative to the stack file",
                )),
            }
        }
        _ => Err(src.error(&v.span(), &field, "give exactly one of `env` or `file`")),
    }
}

fn object(
    src: &Source<'_>,
    dir: &Path,
    kind: ResourceType,
    name: &str,
    namespace: &str,
    t: &Table<'_, '_>,
) -> Result<ResourceSpec, StackError> {
    let (file_key, inline_key) = if kind == ResourceType::RayService {
        ("manifest", "spec")
    } else {
        ("file", "object")
    };
    t.only(src, &[file_key, inline_key, "depends_on"])?;
    let (mut object, source, span, field) = match (t.string(src, file_key)?, t.get(inline_key)) {
        (Some((file, span)), None) => {
            let path = dir.join(&file);
            let v = super::manifest::load(&path)
                .map_err(|m| src.error(&span, &t.field(file_key), m))?;
            (v, Some(path), span, t.field(file_key))
        }
        (None, Some(v)) => {
            let body = to_json(src, v, &t.field(inline_key))?;
            if !body.is_object() {
                return Err(src.error(&v.span(), &t.field(inline_key), "expected a table"));
            }
            let object = if kind == ResourceType::RayService {
                serde_json::json!({"apiVersion": "ray.io/v1", "kind": "RayService", "spec": body})
            } else {
                body
            };
            (object, None, v.span(), t.field(inline_key))
        }
        _ => {
            return Err(src.error(
                &t.span,
                &t.path,
                format!("give exactly one of `{file_key}` or `{inline_key}`"),
            ));
        }
    };
    fill_identity(src, kind, name, namespace, &mut object, &span, &field)?;
    let spec = ObjectSpec { object, source };
    Ok(if kind == ResourceType::RayService {
        ResourceSpec::RayService(spec)
    } else {
        ResourceSpec::Manifest(spec)
    })
}

fn wait(src: &Source<'_>, t: &Table<'_, '_>) -> Result<ResourceSpec, StackError> {
    t.only(
        src,
        &[
            "rayservice",
            "path",
            "url",
            "timeout",
            "interval",
            "probe",
            "model",
            "depends_on",
        ],
    )?;
    let (rayservice, _) = t.required_string(src, "rayservice")?;
    let path = t
        .string(src, "path")?
        .map_or_else(|| "/v1/chat/completions".to_string(), |(p, _)| p);
    if !path.starts_with('/') {
        return Err(src.error(
            &t.get("path").map_or(t.span.clone(), Spanned::span),
            &t.field("path"),
            "must start with `/`",
        ));
    }
    let url = match t.string(src, "url")? {
        Some((u, span)) => Some(endpoint(&u).map_err(|why| {
            src.error_help(
                &span,
                &t.field("url"),
                why,
                "point it at the Serve HTTP proxy, e.g. http://127.0.0.1:8000",
            )
        })?),
        None => None,
    };
    let timeout = positive_duration(src, t, "timeout", Duration::from_secs(30 * 60))?;
    let interval = positive_duration(src, t, "interval", Duration::from_millis(250))?;
    if interval > timeout {
        return Err(src.error(
            &t.get("interval").map_or(t.span.clone(), Spanned::span),
            &t.field("interval"),
            format!(
                "the interval ({}) is longer than the timeout ({}): the wait would look once",
                format_duration(interval),
                format_duration(timeout)
            ),
        ));
    }
    Ok(ResourceSpec::Wait(WaitSpec {
        rayservice,
        path,
        url,
        timeout,
        interval: interval.max(MIN_INTERVAL),
        probe: probe(src, t)?,
        model: t.string(src, "model")?.map(|(m, _)| m),
    }))
}

/// An `http://host[:port]` endpoint, as the wait sends requests to it.
pub fn endpoint(url: &str) -> Result<String, String> {
    if !url.starts_with("http://") {
        return Err(format!("`{url}` is not an http:// URL"));
    }
    let rest = &url["http://".len()..];
    if rest.is_empty() || rest.starts_with(['/', ':']) {
        return Err(format!("`{url}` names no host"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
    let authority = uri.authority().map_or("", |a| a.as_str());
    if let Some((_, port)) = authority.rsplit_once(':')
        && !port.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("`{url}`: port {port} is out of range (1-65535)"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` has a query; give the endpoint only"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn probe(src: &Source<'_>, t: &Table<'_, '_>) -> Result<ProbeSpec, StackError> {
    let v = match t.get("probe") {
        None => return Ok(ProbeSpec::Default),
        Some(v) => v,
    };
    match v.get_ref() {
        DeValue::Boolean(false) => return Ok(ProbeSpec::Off),
        DeValue::Boolean(true) => return Ok(ProbeSpec::Default),
        _ => {}
    }
    let p = as_table(src, v, &t.field("probe"), v.span())?;
    p.only(src, &["method", "path", "body", "timeout"])?;
    let method = match p.string(src, "method")? {
        None => "GET".to_string(),
        Some((m, span)) => {
            let upper = m.to_uppercase();
            if !HTTP_METHODS.contains(&upper.as_str()) {
                return Err(src.error_help(
                    &span,
                    &p.field("method"),
                    format!("`{m}` is not an HTTP method"),
                    format!("use one of {}", HTTP_METHODS.join(", ")),
                ));
            }
            upper
        }
    };
    let (path, path_span) = p.required_string(src, "path")?;
    if !path.starts_with('/') {
        return Err(src.error(&path_span, &p.field("path"), "must start with `/`"));
    }
    Ok(ProbeSpec::Custom(Probe {
        method,
        path,
        body: p.string(src, "body")?.map(|(b, _)| b),
        timeout: positive_duration(src, &p, "timeout", Probe::DEFAULT_TIMEOUT)?,
    }))
}

/// A duration that must be above zero and within what Kubernetes parses.
fn positive_duration(
    src: &Source<'_>,
    t: &Table<'_, '_>,
    key: &str,
    default: Duration,
) -> Result<Duration, StackError> {
    let d = t.duration(src, key, default)?;
    let span = t.get(key).map_or(t.span.clone(), Spanned::span);
    if d.is_zero() {
        return Err(src.error(&span, &t.field(key), "must be longer than 0s"));
    }
    if d > MAX_DURATION {
        return Err(src.error(
            &span,
            &t.field(key),
            format!(
                "is longer than Kubernetes durations go ({})",
                format_duration(MAX_DURATION)
            ),
        ));
    }
    Ok(d)
}

fn depends_on(src: &Source<'_>, t: &Table<'_, '_>) -> Result<Vec<(Address, Location)>, StackError> {
    let Some(v) = t.get("depends_on") else {
        return Ok(Vec::new());
    };
    let DeValue::Array(items) = v.get_ref() else {
        return Err(src.error(
            &v.span(),
            &t.field("depends_on"),
            "expected an array of addresses like \"secret.hf-token\"",
        ));
    };
    let mut deps = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let field = format!("{}[{n}]", t.field("depends_on"));
        let s = as_string(src, item, &field)?;
        let address = Address::parse(&s).ok_or_else(|| {
            src.error_help(
                &item.span(),
                &field,
                format!("`{s}` is not a resource address"),
                "write <type>.<name>, e.g. \"secret.hf-token\"",
            )
        })?;
        deps.push((address, src.location(item.span().start)));
    }
    Ok(deps)
}
