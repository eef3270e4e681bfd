//! Reads a TOML stack into a [`Stack`], keeping byte spans so that every
//! error can name the file, line, column and field.
//!
//! We walk toml's span-preserving `DeTable` by hand instead of deriving serde
//! structs: serde's errors lose the field path and cannot suggest the key the
//! user meant, and a stack author deserves both.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{StackError, suggest};
use super::model::*;
use crate::util::parse_duration;

type Val<'i> = Spanned<DeValue<'i>>;

/// Everything an error message needs: the file and its text.
pub(crate) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }

    pub fn error(
        &self,
        span: &Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> StackError {
        StackError::Invalid {
            location: self.location(span.start),
            field: field.to_string(),
            message: message.into(),
            help: None,
        }
    }

    pub(super) fn error_help(
        &self,
        span: &Range<usize>,
        field: &str,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> StackError {
        StackError::Invalid {
            location: self.location(span.start),
            field: field.to_string(),
            message: message.into(),
            help: Some(help.into()),
        }
    }
}

/// A table together with the span of the key that introduced it, so a missing
/// key can be reported where the table was declared.
pub(super) struct Table<'a, 'i> {
    pub table: &'a DeTable<'i>,
    pub span: Range<usize>,
    pub path: String,
}

impl<'a, 'i> Table<'a, 'i> {
    pub(super) fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Val<'i>> {
        self.table.get(key)
    }

    pub(super) fn only(&self, src: &Source<'_>, allowed: &[&str]) -> Result<(), StackError> {
        for (key, _) in self.table.iter() {
            let name = key.get_ref().as_ref();
            if !allowed.contains(&name) {
                let hint = match suggest(name, allowed.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("expected one of: {}", allowed.join(", ")),
                };
                return Err(src.error_help(
                    &key.span(),
                    &self.field(name),
                    format!("unknown key `{name}`"),
                    hint,
                ));
            }
        }
        Ok(())
    }

    pub(super) fn string(
        &self,
        src: &Source<'_>,
        key: &str,
    ) -> Result<Option<(String, Range<usize>)>, StackError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Ok(Some((as_string(src, v, &self.field(key))?, v.span()))),
        }
    }

    pub(super) fn required_string(
        &self,
        src: &Source<'_>,
        key: &str,
    ) -> Result<(String, Range<usize>), StackError> {
        self.string(src, key)?.ok_or_else(|| {
            src.error(
                &self.span,
                &self.field(key),
                format!("missing required key `{key}`"),
            )
        })
    }

    pub(super) fn sub(
        &self,
        src: &Source<'_>,
        key: &str,
    ) -> Result<Option<Table<'a, 'i>>, StackError> {
        // Errors about a missing key inside point at the sub-table's own key.
        match self.table.iter().find(|(k, _)| k.get_ref().as_ref() == key) {
            None => Ok(None),
            Some((k, v)) => Ok(Some(as_table(src, v, &self.field(key), k.span())?)),
        }
    }

    pub(super) fn duration(
        &self,
        src: &Source<'_>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, StackError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        let field = self.field(key);
        match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .map(Duration::from_secs)
                .ok_or_else(|| src.error(&v.span(), &field, "must be a non-negative number of seconds")),
            DeValue::String(s) => parse_duration(s).ok_or_else(|| {
                src.error_help(
                    &v.span(),
                    &field,
                    format!("`{s}` is not a duration"),
                    "write a number of seconds (600) or a duration such as \"600s\", \"10m\", \"1h30m\"",
                )
            }),
            other => Err(src.error(&v.span(), &field, format!("expected a duration, found {}", type_name(other)))),
        }
    }
}

pub(super) fn as_table<'a, 'i>(
    src: &Source<'_>,
    v: &'a Val<'i>,
    field: &str,
    span: Range<usize>,
) -> Result<Table<'a, 'i>, StackError> {
    match v.get_ref() {
        DeValue::Table(t) => Ok(Table {
            table: t,
            span,
            path: field.to_string(),
        }),
        other => Err(src.error(
            &v.span(),
            field,
            format!("expected a table, found {}", type_name(other)),
        )),
    }
}

pub(super) fn as_string(src: &Source<'_>, v: &Val<'_>, field: &str) -> Result<String, StackError> {
    match v.get_ref() {
        DeValue::String(s) => Ok(s.to_string()),
        other => Err(src.error(
            &v.span(),
            field,
            format!("expected a string, found {}", type_name(other)),
        )),
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Converts an inline TOML value (e.g. a RayService `spec`) to JSON.
pub(super) fn to_json(
    src: &Source<'_>,
    v: &Val<'_>,
    field: &str,
) -> Result<serde_json::Value, StackError> {
    use serde_json::Value as J;
    Ok(match v.get_ref() {
        DeValue::String(s) => J::String(s.to_string()),
        DeValue::Integer(i) => J::from(
            i64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| src.error(&v.span(), field, "integer out of range"))?,
        ),
        DeValue::Float(f) => {
            let n: f64 = f
                .as_str()
                .replace('_', "")
                .parse()
                .map_err(|_| src.error(&v.span(), field, "not a finite number"))?;
            serde_json::Number::from_f64(n)
                .map(J::Number)
                .ok_or_else(|| src.error(&v.span(), field, "not a finite number"))?
        }
        DeValue::Boolean(b) => J::Bool(*b),
        DeValue::Datetime(d) => J::String(d.to_string()),
        DeValue::Array(a) => J::Array(
            a.iter()
                .enumerate()
                .map(|(n, e)| to_json(src, e, &format!("{field}[{n}]")))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(t) => {
            let mut m = serde_json::Map::new();
            for (k, e) in t.iter() {
                let k = k.get_ref().to_string();
                let value = to_json(src, e, &format!("{field}.{k}"))?;
                m.insert(k, value);
            }
            J::Object(m)
        }
    })
}

/// Parses and validates the text of a stack file.
/// Long on purpose: each table of the stack in the order the reference
/// documents them, every error collected rather than the first returned.
pub(crate) fn parse(src: &Source<'_>, state_override: &StateOverride) -> Result<Stack, StackError> {
    let doc = DeTable::parse(src.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        src.error(&span, "", format!("invalid TOML: {}", e.message().trim()))
    })?;
    let root = Table {
        table: doc.get_ref(),
        span: 0..0,
        path: String::new(),
    };
    let mut allowed = vec!["stack"];
    for table in ResourceType::ALL
        .into_iter()
        .filter_map(ResourceType::table)
    {
        if !allowed.contains(&table) {
            allowed.push(table);
        }
    }
    root.only(src, &allowed)?;

    let header = root.sub(src, "stack")?.ok_or_else(|| {
        src.error_help(
            &(0..0),
            "stack",
            "missing the [stack] table",
            "start the file with [stack] and name = \"...\"",
        )
    })?;
    header.only(
        src,
        &["name", "namespace", "state", "backend", "state_namespace"],
    )?;
    let (name, name_span) = header.required_string(src, "name")?;
    check_dns_label(src, &name, &name_span, "stack.name", 40)?;
    let namespace = match header.string(src, "namespace")? {
        Some((ns, span)) => {
            check_dns_label(src, &ns, &span, "stack.namespace", 63)?;
            ns
        }
        None => "default".to_string(),
    };
    let dir = src.file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let state = state_location(src, &header, &dir, &name, &namespace, state_override)?;

    // Each resource is checked on its own, so one run reports them all.
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for (type_key, type_val) in doc.get_ref().iter() {
        let type_name = type_key.get_ref().as_ref();
        let Some(kind) = ResourceType::ALL
            .into_iter()
            .find(|t| t.table() == Some(type_name))
        else {
            continue;
        };
        let group = match as_table(src, type_val, type_name, type_key.span()) {
            Ok(group) => group,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for (name_key, body) in group.table.iter() {
            let declared = Declared {
                kind,
                name_key,
                body,
            };
            match declared.resources(src, &dir, &namespace) {
                Ok(r) => resources.extend(r),
                Err(e) => errors.push(e),
            }
        }
    }
    StackError::all(errors)?;
    resources.sort_by_key(|r| r.location.line);

    let stack = Stack {
        name,
        namespace,
        file: src.file.to_path_buf(),
        state,
        resources,
    };
    cross_check(&stack)?;
    Ok(stack)
}

/// One `[<type>.<name>]` table of the stack.
struct Declared<'a, 'de> {
    kind: ResourceType,
    name_key: &'a Spanned<std::borrow::Cow<'de, str>>,
    body: &'a Spanned<DeValue<'de>>,
}

impl Declared<'_, '_> {
    /// The resources the table declares: one, but for `[gpu_nodes]` (two).
    fn resources(
        &self,
        src: &Source<'_>,
        dir: &Path,
        namespace: &str,
    ) -> Result<Vec<Resource>, StackError> {
        let (kind, name_key, body) = (self.kind, self.name_key, self.body);
        let type_name = kind.table().unwrap_or(kind.as_str());
        let name = name_key.get_ref().to_string();
        let path = format!("{type_name}.{name}");
        if !matches!(body.get_ref(), DeValue::Table(_)) {
            return Err(src.error_help(
                &name_key.span(),
                &path,
                format!("`{name}` is a value, but [{type_name}] holds named tables"),
                format!("name the {type_name}: [{type_name}.default] with {name} = ... under it"),
            ));
        }
        check_name(src, kind, &name, &name_key.span(), &path)?;
        let table = as_table(src, body, &path, name_key.span())?;
        let location = src.location(name_key.span().start);
        super::resource::resources(src, dir, kind, name, &table, namespace, location)
    }
}

/// Gives the object the resource's name and the stack's namespace, and
/// refuses a manifest that says otherwise rather than silently overriding it.
/// Every identity check in one place, in the order a user fixes them.
pub(super) fn fill_identity(
    src: &Source<'_>,
    kind: ResourceType,
    name: &str,
    namespace: &str,
    object: &mut serde_json::Value,
    span: &Range<usize>,
    field: &str,
) -> Result<(), StackError> {
    let api_version = object["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let k = object["kind"].as_str().unwrap_or_default().to_string();
    if api_version.is_empty() || k.is_empty() {
        return Err(src.error(span, field, "the object needs `apiVersion` and `kind`"));
    }
    if kind == ResourceType::RayService
        && (k != "RayService" || !api_version.starts_with("ray.io/"))
    {
        return Err(src.error_help(
            span,
            field,
            format!("expected a ray.io RayService, found {api_version} {k}"),
            "declare other objects as [manifest.<name>]",
        ));
    }
    if kind == ResourceType::Manifest && k == "Secret" {
        return Err(src.error_help(
            span,
            field,
            "a Secret in a manifest would put its value in the stack and the plan",
            "declare it as [secret.<name>] with values from env or file",
        ));
    }
    let Some(obj) = object.as_object_mut() else {
        return Err(src.error(span, field, "expected a mapping"));
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| serde_json::json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(src.error(span, field, "`metadata` must be a mapping"));
    };
    // rayform adds its own labels and annotations to these maps.
    for key in ["labels", "annotations"] {
        match meta.get(key) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(m)) if m.values().all(serde_json::Value::is_string) => {}
            Some(_) => {
                return Err(src.error_help(
                    span,
                    field,
                    format!("metadata.{key} must be a mapping of strings"),
                    format!("write it as {key} = {{ team = \"a\" }}"),
                ));
            }
        }
    }
    match meta.get("name").and_then(|n| n.as_str()) {
        Some(n) if n != name => {
            return Err(src.error_help(
                span,
                field,
                format!("metadata.name is `{n}` but the resource is named `{name}`"),
                format!(
                    "rename the table to [{}.{n}] or drop metadata.name",
                    kind.as_str()
                ),
            ));
        }
        _ => {
            meta.insert("name".into(), name.into());
        }
    }
    match meta.get("namespace").and_then(|n| n.as_str()) {
        Some(ns) if ns != namespace => Err(src.error_help(
            span,
            field,
            format!("metadata.namespace is `{ns}` but the stack's namespace is `{namespace}`"),
            "drop metadata.namespace; the stack sets it",
        )),
        _ => Ok(()),
    }
}

fn check_name(
    src: &Source<'_>,
    kind: ResourceType,
    name: &str,
    span: &Range<usize>,
    field: &str,
) -> Result<(), StackError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok || kind == ResourceType::Wait && !name.is_empty() {
        Ok(())
    } else {
        Err(src.error_help(span, field, format!("`{name}` is not a valid Kubernetes name"), "use lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit"))
    }
}

/// `backend`, `state` and `state_namespace` of `[stack]`: where the state
/// lives, unless the command line says otherwise.
fn state_location(
    src: &Source<'_>,
    header: &Table<'_, '_>,
    dir: &Path,
    name: &str,
    namespace: &str,
    flags: &StateOverride,
) -> Result<StateLocation, StackError> {
    let declared = match header.string(src, "backend")? {
        None => BackendKind::File,
        Some((b, _)) if b == "file" => BackendKind::File,
        Some((b, _)) if b == "kubernetes" => BackendKind::Kubernetes,
        Some((_, span)) => {
            return Err(src.error_help(
                &span,
                "stack.backend",
                "unknown state backend",
                "use \"file\" (the default) or \"kubernetes\"",
            ));
        }
    };
    let path = header.string(src, "state")?;
    let state_namespace = header.string(src, "state_namespace")?;
    if flags.backend.is_none() {
        match (declared, &path, &state_namespace) {
            (BackendKind::File, _, Some((_, span))) => {
                return Err(src.error_help(
                    span,
                    "stack.state_namespace",
                    "state_namespace is for the kubernetes backend",
                    "add backend = \"kubernetes\", or remove state_namespace",
                ));
            }
            (BackendKind::Kubernetes, Some((_, span)), _) => {
                return Err(src.error_help(span, "stack.state", "a state file is for the file backend; the kubernetes backend keeps the state in a Secret", "remove `state`, or set backend = \"file\""));
            }
            _ => {}
        }
    }
    match flags.backend.unwrap_or(declared) {
        BackendKind::File => {
            let path = match (&flags.path, path) {
                (Some(p), _) => p.clone(),
                (None, Some((p, _))) => dir.join(p),
                (None, None) => default_state_path(dir, name),
            };
            Ok(StateLocation::File { path })
        }
        BackendKind::Kubernetes => {
            let namespace = match (&flags.namespace, state_namespace) {
                (Some(ns), _) => ns.clone(),
                (None, Some((ns, span))) => {
                    check_dns_label(src, &ns, &span, "stack.state_namespace", 63)?;
                    ns
                }
                (None, None) => namespace.to_string(),
            };
            Ok(StateLocation::Kubernetes {
                namespace,
                stack: name.to_string(),
            })
        }
    }
}

/// Where a stack without `state = "…"` keeps its state: found from the stack
/// file, never the working directory, so `rayform plan stacks/x.toml` and
/// `cd stacks && rayform plan x.toml` share one state, lineage and lock. A
/// stack in a directory named `stacks` uses the `state/` beside that directory
/// (the repository layout); any other stack, `state/` beside the stack file.
fn default_state_path(dir: &Path, name: &str) -> PathBuf {
    let dir = std::fs::canonicalize(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .unwrap_or_else(|_| dir.to_path_buf());
    let root = match (dir.file_name(), dir.parent()) {
        (Some(last), Some(parent)) if last == "stacks" => parent.to_path_buf(),
        _ => dir,
    };
    root.join("state").join(format!("{name}.json"))
}

fn check_dns_label(
    src: &Source<'_>,
    value: &str,
    span: &Range<usize>,
    field: &str,
    max: usize,
) -> Result<(), StackError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(src.error_help(
            span,
            field,
            format!("`{value}` is not a valid name"),
            format!("use at most {max} lowercase letters, digits and `-`, starting with a letter"),
        ))
    }
}

/// References between resources, checked once every resource is known.
fn cross_check(stack: &Stack) -> Result<(), StackError> {
    owned_and_patched(stack)?;
    for r in &stack.resources {
        for (dep, location) in &r.depends_on {
            if stack.get(dep).is_none() {
                let names: Vec<String> = stack
                    .resources
                    .iter()
                    .map(|r| r.address.to_string())
                    .collect();
                let dep_s = dep.to_string();
                let help = suggest(&dep_s, names.iter().map(String::as_str)).map_or_else(
                    || format!("declared resources: {}", names.join(", ")),
                    |s| format!("did you mean `{s}`?"),
                );
                return Err(StackError::Invalid {
                    location: location.clone(),
                    field: format!("{}.depends_on", r.address),
                    message: format!("`{dep}` is not declared in this stack"),
                    help: Some(help),
                });
            }
            if dep == &r.address {
                return Err(StackError::Invalid {
                    location: location.clone(),
                    field: format!("{}.depends_on", r.address),
                    message: format!("dependency cycle: {0} -> {0}", r.address),
                    help: None,
                });
            }
        }
        if let ResourceSpec::Wait(w) = &r.spec {
            let target = Address::new(ResourceType::RayService, &w.rayservice);
            let Some(rayservice) = stack.get(&target) else {
                return Err(StackError::Invalid {
                    location: r.location.clone(),
                    field: format!("{}.rayservice", r.address),
                    message: format!("no [rayservice.{}] in this stack", w.rayservice),
                    help: None,
                });
            };
            // What the wait will look for must be readable now, not at the end of an apply.
            if let ResourceSpec::RayService(o) = &rayservice.spec
                && let Err(message) = super::serving::Target::resolve(w, &o.object)
            {
                return Err(StackError::Invalid {
                    location: rayservice.location.clone(),
                    field: format!("{target}.spec.serveConfigV2"),
                    message,
                    help: None,
                });
            }
        }
    }
    Ok(())
}

/// A NodePool or NodeClass the stack creates in `[gpu_nodes]` is its own:
/// a `[nodepool]` or `[nodeclass]` intent of the same name would patch it
/// and record an original that is the stack's own write.
fn owned_and_patched(stack: &Stack) -> Result<(), StackError> {
    for r in &stack.resources {
        let owned = match r.address.kind {
            ResourceType::NodePool => ResourceType::GpuPool,
            ResourceType::NodeClass => ResourceType::GpuClass,
            _ => continue,
        };
        if stack.get(&Address::new(owned, &r.address.name)).is_some() {
            return Err(StackError::Invalid {
                location: r.location.clone(),
                field: r.address.to_string(),
                message: format!(
                    "[{GPU_NODES_TABLE}.{0}] creates this object, and [{1}.{0}] would patch it",
                    r.address.name,
                    r.address.kind.as_str()
                ),
                help: Some(format!(
                    "set empty_ttl and storage in [{GPU_NODES_TABLE}.{}] and drop this table",
                    r.address.name
                )),
            });
        }
    }
    Ok(())
}
