//! `rayform init` and `rayform state list|show|mv|rm|pull|push|restore`:
//! what Terraform users reach for to create, see and correct what rayform
//! tracks, to move a state between backends, and to go back to the backup
//! kept before the last write, without touching anything else in the cluster.

use std::fmt::Write as _;
use std::path::Path;

use rayform::backend::Backend;
use rayform::stack::{Address, Stack};
use rayform::state::{self, ResourceState, State};

use super::args::{Global, StateCommand};
use super::output::Out;
use super::{Error, backend_for, load, lock, read_state, suggest};

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
            let address = parse(address, stack, g)?;
            let Some(recorded) = state.resources.get(&address) else {
                let e = state::StateError::NotTracked(vec![address.to_string()]);
                return Err(listed(e, stack, g));
            };
            out.raw(&describe(&address, recorded));
        }
        StateCommand::Rm { stack, addresses } => {
            let s = load(stack, g)?;
            let backend = backend_for(&s.state, g).await?;
            let lock = lock(&backend, "state rm", out).await?;
            let mut state = existing(&backend, &s, out).await?;
            let addresses = addresses
                .iter()
                .map(|a| parse(a, stack, g))
                .collect::<Result<Vec<_>, _>>()?;
            let removed = state.forget(&addresses).map_err(|e| listed(e, stack, g))?;
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
        StateCommand::Mv { stack, from, to } => mv(stack, from, to, g, out).await?,
        StateCommand::Pull { stack } => {
            let state = read(stack, g, out).await?;
            out.raw(&(serde_json::to_string_pretty(&state)? + "\n"));
        }
        StateCommand::Push { stack, file, force } => push(stack, file, *force, g, out).await?,
        StateCommand::Restore { stack } => restore(stack, g, out).await?,
    }
    Ok(0)
}

/// Creates the stack's empty state where the stack keeps it, so that a plan
/// can be saved against it without `plan` writing anything.
pub async fn init(stack: &Path, g: &Global, out: &Out) -> Result<u8, Error> {
    let s = load(stack, g)?;
    let backend = backend_for(&s.state, g).await?;
    let lock = lock(&backend, "init", out).await?;
    if let Some(current) = read_state(&backend, out).await? {
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
    let mut state = State::new(&s.name)?;
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
    let text = read_input(file)?;
    let file = if file == Path::new("-") {
        "standard input".to_string()
    } else {
        file.display().to_string()
    };
    let mut pushed = state::store::decode(&text).map_err(|e| match e {
        state::store::Decoded::Corrupt(m) => {
            format!("{} is not a rayform state: {m}", file)
        }
        state::store::Decoded::Version(v) => format!(
            "{} has state format_version {v}; this rayform reads {}",
            file,
            state::FORMAT_VERSION
        ),
    })?;
    let s = load(stack, g)?;
    if pushed.stack != s.name {
        return Err(format!(
            "{} is the state of stack `{}`, not `{}`",
            file, pushed.stack, s.name
        )
        .into());
    }
    let backend = backend_for(&s.state, g).await?;
    let lock = lock(&backend, "state push", out).await?;
    let current = match read_state(&backend, out).await {
        Ok(current) => current,
        // A state that does not read is what a forced push replaces.
        Err(e) if force => {
            out.warn(&format!("replacing a state that does not read: {e}"));
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(current) = current {
        if current.lineage != pushed.lineage && !force {
            return Err(format!("the state at {} has lineage {}, {} has {}: they are not the same state\n  help: pass --force to replace it anyway", s.state, current.lineage, file, pushed.lineage).into());
        }
        if current.serial > pushed.serial && !force {
            return Err(format!("the state at {} has serial {}, newer than {} in {}\n  help: pull it again, or pass --force to replace it anyway", s.state, current.serial, pushed.serial, file).into());
        }
        pushed.serial = pushed.serial.max(current.serial);
    }
    backend.save(&mut pushed, &lock).await?;
    out.line(&format!(
        "Pushed {} ({} resources, serial {}) to {}.",
        file,
        pushed.resources.len(),
        pushed.serial,
        s.state
    ));
    Ok(())
}

/// Puts back the backup the last command that wrote the state kept (the
/// state as that command found it), under the lock; the backup stays.
async fn restore(stack: &Path, g: &Global, out: &Out) -> Result<(), Error> {
    let s = load(stack, g)?;
    let backend = backend_for(&s.state, g).await?;
    let lock = lock(&backend, "state restore", out).await?;
    let Some(restored) = backend.restore(&lock).await? else {
        return Err(format!(
            "no backup of the state at {}: there is no {}\n  help: a backup is kept from the first command that overwrites a state; state push stores a copy you kept (see `rayform state push --help`)",
            s.state,
            backend.backup_location()
        )
        .into());
    };
    out.line(&format!(
        "Restored the state at {} from {}: serial {} ({} resources), stored as serial {}.",
        s.state,
        backend.backup_location(),
        restored.from,
        restored.resources,
        restored.serial
    ));
    Ok(())
}

async fn read(stack: &Path, g: &Global, out: &Out) -> Result<State, Error> {
    let s = load(stack, g)?;
    existing(&backend_for(&s.state, g).await?, &s, out).await
}

async fn existing(backend: &Backend, s: &Stack, out: &Out) -> Result<State, Error> {
    read_state(backend, out).await?.ok_or_else(|| {
        format!(
            "no state at {}: nothing has been applied with this stack yet",
            s.state
        )
        .into()
    })
}

fn parse(address: &str, stack: &Path, g: &Global) -> Result<Address, Error> {
    Address::parse(address).ok_or_else(|| {
        format!("`{address}` is not an address\n  help: addresses look like rayservice.mistral-7b or nodepool.default (see `{}`)", list_command(stack, g)).into()
    })
}

/// A state error, with where to see what the state tracks when it is about
/// an address it does not.
fn listed(e: state::StateError, stack: &Path, g: &Global) -> Error {
    match e {
        state::StateError::NotTracked(_) => format!(
            "{e}\n  help: `{}` shows what it tracks",
            list_command(stack, g)
        )
        .into(),
        e => e.into(),
    }
}

fn list_command(stack: &Path, g: &Global) -> String {
    suggest::rayform(g, ["state", "list", &suggest::path(stack)])
}

/// `rayform state mv`: the entry of `from` recorded under `to`, as
/// Terraform's `state mv` after a rename; the object itself is not touched,
/// and the next plan shows what the stack wants of it under its new address.
async fn mv(stack: &Path, from: &str, to: &str, g: &Global, out: &Out) -> Result<(), Error> {
    let s = load(stack, g)?;
    let (from, to) = (parse(from, stack, g)?, parse(to, stack, g)?);
    let backend = backend_for(&s.state, g).await?;
    let lock = lock(&backend, "state mv", out).await?;
    let mut state = existing(&backend, &s, out).await?;
    state.rename(&from, &to).map_err(|e| listed(e, stack, g))?;
    backend.save(&mut state, &lock).await?;
    out.line(&format!(
        "Moved {from} to {to}: the state records the object under its new address; the cluster was not touched."
    ));
    Ok(())
}

/// The text of `file`, or of standard input for `-` (as `terraform state push -`).
fn read_input(file: &Path) -> Result<String, Error> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
            .map_err(|e| format!("cannot read the state from standard input: {e}"))?;
        return Ok(text);
    }
    std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()).into())
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
