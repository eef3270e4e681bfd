//! `rayform state list|show|rm`: what Terraform users reach for to see and
//! correct what rayform tracks, without touching the cluster.

use std::fmt::Write as _;

use rayform::stack::Address;
use rayform::state::{self, ResourceState, State, lock::StateLock};

use super::args::{Global, StateCommand};
use super::output::Out;
use super::{Error, load};

pub fn run(command: &StateCommand, g: &Global, out: &Out) -> Result<u8, Error> {
    match command {
        StateCommand::List { stack } => {
            let state = read(stack, g)?;
            for address in state.resources.keys() {
                out.line(&address.to_string());
            }
        }
        StateCommand::Show { stack, address } => {
            let state = read(stack, g)?;
            let address = parse(address)?;
            let Some(recorded) = state.resources.get(&address) else {
                return Err(state::StateError::NotTracked(vec![address.to_string()]).into());
            };
            out.raw(&describe(&address, recorded));
        }
        StateCommand::Rm { stack, addresses } => {
            let s = load(stack, g)?;
            let _lock = StateLock::acquire(&s.state_path, "state rm")?;
            let mut state = existing(&s.state_path)?;
            let addresses = addresses
                .iter()
                .map(|a| parse(a))
                .collect::<Result<Vec<_>, _>>()?;
            let removed = state.forget(&addresses)?;
            state::store::save(&s.state_path, &mut state)?;
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
    }
    Ok(0)
}

fn read(stack: &std::path::Path, g: &Global) -> Result<State, Error> {
    existing(&load(stack, g)?.state_path)
}

fn existing(path: &std::path::Path) -> Result<State, Error> {
    state::store::load(path)?.ok_or_else(|| {
        format!(
            "no state at {}: nothing has been applied with this stack yet",
            path.display()
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
        let applied = serde_json::to_string_pretty(&r.applied).unwrap_or_default();
        let _ = writeln!(text, "applied:\n{applied}");
    }
    text
}
