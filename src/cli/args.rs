//! Command-line arguments: the only place that knows flag names.

use std::path::PathBuf;

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum as _};

/// Plan, apply and destroy LLM serving (KubeRay RayService) on Karpenter-autoscaled Kubernetes.
#[derive(Debug, Parser)]
#[command(
    name = "rayform",
    version,
    about,
    max_term_width = 100,
    after_help = "Exit codes: 0 success (no changes), 1 error (usage errors included), \
                  2 changes present (plan --detailed-exitcode), 130 interrupted (Ctrl-C), 143 SIGTERM."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context)
    #[arg(long, global = true, env = "RAYFORM_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// State file, file backend (default: the stack's `state`, else state/<stack>.json beside the stack)
    #[arg(long, global = true, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// Where the state is kept: a local file, or a Secret + Lease in the cluster (default: the stack's `backend`, else file)
    #[arg(
        long,
        global = true,
        value_enum,
        env = "RAYFORM_BACKEND",
        value_name = "BACKEND"
    )]
    pub backend: Option<Backend>,
    /// Namespace of the state Secret and lock Lease, kubernetes backend (default: the stack's `state_namespace`, else its namespace)
    #[arg(
        long,
        global = true,
        env = "RAYFORM_STATE_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub state_namespace: Option<String>,
    /// When to use ANSI colours: auto = on a terminal, unless NO_COLOR is set (CLICOLOR_FORCE forces them)
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        value_name = "WHEN"
    )]
    pub color: ColorWhen,
    /// No ANSI colours: the same as --color never
    #[arg(long, global = true)]
    pub no_color: bool,
    /// More detail on stderr: -v rayform's debug events and timings, -vv also kube's requests
    /// (RAYFORM_LOG=FILTER picks any); secret values are never shown
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The flags above that choose the cluster and the state, as typed on
    /// the command line: a command suggested in a help line repeats them,
    /// so that it works on the same state when run as printed.
    #[arg(skip)]
    pub given: Vec<String>,
}

/// The global flags that choose the cluster and the state: they mean
/// nothing to the commands that touch neither.
const LOCATION_FLAGS: [&str; 5] = [
    "kubeconfig",
    "context",
    "state",
    "backend",
    "state_namespace",
];

/// The commands that read no state and reach no cluster.
const LOCAL_COMMANDS: [&str; 5] = ["validate", "graph", "show", "completions", "man"];

/// The command line's definition: [`Cli`]'s, with the location flags
/// hidden from the help and man pages of the commands they mean nothing to.
pub fn command() -> clap::Command {
    built(Cli::command())
}

/// [`command`] as the man pages show it: without the `help` commands,
/// which have no page (`--help` is on every page).
pub fn man_pages() -> clap::Command {
    let cmd = Cli::command()
        .disable_help_subcommand(true)
        .mut_subcommand("state", |state| state.disable_help_subcommand(true));
    built(cmd)
}

fn built(mut cmd: clap::Command) -> clap::Command {
    // Builds the subcommands, global flags included, so they can be edited.
    cmd.build();
    LOCAL_COMMANDS.iter().fold(cmd, |cmd, name| {
        // `mut_args` edits in place: the built command's index of its flags stays true.
        cmd.mut_subcommand(name, |sub| {
            sub.mut_args(|a| {
                let location = LOCATION_FLAGS.contains(&a.get_id().as_str());
                a.hide(location)
            })
        })
    })
}

/// Parses the command line, Terraform's single-dash flags included.
pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, clap::Error> {
    // Built once (it is most of the start-up): for the rewrite and the parse.
    let mut cmd = command();
    let args = terraform_style(&cmd, args);
    let matches = cmd.try_get_matches_from_mut(args)?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
    cli.global.given = given_location(&matches, &cli.global);
    Ok(cli)
}

/// `--kubeconfig`, `--context`, `--state`, `--backend` and
/// `--state-namespace` with their values, for those typed on the command
/// line (the environment carries the others to a command run as printed).
fn given_location(matches: &clap::ArgMatches, g: &Global) -> Vec<String> {
    let typed = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let values = [
        ("kubeconfig", path(&g.kubeconfig)),
        ("context", g.context.clone()),
        ("state", path(&g.state)),
        (
            "backend",
            g.backend.map(|b| match b {
                Backend::File => "file".to_string(),
                Backend::Kubernetes => "kubernetes".to_string(),
            }),
        ),
        ("state_namespace", g.state_namespace.clone()),
    ];
    values
        .into_iter()
        .filter(|(id, _)| typed(id))
        .filter_map(|(id, value)| Some([format!("--{}", id.replace('_', "-")), value?]))
        .flatten()
        .collect()
}

/// Terraform's single-dash long flags (`-auto-approve`, `-out=x.plan`) as
/// clap's double-dash ones, for the hands of Terraform users. An argument is
/// rewritten only where a flag may stand, and only when it names a long flag
/// of the command it is given to; the values of flags and everything after
/// `--` are left as they are.
fn terraform_style(
    root: &clap::Command,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut cmd = root;
    let mut args = args.into_iter();
    let mut rewritten: Vec<std::ffi::OsString> = args.next().into_iter().collect();
    while let Some(arg) = args.next() {
        let text = arg.to_str().unwrap_or_default();
        if text == "--" {
            rewritten.push(arg);
            rewritten.extend(args.by_ref());
            break;
        }
        if let Some(sub) = cmd.find_subcommand(text) {
            cmd = sub;
            rewritten.push(arg);
            continue;
        }
        match long_flag(cmd, text) {
            Some((flag, value_follows)) => {
                rewritten.push(flag.into());
                if value_follows {
                    rewritten.extend(args.next());
                }
            }
            None => rewritten.push(arg),
        }
    }
    rewritten
}

/// `text` as `--name` or `--name=value` when it names a long flag of `cmd`
/// with one dash or two, and whether the next argument is the flag's value.
fn long_flag(cmd: &clap::Command, text: &str) -> Option<(String, bool)> {
    let long = text
        .strip_prefix("--")
        .or_else(|| text.strip_prefix('-').filter(|name| name.len() > 1))?;
    let (name, value) = long
        .split_once('=')
        .map_or((long, None), |(name, value)| (name, Some(value)));
    let flag = cmd.get_arguments().find(|a| a.get_long() == Some(name))?;
    Some(match value {
        Some(value) => (format!("--{name}={value}"), false),
        None => (format!("--{name}"), flag.get_action().takes_values()),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Backend {
    File,
    Kubernetes,
}

impl Global {
    /// The state location flags, which replace the stack's own settings.
    /// Where an operation on `stack` works, as these flags choose.
    pub fn place(&self, stack: &std::path::Path) -> rayform::ops::Place {
        rayform::ops::Place {
            stack: stack.to_path_buf(),
            state: self.state_override(),
            connect: self.connect_options(),
        }
    }

    pub fn connect_options(&self) -> rayform::cluster::ConnectOptions {
        rayform::cluster::ConnectOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }

    pub fn state_override(&self) -> rayform::stack::StateOverride {
        rayform::stack::StateOverride {
            backend: self.backend.map(|b| match b {
                Backend::File => rayform::stack::BackendKind::File,
                Backend::Kubernetes => rayform::stack::BackendKind::Kubernetes,
            }),
            path: self.state.clone(),
            namespace: self.state_namespace.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a stack file without a cluster
    Validate {
        /// The stack file (TOML)
        stack: PathBuf,
    },
    /// Print the dependency graph as DOT (apply order; --destroy for the reverse)
    Graph {
        /// The stack file (TOML)
        stack: PathBuf,
        /// The order destroy works in (the reverse of apply)
        #[arg(long)]
        destroy: bool,
    },
    /// Create the stack's empty state (its identity and secret-fingerprint key); needed once before `plan --out`
    #[command(
        after_help = "A saved plan is checked against the state it was made from, and pins\n\
        secret values by fingerprints keyed by that state, so the state must exist\n\
        before the plan: `plan` itself never writes it. `plan` and `apply` without a\n\
        saved plan need no init. Running init again changes nothing.\n\n\
        Examples:\n  \
        rayform init stacks/mistral-7b.toml\n  \
        rayform plan stacks/mistral-7b.toml --out reviewed.plan"
    )]
    Init {
        /// The stack file (TOML)
        stack: PathBuf,
    },
    /// Show what apply would do
    #[command(after_help = "Examples:\n  \
        rayform plan stacks/mistral-7b.toml\n  \
        rayform plan stacks/mistral-7b.toml --detailed-exitcode   # CI: 0 no changes, 2 changes, 1 error\n  \
        rayform plan stacks/mistral-7b.toml --out reviewed.plan   # then: rayform apply reviewed.plan")]
    Plan(PlanArgs),
    /// Apply a stack (after showing its plan), or a saved plan file
    #[command(after_help = "Examples:\n  \
        rayform apply stacks/mistral-7b.toml                       # shows the plan, asks for yes\n  \
        rayform apply stacks/mistral-7b.toml --auto-approve --no-wait\n  \
        rayform apply reviewed.plan                                # exactly what was reviewed")]
    Apply(ApplyArgs),
    /// Whether each wait's RayService serves now, and if not, what it is waiting on
    #[command(
        after_help = "Exit status: 0 when every wait's RayService serves, 2 when one does not, 1 on error.\n\n\
        Examples:\n  \
        rayform status stacks/mistral-7b.toml\n  \
        rayform status stacks/mistral-7b.toml --watch     # a line each time something changes\n  \
        rayform status stacks/mistral-7b.toml --json"
    )]
    Status {
        /// The stack file (TOML)
        stack: PathBuf,
        /// Look again every 2 s and print what changed, until interrupted
        #[arg(long)]
        watch: bool,
        /// One JSON object per wait (per look, with --watch), one per line
        #[arg(long)]
        json: bool,
    },
    /// Delete what the stack created and revert its Karpenter patches
    #[command(after_help = "Examples:\n  \
        rayform destroy stacks/mistral-7b.toml\n  \
        rayform destroy stacks/mistral-7b.toml --auto-approve --force   # restore originals over outside changes")]
    Destroy(DestroyArgs),
    /// Show a plan saved with `plan --out`, without contacting the cluster
    Show {
        /// The plan file
        plan: PathBuf,
        /// Print the plan as JSON (as `plan --json` does)
        #[arg(long)]
        json: bool,
    },
    /// Read or edit the state: list, show, mv, rm, pull, push
    #[command(subcommand)]
    State(StateCommand),
    /// Check, before a first apply, whether the stack can work on this cluster
    #[command(
        after_help = "Checks, one line each: the cluster and its version; KubeRay's CRDs and\n\
        operator (and its version); the Karpenter APIs and every object the stack\n\
        patches; whether its pools can launch its GPU workers; GPU nodes or the NVIDIA\n\
        device plugin; the stack's secret sources (never their values); and every\n\
        permission plan, apply and destroy use (SelfSubjectAccessReview).\n\
        Exit 1 when a check fails (✘); warnings (!) do not.\n\n\
        Examples:\n  \
        rayform doctor stacks/mistral-7b.toml\n  \
        rayform --context restricted doctor stacks/mistral-7b.toml --json"
    )]
    Doctor {
        /// The stack to check the cluster for (without one: cluster-wide checks only)
        stack: Option<PathBuf>,
        /// Print the checks as JSON
        #[arg(long)]
        json: bool,
    },
    /// Take an existing object the stack declares into the state, unchanged
    Import {
        /// The stack file (TOML)
        stack: PathBuf,
        /// e.g. secret.hf-token, rayservice.mistral-7b
        address: String,
    },
    /// Print a shell completion script (e.g. `rayform completions bash > /etc/bash_completion.d/rayform`)
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page, in roff (e.g. `rayform man > rayform.1`, `rayform man plan > rayform-plan.1`)
    Man {
        /// The command whose page to print, e.g. `plan` or `state push` (default: rayform's own)
        command: Vec<String>,
    },
    /// Break the state lock of a run that died
    ForceUnlock {
        /// The stack file (TOML)
        stack: PathBuf,
        /// The lock ID from the "state is locked" error
        lock_id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The stack file (TOML)
    pub stack: PathBuf,
    /// Save the plan (it holds no secret values) for `rayform apply FILE`
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Print the plan as JSON
    #[arg(long)]
    pub json: bool,
    /// Plan a destroy
    #[arg(long)]
    pub destroy: bool,
    #[command(flatten)]
    pub take: Take,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A stack file, or a plan saved with `plan --out`
    pub target: PathBuf,
    /// Do not ask for confirmation
    #[arg(long)]
    pub auto_approve: bool,
    #[command(flatten)]
    pub take: Take,
    #[command(flatten)]
    pub run: RunArgs,
    /// Skip the readiness wait
    #[arg(long)]
    pub no_wait: bool,
    /// Wait until the timeout even when the cause of a wait will not go away by itself
    /// (an image that cannot be pulled, a crash loop, a spec KubeRay refuses, a failed deploy)
    #[arg(long, conflicts_with = "no_wait")]
    pub keep_waiting: bool,
    /// Readiness endpoint (http://host:port of the Serve proxy), overriding the stack
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    pub endpoint: Option<String>,
    /// Print the plan, each progress event and the result as JSON, one object a line
    /// (needs --auto-approve, or a saved plan)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DestroyArgs {
    /// The stack file (TOML)
    pub stack: PathBuf,
    /// Do not ask for confirmation
    #[arg(long)]
    pub auto_approve: bool,
    /// Restore recorded Karpenter originals even over changes made outside rayform
    #[arg(long)]
    pub force: bool,
    /// Destroy only this resource and what depends on it (repeatable)
    #[arg(long = "target", id = "targets", value_name = "ADDRESS")]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Print the plan, each progress event and the result as JSON, one object a line
    #[arg(long, requires = "auto_approve")]
    pub json: bool,
}

impl Command {
    /// The stack file the command works on, for the help lines of its errors.
    pub fn stack_file(&self) -> Option<&std::path::Path> {
        match self {
            Command::Validate { stack }
            | Command::Graph { stack, .. }
            | Command::Init { stack }
            | Command::Import { stack, .. }
            | Command::Status { stack, .. }
            | Command::ForceUnlock { stack, .. } => Some(stack),
            Command::Plan(args) => Some(&args.stack),
            // `apply FILE`: its help lines come from the saved plan's own stack.
            Command::Apply(args) => Some(args.target.as_path()).filter(|t| !super::is_plan_file(t)),
            Command::Destroy(args) => Some(&args.stack),
            Command::Doctor { stack, .. } => stack.as_deref(),
            Command::State(command) => Some(command.stack_file()),
            Command::Show { .. } | Command::Completions { .. } | Command::Man { .. } => None,
        }
    }
}

impl StateCommand {
    fn stack_file(&self) -> &std::path::Path {
        match self {
            StateCommand::List { stack }
            | StateCommand::Show { stack, .. }
            | StateCommand::Mv { stack, .. }
            | StateCommand::Rm { stack, .. }
            | StateCommand::Pull { stack }
            | StateCommand::Push { stack, .. }
            | StateCommand::Restore { stack } => stack,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List the addresses the state tracks, one per line
    List {
        /// The stack file (TOML)
        stack: PathBuf,
    },
    /// Show what the state records for one address
    Show {
        /// The stack file (TOML)
        stack: PathBuf,
        /// e.g. rayservice.mistral-7b, nodepool.default
        address: String,
    },
    /// Record an object under another address, e.g. after renaming it in the stack (the cluster is not touched)
    Mv {
        /// The stack file (TOML)
        stack: PathBuf,
        /// The address the state records it under now, e.g. rayservice.old-name
        from: String,
        /// The address to record it under, e.g. rayservice.new-name
        to: String,
    },
    /// Stop managing objects without deleting them (they stay in the cluster)
    Rm {
        /// The stack file (TOML)
        stack: PathBuf,
        /// One or more addresses, e.g. secret.hf-token
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Print the whole state as JSON (to keep a copy, or to move it to another backend)
    Pull {
        /// The stack file (TOML)
        stack: PathBuf,
    },
    /// Replace the state with a JSON file written by `state pull` (e.g. from another backend)
    Push {
        /// The stack file (TOML)
        stack: PathBuf,
        /// The state file to store, or `-` to read it from standard input
        file: PathBuf,
        /// Replace a state of another lineage or a newer serial
        #[arg(long)]
        force: bool,
    },
    /// Put back the state as it was before the last command that wrote it (its backup)
    Restore {
        /// The stack file (TOML)
        stack: PathBuf,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct Take {
    /// Which changes the API server checks with a dry run: auto = all of them when at most 50 objects may change, else none
    #[arg(long, value_enum, value_name = "WHICH")]
    pub server_dry_run: Option<ServerDryRun>,
    /// Take fields other field managers own (see the plan's conflicts)
    #[arg(long)]
    pub force_conflicts: bool,
    /// Take over an existing object rayform did not create (e.g. secret.hf-token)
    #[arg(long, value_name = "ADDRESS")]
    pub adopt: Vec<String>,
    /// Plan only this resource and what it depends on (repeatable; for exceptional cases)
    #[arg(long = "target", id = "targets", value_name = "ADDRESS")]
    pub targets: Vec<String>,
    /// Change nothing in the cluster: record in the state what is live now
    #[arg(long)]
    pub refresh_only: bool,
}

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum ServerDryRun {
    #[default]
    Auto,
    All,
    None,
}

impl Take {
    pub fn dry_run_policy(&self) -> rayform::observe::DryRun {
        match self.server_dry_run.unwrap_or_default() {
            ServerDryRun::Auto => rayform::observe::DryRun::default(),
            ServerDryRun::All => rayform::observe::DryRun::All,
            ServerDryRun::None => rayform::observe::DryRun::Never,
        }
    }

    /// The flags a saved plan cannot honour: it was decided when it was made.
    pub fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        if self.server_dry_run.is_some() {
            given.push("--server-dry-run");
        }
        if self.force_conflicts {
            given.push("--force-conflicts");
        }
        if !self.adopt.is_empty() {
            given.push("--adopt");
        }
        if !self.targets.is_empty() {
            given.push("--target");
        }
        if self.refresh_only {
            given.push("--refresh-only");
        }
        given
    }

    /// These flags as arguments that give them again.
    pub fn as_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(which) = self.server_dry_run
            && let Some(value) = which.to_possible_value()
        {
            args.extend(["--server-dry-run".to_string(), value.get_name().to_string()]);
        }
        if self.force_conflicts {
            args.push("--force-conflicts".to_string());
        }
        for address in &self.adopt {
            args.extend(["--adopt".to_string(), address.clone()]);
        }
        args
    }
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// How many independent resources to work on at once (at least 1)
    #[arg(long, default_value_t = 10, value_parser = parse_parallelism)]
    pub parallelism: usize,
    /// How long a delete may wait for finalizers
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub delete_timeout: std::time::Duration,
}

/// `http://host:port` (or https), as the readiness probe needs it.
/// The same check as a stack's `[wait] url`: readiness speaks plain HTTP.
fn parse_endpoint(s: &str) -> Result<String, String> {
    rayform::stack::endpoint(s)
}

fn parse_parallelism(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("0 would work on nothing; give 1 or more".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a count (e.g. 1, 10)")),
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    rayform::util::parse_duration(s)
        .ok_or_else(|| format!("`{s}` is not a duration (e.g. 90s, 5m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(args: &[&str]) -> Vec<String> {
        let args = std::iter::once("rayform").chain(args.iter().copied());
        terraform_style(&command(), args.map(std::ffi::OsString::from))
            .into_iter()
            .skip(1)
            .map(|a| a.into_string().unwrap_or_default())
            .collect()
    }

    #[test]
    fn terraform_flags_become_long_flags_of_their_command() {
        assert_eq!(
            rewritten(&[
                "plan",
                "s.toml",
                "-out=x.plan",
                "-detailed-exitcode",
                "-no-color"
            ]),
            [
                "plan",
                "s.toml",
                "--out=x.plan",
                "--detailed-exitcode",
                "--no-color"
            ]
        );
        assert_eq!(
            rewritten(&["state", "push", "s.toml", "-", "-force"]),
            ["state", "push", "s.toml", "-", "--force"]
        );
    }

    #[test]
    fn values_short_flags_unknown_flags_and_what_follows_a_double_dash_are_left_alone() {
        assert_eq!(
            rewritten(&[
                "-vv",
                "plan",
                "s.toml",
                "--context",
                "-json",
                "-lock-timeout=5s"
            ]),
            [
                "-vv",
                "plan",
                "s.toml",
                "--context",
                "-json",
                "-lock-timeout=5s"
            ]
        );
        assert_eq!(
            rewritten(&["plan", "-out", "-destroy", "--", "-json"]),
            ["plan", "--out", "-destroy", "--", "-json"]
        );
        // `-auto-approve` is apply's, not plan's.
        assert_eq!(
            rewritten(&["plan", "s.toml", "-auto-approve"]),
            ["plan", "s.toml", "-auto-approve"]
        );
    }
}
