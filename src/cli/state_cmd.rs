//! `rayform init` and `rayform state list|show|rm|pull|push`: what Terraform
//! users reach for to create, see and correct what rayform tracks, and to move
//! a state between backends, without touching anything else in the cluster.

use std::fmt::Write as _;
use std::path::Path;

use rayform::backend::Backend;
use rayform::stack::{Address, Stack};
use rayform::state::{self, ResourceState, State};

use super::args::{Global, StateCommand};
use super::output::Out;
use super::{Error, backend_for, load};

pub async fn run(command: &StateCommand, g: &Global, out: &Out) -> Result<u8, Error> {
    match command {
        StateCommand::List { stack } => {
            let state = read(stack, g, out).await?;
            for address in state.resources.keys() {
                out.line(&address.to_string());
            }
        }
        StateCommand::Show { stack, address } => {
            let state = read(stack, g, out).await?;
            let address = parse(address)?;
            let Some(recorded) = state.resources.get(&address) else {
                return Err(state::StateError::NotTracked(vec![address.to_string()]).into());
            };
            out.raw(&describe(&address, recorded));
        }
        StateCommand::Rm { stack, addresses } => {
            let s = load(stack, g)?;
            let backend = backend_for(&s.state, g, out).await?;
            let lock = backend.lock("state rm", &|m| out.note(m)).await?;
            let mut state = existing(&backend, &s).await?;
            let addresses = addresses
                .iter()
                .map(|a| parse(a))
                .collect::<Result<Vec<_>, _>>()?;
            let removed = state.forget(&addresses)?;
            backend.save(&mut state, &lock).await?;
            for (address, recorded) in &removed {
                out.line(&format!("Removed {address}: the object stays in the cluster, and rayform no longer manages it."));
                if recorded.patch.is_some() {
                    out.warn(&format!("{address}: the original values rayform recorded are gone from the state; the object's own rayform.io annotations still hold them"));
                }
            }
            out.line(&format!(
                "Successfully removed {} resource(s).",
                removed.len()
            ));
        }
        StateCommand::Pull { stack } => {
            let state = read(stack, g, out).await?;
            out.raw(&(serde_json::to_string_pretty(&state)? + "\n"));
        }
        StateCommand::Push { stack, file, force } => push(stack, file, *force, g, out).await?,
    }
    Ok(0)
}

/// Creates the stack's empty state where the stack keeps it, so that a plan
/// can be saved against it without `plan` writing anything.
pub async fn init(stack: &Path, g: &Global, out: &Out) -> Result<u8, Error> {
    let s = load(stack, g)?;
    let backend = backend_for(&s.state, g, out).await?;
    let lock = backend.lock("init", &|m| out.note(m)).await?;
    if let Some(current) = backend.load().await? {
        if current.stack != s.name {
            return Err(format!(
                "the state at {} belongs to stack `{}`, not `{}`\n  help: give each stack its own state (--state, or `state` in [stack])",
                s.state, current.stack, s.name
            )
            .into());
        }
        out.line(&format!(
            "The state of stack `{}` already exists at {} (lineage {}, serial {}); nothing to do.",
            s.name, s.state, current.lineage, current.serial
        ));
        return Ok(0);
    }
    let mut state = State::new(&s.name);
    backend.save(&mut state, &lock).await?;
    out.line(&format!(
        "Created the state of stack `{}` at {} (lineage {}).",
        s.name, s.state, state.lineage
    ));
    Ok(0)
}

/// Stores a state read from `file` where the stack keeps its state, refusing
/// (unless forced) what would lose track of objects: another stack's state,
/// another lineage, or an older serial than the one stored.
async fn push(stack: &Path, file: &Path, force: bool, g: &Global, out: &Out) -> Result<(), Error> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut pushed = state::store::decode(&text).map_err(|e| match e {
        state::store::Decoded::Corrupt(m) => {
            format!("{} is not a rayform state: {m}", file.display())
        }
        state::store::Decoded::Version(v) => format!(
            "{} has state format_version {v}; this rayform reads {}",
            file.display(),
            state::FORMAT_VERSION
        ),
    })?;
    let s = load(stack, g)?;
    if pushed.stack != s.name {
        return Err(format!(
            "{} is the state of stack `{}`, not `{}`",
            file.display(),
            pushed.stack,
            s.name
        )
        .into());
    }
    let backend = backend_for(&s.state, g, out).await?;
    let lock = backend.lock("state push", &|m| out.note(m)).await?;
    if let Some(current) = backend.load().await? {
        if current.lineage != pushed.lineage && !force {
            return Err(format!("the state at {} has lineage {}, {} has {}: they are not the same state\n  help: pass --force to replace it anyway", s.state, current.lineage, file.display(), pushed.lineage).into());
        }
        if current.serial > pushed.serial && !force {
            return Err(format!("the state at {} has serial {}, newer than {} in {}\n  help: pull it again, or pass --force to replace it anyway", s.state, current.serial, pushed.serial, file.display()).into());
        }
        pushed.serial = pushed.serial.max(current.serial);
    }
    backend.save(&mut pushed, &lock).await?;
    out.line(&format!(
        "Pushed {} ({} resources, serial {}) to {}.",
        file.display(),
        pushed.resources.len(),
        pushed.serial,
        s.state
    ));
    Ok(())
}

async fn read(stack: &Path, g: &Global, out: &Out) -> Result<State, Error> {
    let s = load(stack, g)?;
    existing(&backend_for(&s.state, g, out).await?, &s).await
}

async fn existing(backend: &Backend, s: &Stack) -> Result<State, Error> {
    backend.load().await?.ok_or_else(|| {
        format!(
            "no state at {}: nothing has been applied with this stack yet",
            s.state
        )
        .into()
    })
}

fn parse(address: &str) -> Result<Address, Error> {
    Address::parse(address).ok_or_else(|| {
        format!("`{address}` is not an address\n  help: addresses look like rayservice.mistral-7b or nodepool.default (see `rayform state list`)").into()
    })
}

/// What the state records for one address; secret data is only ever fingerprints there.
fn describe(address: &Address, r: &ResourceState) -> String {
    let mut text = format!("# {address}\n");
    let _ = writeln!(text, "kind:             {} ({})", r.kind, r.api_version);
    let _ = writeln!(text, "name:             {}", r.name);
    if let Some(ns) = &r.namespace {
        let _ = writeln!(text, "namespace:        {ns}");
    }
    if let Some(uid) = &r.uid {
        let _ = writeln!(text, "uid:              {uid}");
    }
    if let Some(rv) = &r.resource_version {
        let _ = writeln!(text, "resourceVersion:  {rv}");
    }
    if let Some(patch) = &r.patch {
        let _ = writeln!(text, "patched fields (original → written):");
        for (pointer, field) in &patch.fields {
            let written = rayform::state::FieldValue::Value(field.written.clone());
            let _ = writeln!(
                text,
                "  {pointer}: {} → {}",
                field.original.display(),
                written.display()
            );
        }
    }
    if !r.applied.is_null() {
        let applied = serde_json::to_string_pretty(&r.applied.value()).unwrap_or_default();
        let _ = writeln!(text, "applied:\n{applied}");
    }
    text
}
