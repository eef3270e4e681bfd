//! The command line: turns arguments into calls on the library and results
//! into output and exit codes. Everything the user sees is printed here.

mod args;
mod commands;
mod output;
mod state_cmd;
mod suggest;

use std::collections::BTreeSet;
use std::io::{BufRead as _, IsTerminal as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use rayform::apply::{self, ApplyOptions, Event, Readiness, SecretValues, Stop};
use rayform::backend::{Backend, BackendError, Lock};
use rayform::cluster::{Cluster, ConnectOptions};
use rayform::desired::{self, Secrets};
use rayform::graph::Graph;
use rayform::observe::{self, Mode, ObserveOptions};
use rayform::plan::{self, Plan, PlanOptions};
use rayform::readiness::{Connections, OnStuck};
use rayform::stack::StateLocation;
use rayform::stack::{self, Address, ResourceSpec, Stack};
use rayform::state::{State, StateError};

use args::{Cli, Command, Global, RunArgs, Take};
use output::Out;

/// An error already worth showing to the user as it is.
type Error = Box<dyn std::error::Error>;

pub fn main() -> ExitCode {
    let cli = match args::parse(std::env::args_os()) {
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
    let out = Out::new(color);
    if let Err(e) = output::init_logs(cli.global.verbose, out.color_err(), out.masks()) {
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
    // For the help lines of an error: the stack file and flags of this run.
    let (stack_file, global) = (
        cli.command.stack_file().map(Path::to_path_buf),
        cli.global.clone(),
    );
    let explain = |text: String| suggest::fill_stack(&text, stack_file.as_deref(), &global);
    let outcome = runtime.block_on(async {
        // Boxed so it can be dropped before the Leases are settled below: a
        // run stopped by a second signal gives its lock back when dropped.
        let mut run = Box::pin(run(cli, &out, &stop));
        let outcome = tokio::select! {
            result = &mut run => Ok(result),
            (name, code) = interrupted() => {
                INTERRUPTED_WITH.store(code, std::sync::atomic::Ordering::SeqCst);
                stop.request();
                if ASKING.load(std::sync::atomic::Ordering::SeqCst) {
                    // Nothing is in flight yet: the question ends, and with it the run.
                    Ok((&mut run).await)
                } else {
                    // As Terraform: the first signal lets the changes in flight
                    // finish and be recorded; a second one stops at once.
                    out.error(&format!(
                        "{name}: stopping once the changes in flight are done (again to stop at once)"
                    ));
                    tokio::select! {
                        result = &mut run => Err((name, code, Some(result))),
                        _ = interrupted() => Err((name, code, None)),
                    }
                }
            }
        };
        // The run is over (or stopped): a Lease it held is being given up.
        drop(run);
        rayform::backend::kubernetes::settle(std::time::Duration::from_secs(3)).await;
        outcome
    });
    // Whatever is still running (a watch, a port-forward, a connection) is
    // not waited for: the run is over, and what is left to print needs no task.
    runtime.shutdown_background();
    out.debug("the run is over; exiting");
    match outcome {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(e)) => {
            // A stack with several errors: each with its own source line.
            match e.downcast_ref::<stack::StackError>() {
                Some(e) => e
                    .each()
                    .into_iter()
                    .for_each(|e| out.error(&with_snippet(e))),
                None => out.error(&explain(with_snippet(e.as_ref()))),
            }
            ExitCode::from(1)
        }
        Err((name, code, finished)) => {
            out.error(&match finished {
                Some(Err(e)) => explain(format!("interrupted by {name}: {e}")),
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

/// The exit code of the signal that stopped the run (0 while none has).
static INTERRUPTED_WITH: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The code a run stopped by a signal exits with (130 if it is not known).
fn interrupt_code() -> u8 {
    match INTERRUPTED_WITH.load(std::sync::atomic::Ordering::SeqCst) {
        0 => 130,
        code => code,
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
                out.raw(&plan_text(&plan, out, g));
            }
            Ok(0)
        }
        Command::Import { stack, address } => import(&stack, &address, g, out).await,
        Command::Doctor { stack, json } => doctor(stack.as_deref(), json, g, out).await,
        Command::Status { stack, watch, json } => status(&stack, watch, json, g, out, stop).await,
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut args::command(), "rayform", &mut buf);
            out.raw(&String::from_utf8_lossy(&buf));
            Ok(0)
        }
        Command::Man { command } => man(&command, out),
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

/// `rayform man [COMMAND…]`: rayform's page, or the page of one of its
/// commands, which the main page names as `rayform-plan(1)` and so on.
fn man(words: &[String], out: &Out) -> Result<u8, Error> {
    let mut page = args::man_pages();
    for (i, word) in words.iter().enumerate() {
        page = page.find_subcommand(word).cloned().ok_or_else(|| {
            format!(
                "`{}` is not a rayform command\n  help: `rayform --help` lists them",
                words[..=i].join(" ")
            )
        })?;
    }
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    out.raw(&String::from_utf8_lossy(&buf));
    Ok(0)
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
    // The keys a Secret declares; their values are not needed to import it.
    let secret_keys: Vec<String> = s
        .resources
        .iter()
        .filter(|r| r.address == address)
        .filter_map(|r| match &r.spec {
            ResourceSpec::Secret(spec) => Some(spec.data.keys().cloned().collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    let entry = apply::import(&cluster, &address, want, &secret_keys, &state)
        .await
        .map_err(|e| match e {
            apply::ApplyError::NothingToImport { .. } => format!(
                "{e}\n  help: `{}` creates it",
                suggest::rayform(g, ["apply", &suggest::path(stack)])
            )
            .into(),
            e => Error::from(e),
        })?;
    let uid = entry.uid.clone().unwrap_or_default();
    state.released.remove(&address);
    state.resources.insert(address.clone(), entry);
    if state.cluster.is_none() {
        state.cluster = Some(cluster.id.clone());
    }
    backend.save(&mut state, held(&lock)?).await?;
    out.line(&format!(
        "Imported {address} (uid {uid}). Run `{}` to see what apply would change to match the stack.",
        suggest::rayform(g, ["plan", &suggest::path(stack)])
    ));
    Ok(0)
}

/// What plan, apply and destroy all start from: the stack and its graph,
/// the state under its lock, and a connection to the cluster it belongs to.
struct Opened {
    stack: Stack,
    graph: Graph,
    backend: Backend,
    /// None only for a plan of a stack whose state file does not exist:
    /// locking it would create `state/` and a lock file, and plan writes nothing.
    lock: Option<Lock>,
    state: State,
    /// No state existed yet.
    new: bool,
    cluster: Cluster,
}

/// The lock of a run that changes things (always taken for those).
fn held(lock: &Option<Lock>) -> Result<&Lock, Error> {
    lock.as_ref()
        .ok_or_else(|| "internal: the state was opened without its lock".into())
}

async fn open(path: &Path, g: &Global, operation: &str, out: &Out) -> Result<Opened, Error> {
    let stack = load(path, g)?;
    let graph = Graph::build(&stack)?;
    let cluster = connect(g, out).await?;
    let backend = Backend::open(&stack.state, Some(&cluster))?;
    let nothing_to_lock = match &stack.state {
        StateLocation::File { path } => operation == "plan" && !path.exists(),
        StateLocation::Kubernetes { .. } => false,
    };
    let lock = if nothing_to_lock {
        None
    } else {
        Some(lock(&backend, operation, path, g, out).await?)
    };
    let (state, new) = load_state(&backend, &stack, out).await?;
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

/// Takes the state lock; when another run holds it, says how to break it
/// should that run have died.
async fn lock(
    backend: &Backend,
    operation: &str,
    stack: &Path,
    g: &Global,
    out: &Out,
) -> Result<Lock, Error> {
    let notice = |m: &str| out.note(m);
    backend.lock(operation, &notice).await.map_err(|e| match e {
        BackendError::State(StateError::Locked(holder)) => format!(
            "state is locked by {holder}\n  help: wait for that run to finish; if it died, run `{}`",
            suggest::rayform(g, ["force-unlock", &suggest::path(stack), &holder.id])
        )
        .into(),
        e => e.into(),
    })
}

/// The backend at `location`; connects to the cluster only if the state is kept there.
async fn backend_for(location: &StateLocation, g: &Global, out: &Out) -> Result<Backend, Error> {
    let cluster = match location {
        StateLocation::File { .. } => None,
        StateLocation::Kubernetes { .. } => Some(connect(g, out).await?),
    };
    Ok(Backend::open(location, cluster.as_ref())?)
}

/// The state kept by `backend`, saying what of a killed run's journal was
/// damaged and left out.
async fn read_state(backend: &Backend, out: &Out) -> Result<Option<State>, Error> {
    Ok(backend.load().await?.map(|loaded| {
        if let Some(cut) = &loaded.cut {
            out.warn(&cut.to_string());
        }
        loaded.state
    }))
}

async fn load_state(backend: &Backend, s: &Stack, out: &Out) -> Result<(State, bool), Error> {
    match read_state(backend, out).await? {
        Some(st) if st.stack != s.name => Err(format!(
            "the state at {} belongs to stack `{}`, not `{}`\n  help: give each stack its own state (--state, or `state` in [stack])",
            s.state, st.stack, s.name
        )
        .into()),
        Some(st) => Ok((st, false)),
        None => Ok((State::new(&s.name)?, true)),
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

/// `rayform status`: the readiness wait's look, once or on repeat.
async fn status(
    path: &Path,
    watch: bool,
    json: bool,
    g: &Global,
    out: &Out,
    stop: &Stop,
) -> Result<u8, Error> {
    let s = load(path, g)?;
    let cluster = connect(g, out).await?;
    // RayServices live in the stack's namespace, as apply waits for them there.
    let waits: Vec<rayform::readiness::Target> = s
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            ResourceSpec::Wait(w) => Some(desired::wait_target(&s, w)),
            _ => None,
        })
        .collect();
    if waits.is_empty() {
        return Err(format!("{} has no [wait] to look at", path.display()).into());
    }
    let mut last = String::new();
    // Kept for the whole watch: one port-forward per head port, not one a look.
    let mut connections: Vec<_> = waits.iter().map(|_| Connections::default()).collect();
    loop {
        let mut serving = true;
        let mut said = Vec::new();
        for (target, connections) in waits.iter().zip(&mut connections) {
            let look = rayform::readiness::look(&cluster, &s.namespace, target, connections)
                .await
                .map_err(|e| e.to_string())?;
            serving &= matches!(look.serving, rayform::readiness::Serving::Yes { .. });
            said.push(if json {
                serde_json::to_string(&look).map_err(|e| e.to_string())?
            } else {
                look.to_string()
            });
        }
        let said = said.join("\n");
        if !watch {
            out.raw(&format!("{said}\n"));
            return Ok(if serving { 0 } else { 2 });
        }
        if said != last {
            if !json {
                out.raw(&format!(
                    "[{}]\n",
                    jiff::Timestamp::now().strftime("%H:%M:%S")
                ));
            }
            out.raw(&format!("{said}\n"));
            last = said;
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            () = stop.wait() => return Ok(interrupt_code()),
        }
    }
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

/// What a plan is for: the stack's wishes, or taking it all down (`force`:
/// over Karpenter fields changed outside rayform).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Apply,
    Destroy { force: bool },
}

impl Opened {
    /// The plan for `intent` with the flags in `take`: rendered, observed,
    /// built, and checked against what the state's backend can keep.
    async fn plan(&self, take: &Take, intent: Intent, out: &Out) -> Result<Plan, Error> {
        let (s, state, cluster) = (&self.stack, &self.state, &self.cluster);
        let started = std::time::Instant::now();
        let (mode, force) = match intent {
            Intent::Apply => (Mode::Apply, false),
            Intent::Destroy { force } => (Mode::Destroy, force),
        };
        let secrets = match mode {
            Mode::Apply => Secrets::Require,
            Mode::Destroy => Secrets::Skip,
        };
        let desired = desired::render(s, &state.fingerprint_key, &state.lineage, secrets)?;
        // Before the first request: a refusal may quote a value, in a log line
        // too. Destroy needs no value, but masks those it can read all the same
        // (a policy on DELETE sees the Secret's data).
        out.masks().add(&desired::redactor(&desired));
        if mode == Mode::Destroy {
            let _ = read_secrets(s, out);
        }
        let adopt = addresses("--adopt", &take.adopt)?;
        let targets = addresses("--target", &take.targets)?;
        if let Some(unknown) = targets
            .iter()
            .find(|a| s.get(a).is_none() && !state.resources.contains_key(a))
        {
            return Err(format!(
                "--target {unknown}: no such resource in {} or its state\n  help: the stack file and `rayform state list STACK` list the addresses",
                s.file.display()
            )
            .into());
        }
        let observing = ObserveOptions {
            force,
            dry_run: take.dry_run_policy(),
            adopt: adopt.clone(),
        };
        let world = observe::observe(cluster, s, &desired, state, mode, &observing).await?;
        out.debug(&format!(
            "observed the cluster in {:?} with {} API requests (after discovery)",
            started.elapsed(),
            cluster.requests()
        ));
        let options = PlanOptions {
            destroy: mode == Mode::Destroy,
            force_conflicts: take.force_conflicts,
            adopt,
            targets,
            refresh_only: take.refresh_only,
        };
        let mut plan = plan::build(s, &self.graph, &desired, state, self.new, &world, &options);
        check_size(&self.backend, state, &mut plan);
        Ok(plan)
    }
}

/// A plan whose state would not fit where it is kept is a plan with an
/// error: shown by `plan`, refused by apply before anything is written.
fn check_size(backend: &Backend, state: &State, plan: &mut Plan) {
    if let Err(e) = backend.check_size(state, plan) {
        plan.errors.push(e.to_string());
    }
}

/// A plan as the terminal shows it; the commands in its help lines name
/// the stack it was made from.
fn plan_text(plan: &Plan, out: &Out, g: &Global) -> String {
    let text = plan::render_text(plan, out.render_options());
    suggest::fill_stack(&text, Some(&plan.stack_file), g)
}

/// The addresses given to a flag, each checked for shape.
fn addresses(flag: &str, given: &[String]) -> Result<BTreeSet<Address>, Error> {
    given
        .iter()
        .map(|a| {
            Address::parse(a)
                .ok_or_else(|| format!("{flag} {a}: not an address like secret.hf-token").into())
        })
        .collect()
}

/// The stack's secret values, masked from here on in all that is printed
/// (those read before one that cannot be read, too).
fn read_secrets(s: &Stack, out: &Out) -> Result<SecretValues, Error> {
    let mut values = SecretValues::new();
    for r in &s.resources {
        if let ResourceSpec::Secret(spec) = &r.spec {
            let read = rayform::secret::read(&r.address, &spec.data)?;
            let mut masks = rayform::secret::Redactor::new();
            masks.add(read.values().map(rayform::secret::SecretValue::expose));
            out.masks().add(&masks);
            values.insert(r.address.clone(), read);
        }
    }
    Ok(values)
}

/// What the person at the terminal said to a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Approved,
    /// Not approved: exit with this code (1 for an answer other than `yes`,
    /// 130 or 143 when the question was interrupted).
    Declined(u8),
}

/// Set while the question is on screen: a signal then cancels the run at
/// once instead of letting changes in flight finish (there are none yet).
static ASKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks for `yes` on the terminal, as Terraform does. The answer is read on a
/// thread of its own so that the runtime keeps running meanwhile: a Lease
/// lock must go on being renewed while a person reads the plan, and Ctrl-C
/// must be noticed (`stop`) while the read blocks.
async fn confirm(auto_approve: bool, verb: &str, out: &Out, stop: &Stop) -> Result<Answer, Error> {
    if auto_approve {
        return Ok(Answer::Approved);
    }
    if !std::io::stdin().is_terminal() {
        out.line(&format!("\nrayform {verb} needs confirmation, but standard input is not a terminal.\n  help: review the plan above and pass --auto-approve"));
        return Ok(Answer::Declined(1));
    }
    let question = if verb == "destroy" {
        "Do you really want to destroy all resources?"
    } else {
        "Do you want to perform these actions?"
    };
    out.line(&format!(
        "\n{question}\n  rayform will {verb} as shown above.\n  Only 'yes' will be accepted to approve.\n"
    ));
    out.prompt("  Enter a value: ");
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A plain thread, not spawn_blocking: the runtime would wait for a
    // blocked read at shutdown, and an interrupted question never returns.
    std::thread::spawn(move || {
        let mut answer = String::new();
        let read = std::io::stdin().lock().read_line(&mut answer);
        let _ = tx.send(read.map(|_| answer));
    });
    ASKING.store(true, std::sync::atomic::Ordering::SeqCst);
    let answer = tokio::select! {
        read = rx => Some(read.map_err(|_| "the terminal closed")??),
        () = stop.wait() => None,
    };
    ASKING.store(false, std::sync::atomic::Ordering::SeqCst);
    let cancelled = if verb == "apply" {
        "Apply cancelled."
    } else {
        "Destroy cancelled."
    };
    Ok(match answer {
        Some(a) if a.trim() == "yes" => Answer::Approved,
        Some(_) => {
            out.line(&format!("\n{cancelled}"));
            Answer::Declined(1)
        }
        None => {
            out.line(&format!("\n\n{cancelled} Nothing was changed."));
            Answer::Declined(interrupt_code())
        }
    })
}

/// How a plan is carried out: apply's and destroy's flags, and the request to stop.
struct Execution<'a> {
    run: &'a RunArgs,
    global: &'a Global,
    wait: Readiness,
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
    let report = result.map_err(|e| match e {
        apply::ApplyError::Backend(BackendError::LockLost(_)) => format!(
            "{e}\n  help: `{}` shows where things stand",
            suggest::rayform(how.global, ["plan", &suggest::path(&plan.stack_file)])
        )
        .into(),
        e => Error::from(e),
    })?;
    let s = plan.summary();
    if plan.destroy {
        out.line(&format!(
            "\nDestroy complete! Resources: {} destroyed, {} reverted{}{}.",
            s.destroy,
            s.revert,
            counted(s.release, "released"),
            counted(s.forget, "forgotten")
        ));
    } else {
        out.line(&format!(
            "\nApply complete! Resources: {} added, {} changed, {} destroyed, {} patched{}{}.",
            s.add,
            s.change,
            s.destroy,
            s.patch,
            counted(s.release, "released"),
            counted(s.forget, "forgotten")
        ));
        for r in &report.ready {
            out.line(&r.to_string());
        }
    }
    Ok(0)
}

/// ", N forgotten" for a summary line: said only when it happened.
fn counted(count: usize, what: &str) -> String {
    if count == 0 {
        String::new()
    } else {
        format!(", {count} {what}")
    }
}

/// A plan saved with `plan --out`, refused if another rayform wrote its format.
fn read_plan(path: &Path) -> Result<Plan, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read plan file {}: {e}", path.display()))?;
    let plan: Plan = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a rayform plan: {e}", path.display()))?;
    plan.check_saved()
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

/// Writes `plan` (fingerprints, never values; masked all the same, as
/// everything rayform writes out).
fn save_plan(plan: &Plan, path: &PathBuf, out: &Out) -> Result<(), Error> {
    let text = out.masks().redact(&serde_json::to_string_pretty(plan)?);
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
    let stack_default = load(&plan.stack_file, g).ok().map(|s| s.state);
    let g = &suggest::at(g, stack_default.as_ref(), &location);
    let how = Execution { global: g, ..how };
    let cluster = connect(g, out).await?;
    let backend = Backend::open(&location, Some(&cluster))?;
    let lock = lock(&backend, "apply", &plan.stack_file, g, out).await?;
    let stack = suggest::path(&plan.stack_file);
    let plan_again = suggest::rayform(g, ["plan", &stack, "--out", &suggest::path(path)]);
    // `plan --out` needs a state (made by `init`), so a missing one was removed since.
    let Some(state) = read_state(&backend, out).await? else {
        return Err(format!(
            "the state {} was made from is gone from {location}\n  help: create it again with `{}`, then make the plan again with `{plan_again}`",
            path.display(),
            suggest::rayform(g, ["init", &stack]),
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
    // Secret values are not in the plan: read them again from where the stack says.
    let secrets = if plan
        .changes
        .iter()
        .filter_map(plan::Change::write)
        .any(|w| !w.payload.secret_fingerprints.is_empty())
    {
        read_secrets(&load(&plan.stack_file, g)?, out)?
    } else {
        SecretValues::new()
    };
    apply::check_fresh(&cluster, &plan, &state, &secrets)
        .await
        .map_err(|e| match e {
            apply::ApplyError::Stale(why) => format!(
                "the saved plan is stale: {why}; nothing was changed\n  help: make it again with `{plan_again}`, and review it before applying it"
            )
            .into(),
            e => Error::from(e),
        })?;
    backend.check_size(&state, &plan)?;
    out.raw(&plan_text(&plan, out, g));
    execute(&cluster, &plan, state, (&backend, &lock), secrets, how, out).await
}
