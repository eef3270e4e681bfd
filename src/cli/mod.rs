//! The command line: turns arguments into calls on the library and results
//! into output and exit codes. Everything the user sees is printed here.

mod args;
mod commands;
mod events;
mod output;
mod state_cmd;
mod suggest;

use std::io::{BufRead as _, IsTerminal as _};
use std::path::Path;
use std::process::ExitCode;

use rayform::apply::{self, ApplyOptions, Readiness, SecretValues, Stop};
use rayform::backend::{Backend, BackendError};
use rayform::cluster::Cluster;
use rayform::desired;
use rayform::graph::Graph;
use rayform::ops::{self, Held, Intent, Operation, OpsError};
use rayform::plan::{self, Plan};
use rayform::readiness::{Connections, OnStuck};
use rayform::stack::StateLocation;
use rayform::stack::{self, ResourceSpec, Stack};

use args::{Cli, Command, Global, RunArgs};
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
            result = &mut run => Ended::Ran(result),
            (name, code) = interrupted() => {
                INTERRUPTED_WITH.store(code, std::sync::atomic::Ordering::SeqCst);
                stop.request();
                if ASKING.load(std::sync::atomic::Ordering::SeqCst) {
                    // Nothing is in flight yet: the question ends, and with it the run.
                    Ended::Ran((&mut run).await)
                } else {
                    // As Terraform: the first signal lets the changes in flight
                    // finish and be recorded; a second one stops at once.
                    out.error(&format!(
                        "{name}: stopping once the changes in flight are done (again to stop at once)"
                    ));
                    tokio::select! {
                        result = &mut run => Ended::Interrupted { name, code, finished: Some(result) },
                        _ = interrupted() => Ended::Interrupted { name, code, finished: None },
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
    tracing::debug!("the run is over; exiting");
    exit_with(outcome, &out, &explain)
}

/// How a run ended.
enum Ended {
    Ran(Result<u8, Error>),
    /// Stopped by a signal (`name`, exiting `code`); `finished` is what the
    /// run came to after the first signal, None if a second one stopped it.
    Interrupted {
        name: &'static str,
        code: u8,
        finished: Option<Result<u8, Error>>,
    },
}

/// How a run ended, as the terminal says it: its exit code, or its error
/// (a stack's errors each with its source line), or the signal that stopped it.
fn exit_with(outcome: Ended, out: &Out, explain: &dyn Fn(String) -> String) -> ExitCode {
    match outcome {
        Ended::Ran(Ok(code)) => ExitCode::from(code),
        Ended::Ran(Err(e)) => {
            let e = unwrapped(e);
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
        Ended::Interrupted {
            name,
            code,
            finished,
        } => {
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

/// The error an operation wrapped, when the CLI shows that kind its own way
/// (a stack error with its source line).
fn unwrapped(e: Error) -> Error {
    match e.downcast::<OpsError>() {
        Ok(ops) => match *ops {
            OpsError::Stack(e) => Box::new(e),
            OpsError::Graph(e) => Box::new(e),
            other => Box::new(other),
        },
        Err(e) => e,
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
            let plan = ops::read_plan(&path)?;
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
            let info = backend_for(&s.state, g)
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
    let mut session = ops::open(&g.place(stack), Operation::Import, out).await?;
    let uid = ops::import(&mut session, address).await?;
    out.line(&format!(
        "Imported {address} (uid {uid}). Run `{}` to see what apply would change to match the stack.",
        suggest::rayform(g, ["plan", &suggest::path(stack)])
    ));
    Ok(0)
}

fn load(path: &Path, g: &Global) -> Result<Stack, Error> {
    Ok(stack::load(path, &g.state_override())?)
}

/// The backend at `location`; connects to the cluster only if the state is kept there.
async fn backend_for(location: &StateLocation, g: &Global) -> Result<Backend, Error> {
    Ok(ops::backend_at(location, &g.connect_options()).await?)
}

async fn doctor(
    stack: Option<&std::path::Path>,
    json: bool,
    g: &Global,
    out: &Out,
) -> Result<u8, Error> {
    let stack = stack.map(|p| load(p, g)).transpose()?;
    let report = match connect(g).await {
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
    let cluster = connect(g).await?;
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
        // A pull's time so far is said, but is not a change to print again for.
        let mut key = String::new();
        for (target, connections) in waits.iter().zip(&mut connections) {
            let look = rayform::readiness::look(&cluster, &s.namespace, target, connections)
                .await
                .map_err(|e| e.to_string())?;
            serving &= matches!(look.serving, rayform::readiness::Serving::Yes { .. });
            key.push_str(&look.change_key());
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
        if key != last {
            if !json {
                out.raw(&format!(
                    "[{}]\n",
                    jiff::Timestamp::now().strftime("%H:%M:%S")
                ));
            }
            out.raw(&format!("{said}\n"));
            last = key;
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            () = stop.wait() => return Ok(interrupt_code()),
        }
    }
}

async fn connect(g: &Global) -> Result<Cluster, Error> {
    Ok(ops::connect(&g.connect_options()).await?)
}

/// A plan as the terminal shows it; the commands in its help lines name
/// the stack it was made from.
fn plan_text(plan: &Plan, out: &Out, g: &Global) -> String {
    let text = plan::render_text(plan, out.render_options());
    suggest::fill_stack(&text, Some(&plan.stack_file), g)
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
    /// `--json`: progress and the result as JSON lines on stdout.
    json: bool,
    wait: Readiness,
    endpoint: Option<String>,
    stop: &'a Stop,
}

async fn execute(
    held: Held,
    plan: &Plan,
    secrets: SecretValues,
    how: Execution<'_>,
    out: &Out,
) -> Result<u8, Error> {
    let options = ApplyOptions {
        parallelism: how.run.parallelism,
        wait: how.wait,
        delete_timeout: how.run.delete_timeout,
        endpoint: how.endpoint,
        detail: match how.global.verbose {
            0 => rayform::readiness::Detail::Changes,
            _ => rayform::readiness::Detail::Complete,
        },
        progress: events::progress(out, how.json),
        stop: how.stop.clone(),
    };
    if !how.json {
        out.line("");
    }
    let report = held.execute(plan, secrets, options).await.map_err(|e| {
        let text = match e {
            OpsError::Apply(apply::ApplyError::Backend(BackendError::LockLost(_))) => {
                format!("{e}\n  help: `rayform plan STACK` shows where things stand")
            }
            e => e.to_string(),
        };
        // A saved plan's run has no stack file of its own: its help lines
        // name the stack the plan was made from.
        suggest::fill_stack(&text, Some(&plan.stack_file), how.global)
    })?;
    if how.json {
        events::complete(out, plan, &report);
        return Ok(0);
    }
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
            "\nApply complete! Resources: {} added, {} changed, {} destroyed, {} patched{}{}{}.",
            s.add,
            s.change,
            s.destroy,
            s.patch,
            counted(s.revert, "reverted"),
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

fn is_plan_file(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{'))
}

async fn apply_saved(path: &Path, g: &Global, how: Execution<'_>, out: &Out) -> Result<u8, Error> {
    let plan = ops::read_plan(path)?;
    let location = match &g.state {
        Some(path) => StateLocation::File { path: path.clone() },
        None => plan.state.clone(),
    };
    let stack_default = load(&plan.stack_file, g).ok().map(|s| s.state);
    let g = &suggest::at(g, stack_default.as_ref(), &location);
    let how = Execution { global: g, ..how };
    let (held, secrets) = ops::saved_session(path, &plan, &location, &g.connect_options(), out)
        .await
        .map_err(|e| suggest::fill_stack(&e.to_string(), Some(&plan.stack_file), g))?;
    if how.json {
        events::plan(out, &plan);
    } else {
        out.raw(&plan_text(&plan, out, g));
    }
    execute(held, &plan, secrets, how, out).await
}
