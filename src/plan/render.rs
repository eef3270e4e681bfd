//! How a plan reads: Terraform's habits (one line per resource, a diff under
//! it, a summary line), and a JSON form for machines.

use std::fmt::Write as _;

use super::{Action, Change, Op, Plan};
use crate::util::Paint;

#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions {
    pub color: bool,
}

fn headline(c: &Change) -> Option<(&'static str, String)> {
    let what = if c.kind.is_empty() {
        String::new()
    } else {
        match &c.namespace {
            Some(ns) => format!(" ({} {} {ns}/{})", c.api_version, c.kind, c.name),
            None => format!(" ({} {} {})", c.api_version, c.kind, c.name),
        }
    };
    let (sym, verb) = match c.action() {
        Action::Create => ("+", "will be created"),
        Action::Update => ("~", "will be updated in place"),
        Action::Delete => ("-", "will be deleted"),
        Action::Patch => ("~", "will be patched"),
        Action::Revert => ("<", "will be reverted to its original values"),
        Action::Wait => (">", "will wait"),
        Action::Forget => ("x", "will be removed from state (nothing left to revert)"),
        Action::NoOp => return None,
    };
    let line = match &c.op {
        Op::Wait(w) => format!(
            "{} will wait until rayservice.{} serves {} (timeout {}){}",
            c.address,
            w.wait.rayservice,
            w.wait.path,
            crate::util::format_duration(w.wait.timeout),
            w.probe
                .as_ref()
                .map(|p| format!(
                    ", probing {} {}{}",
                    p.request.method,
                    p.request.path,
                    p.model
                        .as_ref()
                        .map(|m| format!(" (model {m})"))
                        .unwrap_or_default()
                ))
                .unwrap_or_default()
        ),
        _ => match c.released_to() {
            Some(holders) => format!(
                "{} will be released{what}: stack {holders} still holds it, so its values stay",
                c.address
            ),
            None => format!("{} {verb}{what}", c.address),
        },
    };
    Some((sym, line))
}

/// The plan as the terminal shows it, Terraform's layout top to bottom.
/// Long on purpose: the sections follow each other as they print, so the
/// output reads off the function.
pub fn render_text(plan: &Plan, options: RenderOptions) -> String {
    let p = Paint(options.color);
    let mut out = String::new();
    let target = plan.cluster.context.as_ref().map_or_else(
        || plan.cluster.server.clone(),
        |c| format!("{} (context {c})", plan.cluster.server),
    );
    let _ = writeln!(out, "Stack {} on {target}", p.bold(&plan.stack));
    if let Some(k) = &plan.karpenter {
        let _ = writeln!(out, "Karpenter API: {k}");
    }
    let _ = writeln!(out);
    let visible: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action() != Action::NoOp || !c.reasons.is_empty() || c.error().is_some())
        .collect();
    for c in &visible {
        let Some((sym, line)) =
            headline(c).or_else(|| Some(("=", format!("{} has no changes", c.address))))
        else {
            continue;
        };
        let sym = match c.action() {
            Action::Create => p.green(sym),
            Action::Delete | Action::Forget => p.red(sym),
            Action::Revert | Action::Patch | Action::Update => p.yellow(sym),
            _ => p.cyan(sym),
        };
        let _ = writeln!(out, "  {sym} {}", p.bold(&line));
        for r in &c.reasons {
            let _ = writeln!(out, "      ({r})");
        }
        if let Some(rollout) = c.write().and_then(|w| w.rollout.as_ref()) {
            let _ = writeln!(out, "      ({})", rollout.describe());
        }
        if let Some(d) = c.outside_diff() {
            let _ = writeln!(out, "      changed outside rayform since the last apply:");
            write_diff(&mut out, d, p);
        }
        if let Some(d) = c.diff() {
            write_diff(&mut out, d, p);
        }
        if let Some(e) = c.error() {
            // Its help line stays under it, not out at the changes' depth.
            let e = e.replace('\n', "\n      ");
            let _ = writeln!(out, "      {} {e}", p.red("error:"));
        }
    }
    if visible.is_empty() || !plan.has_changes() {
        let _ = writeln!(out, "No changes. The cluster matches the stack.");
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "\n{} {w}", p.yellow("Warning:"));
    }
    // A change's error is shown under it already: once is enough.
    let shown: Vec<String> = visible
        .iter()
        .filter_map(|c| Some(format!("{}: {}", c.address, c.error()?)))
        .collect();
    for e in plan.errors.iter().filter(|e| !shown.contains(e)) {
        let _ = writeln!(out, "\n{} {e}", p.red("Error:"));
    }
    let s = plan.summary();
    let mut line = if plan.destroy {
        format!("Plan: {} to destroy, {} to revert.", s.destroy, s.revert)
    } else {
        format!(
            "Plan: {} to add, {} to change, {} to destroy, {} to patch.",
            s.add, s.change, s.destroy, s.patch
        )
    };
    if !plan.destroy && s.revert > 0 {
        line.pop();
        let _ = write!(line, ", {} to revert.", s.revert);
    }
    if s.release > 0 {
        line.pop();
        let _ = write!(line, ", {} to release.", s.release);
    }
    if s.forget > 0 {
        line.pop();
        let _ = write!(line, ", {} to forget.", s.forget);
    }
    let _ = writeln!(out, "\n{}", p.bold(&line));
    out
}

fn write_diff(out: &mut String, diff: &str, p: Paint) {
    for l in diff.lines() {
        let colored = if l.starts_with("+++") || l.starts_with("---") {
            p.bold(l)
        } else if l.starts_with('+') {
            p.green(l)
        } else if l.starts_with('-') {
            p.red(l)
        } else if l.starts_with("@@") {
            p.cyan(l)
        } else {
            l.to_string()
        };
        let _ = writeln!(out, "        {colored}");
    }
}

/// The machine-readable plan: the saved-plan format plus a summary.
pub fn render_json(plan: &Plan) -> String {
    let mut v = serde_json::to_value(plan).unwrap_or_default();
    v["summary"] = serde_json::to_value(plan.summary()).unwrap_or_default();
    v["has_changes"] = serde_json::Value::Bool(plan.has_changes());
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
