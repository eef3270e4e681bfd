//! The command line: turns arguments into calls on the library and results
//! into output and exit codes. Everything the user sees is printed here.

mod args;
mod commands;
mod output;
mod state_cmd;

use std::collections::BTreeSet;
use std::io::{BufRead as _, IsTerminal as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory as _, Parser as _};

use rayform::apply::{self, ApplyOptions, Event, SecretValues, Stop};
use rayform::backend::{Backend, Lock};
use rayform::cluster::{Cluster, ConnectOptions};
use rayform::desired::{self, Secrets};
use rayform::graph::Graph;
use rayform::observe::{self, Mode, ObserveOptions};
use rayform::plan::{self, Plan, PlanOptions};
use rayform::stack::StateLocation;
use rayform::stack::{self, Address, ResourceSpec, Stack};
use rayform::state::State;

use args::{Cli, Command, Global, RunArgs, Take};
use output::Out;

/// An error already worth showing to the user as it is.
type Error = Box<dyn std::error::Error>;

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Exit 2 means "changes present" to `plan --detailed-exitcode`
        // users, so a usage error exits 1, as Terraform's do; --help and
        // --version are answers, not errors.
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::from(e.use_stderr()));
        }
    };
    let color = if cli.global.no_color {
        args::ColorWhen::Never
    } else {
        cli.global.color
    };
    let out = Out::new(color, cli.global.verbose);
    if let Err(e) = output::init_logs(cli.global.verbose, out.color_err()) {
        out.error(&e);
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            out.error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let stop = Stop::default();
    let outcome = runtime.block_on(async {
        let run = run(cli, &out, &stop);
        tokio::pin!(run);
        let outcome = tokio::select! {
            result = &mut run => Ok(result),
            (name, code) = interrupted() => {
                // As Terraform: the first signal lets the changes in flight
                // finish and be recorded; a second one stops at once.
                out.error(&format!(
                    "{name}: stopping once the changes in flight are done (again to stop at once)"
                ));
                stop.request();
                tokio::select! {
                    result = &mut run => Err((name, code, Some(result))),
                    _ = interrupted() => Err((name, code, None)),
                }
            }
        };
        // The run is over (or dropped): a Lease it held is being given up.
        rayform::backend::kubernetes::settle(std::time::Duration::from_secs(3)).await;
        outcome
    });
    match outcome {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(e)) => {
            out.error(&with_snippet(e.as_ref()));
            ExitCode::from(1)
        }
        Err((name, code, finished)) => {
            out.error(&match finished {
                Some(Err(e)) => format!("interrupted by {name}: {e}"),
                Some(Ok(_)) => format!("interrupted by {name}, after the run had done its work"),
                // Dropping the run released the state lock; every state write
                // before this point was complete (an atomic rename, a journal
                // line ending in a newline, or a whole Secret), and the next
                // run reads them all.
                None => format!(
                    "interrupted by {name} twice: stopped at once; what completed is recorded in the state; run the same command again to continue"
                ),
            });
            ExitCode::from(code)
        }
    }
}

/// A stack error with the line it points at under its first line (the
/// `file:line:col:` line stays first, for editors and grep).
fn with_snippet(e: &(dyn std::error::Error + 'static)) -> String {
    let text = e.to_string();
    let location = match e.downcast_ref::<stack::StackError>() {
        Some(e) => e.location(),
        None => e
            .downcast_ref::<rayform::graph::GraphError>()
            .map(rayform::graph::GraphError::location),
    };
    let snippet = location.and_then(stack::Location::snippet);
    match (snippet, text.split_once('\n')) {
        (Some(s), Some((first, rest))) => format!("{first}\n{s}\n{rest}"),
        (Some(s), None) => format!("{text}\n{s}"),
        (None, _) => text,
    }
}

/// The first of Ctrl-C (exit 130) or SIGTERM (exit 143), as shells report them.
async fn interrupted() -> (&'static str, u8) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => ("Ctrl-C", 130),
        _ = term.recv() => ("SIGTERM", 143),
    }
}

async fn run(cli: Cli, out: &Out, stop: &Stop) -> Result<u8, Error> {
    let g = &cli.global;
    match cli.command {
        Command::Validate { stack } => {
            let s = load(&stack, g)?;
            Graph::build(&s)?;
            out.line(&format!(
                "{}: valid ({} resources)",
                stack.display(),
                s.resources.len()
            ));
            Ok(0)
        }
        Command::Graph { stack, destroy } => {
            let s = load(&stack, g)?;
            out.raw(&Graph::build(&s)?.to_dot(destroy));
            Ok(0)
        }
        Command::Init { stack } => state_cmd::init(&stack, g, out).await,
        Command::Plan(args) => commands::plan(args, g, out).await,
        Command::Apply(args) => commands::apply(args, g, out, stop).await,
        Command::Destroy(args) => commands::destroy(args, g, out, stop).await,
        Command::State(command) => state_cmd::run(&command, g, out).await,
        Command::Show { plan: path, json } => {
            let plan = read_plan(&path)?;
            if json {
                out.raw(&(plan::render_json(&plan) + "\n"));
            } else {
                out.raw(&plan::render_text(&plan, out.render_options()));
            }
            Ok(0)
        }
        Command::Import { stack, address } => import(&stack, &address, g, out).await,
        Command::Doctor { stack, json } => doctor(stack.as_deref(), json, g, out).await,
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "rayform", &mut buf);
            out.raw(&String::from_utf8_lossy(&buf));
            Ok(0)
        }
        Command::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
            out.raw(&String::from_utf8_lossy(&buf));
            Ok(0)
        }
        Command::ForceUnlock { stack, lock_id } => {
            let s = load(&stack, g)?;
            let info = backend_for(&s.state, g, out)
                .await?
                .force_unlock(&lock_id, &|m| out.note(m))
                .await?;
            out.line(&format!("Lock {} (held by {}) is broken. The next run will repair what that run left half done.", info.id, info.operation));
            Ok(0)
        }
    }
}

/// `rayform import`: records one existing object in the state, under the lock.
async fn import(stack: &Path, address: &str, g: &Global, out: &Out) -> Result<u8, Error> {
    let Opened {
        stack: s,
        backend,
        lock,
        mut state,
        cluster,
        ..
    } = open(stack, g, "import", out).await?;
    let address = Address::parse(address)
        .ok_or_else(|| format!("`{address}` is not an address like secret.hf-token"))?;
    if state.resources.contains_key(&address) {
        return Err(format!("{address} is already in the state; nothing to import").into());
    }
    let desired = desired::render(&s, &state.fingerprint_key, &state.lineage, Secrets::Skip)?;
    let want = match desired.get(&address) {
        Some(desired::Desired::Object(o)) => o,
        Some(_) => {
            return Err(format!("{address}: only objects rayform creates (secret, rayservice, manifest) can be imported; Karpenter objects are patched, not owned").into());
        }
        None => return Err(format!("{address} is not in {}", s.file.display()).into()),
    };
    let entry = apply::import(&cluster, &address, want, &state).await?;
    let uid = entry.uid.clone().unwrap_or_default();
    state.released.remove(&address);
    state.resources.insert(address.clone(), entry);
    if state.cluster.is_none() {
        state.cluster = Some(cluster.id.clone());
    }
    backend.save(&mut state, &lock).await?;
    out.line(&format!("Imported {address} (uid {uid}). Run `rayform plan` to see what apply would change to match the stack."));
    Ok(0)
}

/// What plan, apply and destroy all start from: the stack and its graph,
/// the state under its lock, and a connection to the cluster it belongs to.
struct Opened {
    stack: Stack,
    graph: Graph,
    backend: Backend,
    lock: Lock,
    state: State,
    /// No state existed yet.
    new: bool,
    cluster: Cluster,
}

async fn open(path: &Path, g: &Global, operation: &str, out: &Out) -> Result<Opened, Error> {
    let stack = load(path, g)?;
    let graph = Graph::build(&stack)?;
    let cluster = connect(g, out).await?;
    let backend = Backend::open(&stack.state, Some(&cluster))?;
    let lock = backend.lock(operation, &|m| out.note(m)).await?;
    let (state, new) = load_state(&backend, &stack).await?;
    check_cluster(&state, &cluster)?;
    Ok(Opened {
        stack,
        graph,
        backend,
        lock,
        state,
        new,
        cluster,
    })
}

fn load(path: &Path, g: &Global) -> Result<Stack, Error> {
    Ok(stack::load(path, &g.state_override())?)
}

/// The backend at `location`; connects to the cluster only if the state is kept there.
async fn backend_for(location: &StateLocation, g: &Global, out: &Out) -> Result<Backend, Error> {
    let cluster = match location {
        StateLocation::File { .. } => None,
        StateLocation::Kubernetes { .. } => Some(connect(g, out).await?),
    };
    Ok(Backend::open(location, cluster.as_ref())?)
}

async fn load_state(backend: &Backend, s: &Stack) -> Result<(State, bool), Error> {
    match backend.load().await? {
        Some(st) if st.stack != s.name => Err(format!(
            "the state at {} belongs to stack `{}`, not `{}`\n  help: give each stack its own state (--state, or `state` in [stack])",
            s.state, st.stack, s.name
        )
        .into()),
        Some(st) => Ok((st, false)),
        None => Ok((State::new(&s.name), true)),
    }
}

async fn doctor(
    stack: Option<&std::path::Path>,
    json: bool,
    g: &Global,
    out: &Out,
) -> Result<u8, Error> {
    let stack = stack.map(|p| load(p, g)).transpose()?;
    let report = match connect(g, out).await {
        Ok(cluster) => rayform::doctor::examine(&cluster, stack.as_ref()).await,
        Err(e) => rayform::doctor::Report::unreachable(e.to_string()),
    };
    if json {
        out.raw(&(report.render_json() + "\n"));
    } else {
        out.raw(&report.render_text(out.render_options().color));
    }
    Ok(u8::from(report.blocked()))
}

async fn connect(g: &Global, out: &Out) -> Result<Cluster, Error> {
    let started = std::time::Instant::now();
    let cluster = Cluster::connect(&ConnectOptions {
        kubeconfig: g.kubeconfig.clone(),
        context: g.context.clone(),
    })
    .await?;
    out.debug(&format!(
        "connected to {} and read discovery in {:?}",
        cluster.id.server,
        started.elapsed()
    ));
    Ok(cluster)
}

fn check_cluster(state: &State, cluster: &Cluster) -> Result<(), Error> {
    match &state.cluster {
        Some(c) if !state.resources.is_empty() && c.server != cluster.id.server => Err(format!(
            "the state was written against {}, but this kubeconfig context points at {}\n  help: choose the right cluster with --context",
            c.server, cluster.id.server
        )
        .into()),
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn make_plan(
    s: &Stack,
    graph: &Graph,
    state: &State,
    new: bool,
    cluster: &Cluster,
    take: &Take,
    destroy: bool,
    force: bool,
    out: &Out,
) -> Result<Plan, Error> {
    let started = std::time::Instant::now();
    let secrets = if destroy {
        Secrets::Skip
    } else {
        Secrets::Require
    };
    let desired = desired::render(s, &state.fingerprint_key, &state.lineage, secrets)?;
    let mode = if destroy { Mode::Destroy } else { Mode::Apply };
    let world = observe::observe(
        cluster,
        s,
        &desired,
        state,
        mode,
        &ObserveOptions {
            force,
            dry_run: take.dry_run_policy(),
        },
    )
    .await?;
    out.debug(&format!(
        "observed the cluster in {:?} with {} API requests (after discovery)",
        started.elapsed(),
        cluster.requests()
    ));
    let mut adopt = BTreeSet::new();
    for a in &take.adopt {
        adopt.insert(
            Address::parse(a)
                .ok_or_else(|| format!("--adopt {a}: not an address like secret.hf-token"))?,
        );
    }
    let options = PlanOptions {
        destroy,
        force_conflicts: take.force_conflicts,
        adopt,
    };
    Ok(plan::build(
        s, graph, &desired, state, new, &world, &options,
    ))
}

fn read_secrets(s: &Stack) -> Result<SecretValues, Error> {
    let mut values = SecretValues::new();
    for r in &s.resources {
        if let ResourceSpec::Secret(spec) = &r.spec {
            values.insert(
                r.address.clone(),
                rayform::secret::read(&r.address, &spec.data)?,
            );
        }
    }
    Ok(values)
}

fn confirm(auto_approve: bool, verb: &str, out: &Out) -> Result<bool, Error> {
    if auto_approve {
        return Ok(true);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        out.line(&format!("\nrayform {verb} needs confirmation, but standard input is not a terminal.\n  help: review the plan above and pass --auto-approve"));
        return Ok(false);
    }
    out.line(&format!(
        "\nDo you want to {verb} these changes?\n  Only 'yes' will be accepted to approve.\n"
    ));
    out.prompt("  Enter a value: ");
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() == "yes" {
        Ok(true)
    } else {
        out.line(&format!(
            "\n{} cancelled.",
            if verb == "apply" { "Apply" } else { "Destroy" }
        ));
        Ok(false)
    }
}

/// How a plan is carried out: apply's and destroy's flags, and the request to stop.
struct Execution<'a> {
    run: &'a RunArgs,
    wait: bool,
    endpoint: Option<String>,
    stop: &'a Stop,
}

async fn execute(
    cluster: &Cluster,
    plan: &Plan,
    state: State,
    store: (&Backend, &Lock),
    secrets: SecretValues,
    how: Execution<'_>,
    out: &Out,
) -> Result<u8, Error> {
    let printer = out.clone();
    let options = ApplyOptions {
        parallelism: how.run.parallelism,
        wait: how.wait,
        delete_timeout: how.run.delete_timeout,
        endpoint: how.endpoint,
        progress: Arc::new(move |e: Event| printer.progress(&e.address.to_string(), &e.message)),
        stop: how.stop.clone(),
    };
    out.line("");
    let (_state, result) = apply::apply(cluster, plan, state, store, secrets, options).await;
    let report = result?;
    let s = plan.summary();
    if plan.destroy {
        out.line(&format!(
            "\nDestroy complete! Resources: {} destroyed, {} reverted.",
            s.destroy, s.revert
        ));
    } else {
        out.line(&format!(
            "\nApply complete! Resources: {} added, {} changed, {} destroyed, {} patched.",
            s.add, s.change, s.destroy, s.patch
        ));
        for r in &report.ready {
            out.line(&r.to_string());
        }
    }
    Ok(0)
}

/// A plan saved with `plan --out`, refused if another rayform wrote its format.
fn read_plan(path: &Path) -> Result<Plan, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read plan file {}: {e}", path.display()))?;
    let plan: Plan = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a rayform plan: {e}", path.display()))?;
    if plan.format_version != plan::FORMAT_VERSION {
        return Err(format!(
            "{} has plan format {}; this rayform reads {}",
            path.display(),
            plan.format_version,
            plan::FORMAT_VERSION
        )
        .into());
    }
    Ok(plan)
}

fn is_plan_file(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{'))
}

fn save_plan(plan: &Plan, path: &PathBuf) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(plan)?;
    let mut tmp = tempfile::NamedTempFile::new_in(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

async fn apply_saved(path: &Path, g: &Global, how: Execution<'_>, out: &Out) -> Result<u8, Error> {
    let plan = read_plan(path)?;
    let location = match &g.state {
        Some(path) => StateLocation::File { path: path.clone() },
        None => plan.state.clone(),
    };
    let cluster = connect(g, out).await?;
    let backend = Backend::open(&location, Some(&cluster))?;
    let lock = backend.lock("apply", &|m| out.note(m)).await?;
    // `plan --out` needs a state (made by `init`), so a missing one was removed since.
    let Some(state) = backend.load().await? else {
        return Err(format!(
            "the state {} was made from is gone from {location}\n  help: run `rayform init` and `rayform plan --out` again",
            path.display()
        )
        .into());
    };
    if !plan.errors.is_empty() || plan.changes.iter().any(|c| c.error().is_some()) {
        return Err(format!(
            "{} is a plan with errors; it cannot be applied",
            path.display()
        )
        .into());
    }
    apply::check_fresh(&cluster, &plan, &state).await?;
    // Secret values are not in the plan: read them again from where the stack says.
    let secrets = if plan
        .changes
        .iter()
        .filter_map(plan::Change::write)
        .any(|w| !w.payload.secret_fingerprints.is_empty())
    {
        read_secrets(&load(&plan.stack_file, g)?)?
    } else {
        SecretValues::new()
    };
    out.raw(&plan::render_text(&plan, out.render_options()));
    execute(&cluster, &plan, state, (&backend, &lock), secrets, how, out).await
}
