//! `rayform doctor`: before the first apply, one screen that says whether
//! the stack can work on this cluster, and what to do where it cannot.
//!
//! Every check only reads: access is asked with SelfSubjectAccessReviews,
//! which change nothing, and secret sources are checked for presence, their
//! values never read into a message. A check that fails is a blocker (exit
//! 1); a warning is something the cluster may still be fine without.

mod checks;
mod gpu_nodes;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::stack::Stack;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    /// The mark a terminal shows for it.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✔",
            Status::Warn => "!",
            Status::Fail => "✘",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What was checked: `cluster`, `KubeRay operator`, `nodepool.default`, `RBAC`...
    pub subject: String,
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Check {
    fn ok(subject: impl Into<String>, message: impl Into<String>) -> Check {
        Check {
            subject: subject.into(),
            status: Status::Ok,
            message: message.into(),
            help: None,
        }
    }

    fn warn(subject: impl Into<String>, message: impl Into<String>, help: Option<String>) -> Check {
        Check {
            subject: subject.into(),
            status: Status::Warn,
            message: message.into(),
            help,
        }
    }

    fn fail(
        subject: impl Into<String>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Check {
        Check {
            subject: subject.into(),
            status: Status::Fail,
            message: message.into(),
            help: Some(help.into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// A cluster that cannot be reached: the one thing there is to say.
    pub fn unreachable(message: String) -> Report {
        Report {
            checks: vec![Check::fail(
                "cluster",
                message,
                "check the kubeconfig context (--context) and that the API server is up",
            )],
        }
    }

    pub fn blocked(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }
}

impl Report {
    /// One line per check, `help:` under what needs doing, a count at the end.
    pub fn render_text(&self, color: bool) -> String {
        let paint = crate::util::Paint(color);
        let mut out = String::new();
        for c in &self.checks {
            let mark = match c.status {
                Status::Ok => paint.green(c.status.mark()),
                Status::Warn => paint.yellow(c.status.mark()),
                Status::Fail => paint.red(c.status.mark()),
            };
            out += &format!("  {mark} {}: {}\n", c.subject, c.message);
            if let Some(help) = &c.help {
                out += &format!("      help: {help}\n");
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        out += &format!(
            "\n{} passed, {} warning(s), {} failed.\n",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        );
        out
    }

    pub fn render_json(&self) -> String {
        let v = serde_json::json!({"checks": self.checks, "blocked": self.blocked()});
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

/// Every check, in the order a user fixes things: the cluster, KubeRay,
/// Karpenter and the stack's objects, GPUs, secrets, then permissions.
pub async fn examine(cluster: &Cluster, stack: Option<&Stack>) -> Report {
    let mut checks = vec![
        checks::version(cluster).await,
        checks::kuberay_crds(cluster),
        checks::kuberay_operator(cluster).await,
        checks::karpenter_apis(cluster),
    ];
    if let Some(stack) = stack {
        checks.extend(checks::karpenter_objects(cluster, stack).await);
    }
    checks.push(checks::gpus(cluster).await);
    if let Some(stack) = stack {
        checks.extend(checks::secret_sources(stack));
        checks.extend(checks::permissions(cluster, stack).await);
    }
    Report { checks }
}
