//! `rayform init` and `rayform state list|show|mv|rm|pull|push|restore`:
//! the operations are `rayform::ops::state`; this says what they did.

use std::fmt::Write as _;
use std::path::Path;

use rayform::ops::state::{self as ops_state, Initialized};
use rayform::stack::Address;
use rayform::state::{ResourceState, StateError};

use super::Error;
use super::args::{Global, StateCommand};
use super::output::Out;

pub async fn run(command: &StateCommand, g: &Global, out: &Out) -> Result<u8, Error> {
    match command {
        StateCommand::List { stack } => {
            let state = ops_state::read(&g.place(stack), out).await?;
            // Sorted as text, as `terraform state list` prints them.
            let mut addresses: Vec<String> =
                state.resources.keys().map(ToString::to_string).collect();
            addresses.sort();
            for address in addresses {
                out.line(&address);
            }
        }
        StateCommand::Show { stack, address } => {
            let address = ops_state::address(address)?;
            let state = ops_state::read(&g.place(stack), out).await?;
            let Some(recorded) = state.resources.get(&address) else {
                let e = StateError::NotTracked(vec![address.to_string()]);
                return Err(ops_state::listed(e).into());
            };
            out.raw(&describe(&address, recorded));
        }
        StateCommand::Rm { stack, addresses } => {
            let removed = ops_state::forget(&g.place(stack), addresses, out).await?;
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
        StateCommand::Mv { stack, from, to } => {
            let (from, to) = ops_state::rename(&g.place(stack), from, to, out).await?;
            out.line(&format!(
                "Moved {from} to {to}: the state records the object under its new address; the cluster was not touched."
            ));
        }
        StateCommand::Pull { stack } => {
            let state = ops_state::read(&g.place(stack), out).await?;
            out.raw(&(serde_json::to_string_pretty(&state)? + "\n"));
        }
        StateCommand::Push { stack, file, force } => push(stack, file, *force, g, out).await?,
        StateCommand::Restore { stack } => {
            let (s, restored, backup) = ops_state::restore(&g.place(stack), out).await?;
            out.line(&format!(
                "Restored the state at {} from {backup}: serial {} ({} resources), stored as serial {}.",
                s.state, restored.from, restored.resources, restored.serial
            ));
        }
    }
    Ok(0)
}

/// Creates the stack's empty state where the stack keeps it, so that a plan
/// can be saved against it without `plan` writing anything.
pub async fn init(stack: &Path, g: &Global, out: &Out) -> Result<u8, Error> {
    match ops_state::init(&g.place(stack), out).await? {
        (s, Initialized::Existed(current)) => out.line(&format!(
            "The state of stack `{}` already exists at {} (lineage {}, serial {}); nothing to do.",
            s.name, s.state, current.lineage, current.serial
        )),
        (s, Initialized::Created(state)) => out.line(&format!(
            "Created the state of stack `{}` at {} (lineage {}).",
            s.name, s.state, state.lineage
        )),
    }
    Ok(0)
}

/// `state push FILE` (or `-`, standard input), as `terraform state push`.
async fn push(stack: &Path, file: &Path, force: bool, g: &Global, out: &Out) -> Result<(), Error> {
    let text = read_input(file)?;
    let file = if file == Path::new("-") {
        "standard input".to_string()
    } else {
        file.display().to_string()
    };
    let (s, pushed) = ops_state::push(&g.place(stack), (&text, &file), force, out).await?;
    out.line(&format!(
        "Pushed {} ({} resources, serial {}) to {}.",
        file,
        pushed.resources.len(),
        pushed.serial,
        s.state
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
