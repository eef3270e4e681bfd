//! Command-line arguments: the only place that knows flag names.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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

#[derive(Debug, Args)]
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
    /// Read or edit the state: list, show, rm, pull, push
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
    /// Print the man page, in roff (e.g. `rayform man > rayform.1`)
    Man,
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
    /// Readiness endpoint (http://host:port of the Serve proxy), overriding the stack
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    pub endpoint: Option<String>,
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
    #[command(flatten)]
    pub run: RunArgs,
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
        /// The state file to store
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
        given
    }
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// How many independent resources to work on at once
    #[arg(long, default_value_t = 10)]
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

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    rayform::util::parse_duration(s)
        .ok_or_else(|| format!("`{s}` is not a duration (e.g. 90s, 5m)"))
}
