//! What the wait says as it goes, as data: each line of progress is a
//! [`Progress`] event, which the CLI prints as the line it always was or,
//! with `apply --json`, as one JSON object for CI to read.
//!
//! Why data and not text: a CI job that wants to know that a pod cannot pull
//! its image, or how far Karpenter got with a node, should not parse English.
//! The field names are a contract (docs/readiness.md): `type`, `elapsed`,
//! `link`, `object`, `message`, and `stuck`/`help` when the cause will not go
//! away by itself.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::ReadinessError;
use super::pods::PodAccount;

/// After this long without a line, one saying the wait goes on.
const STILL_EVERY: Duration = Duration::from_secs(10);

/// What kind of thing an event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Said {
    /// The wait moved on to another phase: what it waits for now.
    Phase,
    /// Nothing was said for a while; the wait goes on (pulls say how long so far).
    Still,
    /// A pod's line changed.
    Pod,
    /// The complete account (`-v`), when any of it changed.
    Account,
    /// The wait ends on a cause that will not go away by itself.
    Failed,
}

/// The link of the chain from the RayService down to a request that answers:
/// the one the wait is held up by when the event is said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// The RayService to exist.
    #[default]
    Rayservice,
    /// KubeRay: name a RayCluster, observe the spec, switch traffic, say Ready.
    Kuberay,
    /// A running head pod of the RayCluster KubeRay named.
    HeadPod,
    /// Serve on that head running the stack's config (the dashboard).
    ServeConfig,
    /// Serve's route table serving the path.
    Routes,
    /// A real request answering.
    Probe,
}

/// One event of the wait.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    #[serde(rename = "type")]
    pub said: Said,
    /// Seconds since the wait started.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
    pub link: Link,
    /// What the event is about: `rayservice/NAME`, `raycluster/NAME`, `pod/NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub message: String,
    /// The cause that will not go away by itself (a pod that is stuck, or
    /// the one the wait fails on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    // Milliseconds are all a reader can use; more digits would be noise.
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// The line a terminal shows, as before events were data. A `failed` event
/// is the wait's error, which the caller prints once.
impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = format!("[{:.1}s elapsed]", self.elapsed.as_secs_f64());
        match self.said {
            Said::Phase => write!(f, "Waiting for {} {at}", self.message),
            Said::Still => write!(f, "Still waiting for {} {at}", self.message),
            Said::Pod => write!(f, "  {} {at}", self.message),
            Said::Account => write!(f, "Account of the wait {at}:\n{}", self.message),
            Said::Failed => match &self.help {
                Some(help) => write!(f, "{}\n  help: {help}", self.message),
                None => f.write_str(&self.message),
            },
        }
    }
}

/// Where the wait's events go.
pub type Sink = Arc<dyn Fn(Progress) + Send + Sync>;

/// How much the wait says: a line when the phase or a pod changes, or also
/// the complete account of every link when any of it changes (`-v`), which
/// costs a few more reads a look (the RayClusters, KubeRay's Events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detail {
    #[default]
    Changes,
    Complete,
}

/// Says the wait's events: each phase once, a pod's line when it changes,
/// "still waiting" after a silence, the account when it changes.
pub(super) struct Reporter {
    sink: Sink,
    started: Instant,
    rayservice: String,
    /// The phase last said.
    reported: String,
    /// When to say "still waiting" if nothing is said before.
    next_still: Duration,
    /// The complete account last said, without its clocks.
    account: String,
}

impl Reporter {
    pub fn new(sink: Sink, rayservice: &str) -> Reporter {
        Reporter {
            sink,
            started: Instant::now(),
            rayservice: rayservice.to_string(),
            reported: String::new(),
            next_still: STILL_EVERY,
            account: String::new(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The phase last said: what the wait is held up by.
    pub fn reported(&self) -> &str {
        &self.reported
    }

    fn say(&mut self, said: Said, at: &At, message: String) -> Progress {
        let event = Progress {
            said,
            elapsed: self.elapsed(),
            link: at.link,
            object: at.object.clone(),
            message,
            stuck: None,
            help: None,
        };
        self.next_still = event.elapsed + STILL_EVERY;
        event
    }

    /// The phase, if it is a new one; else, after a silence, that the wait
    /// goes on, with the pulls under way and how long they have taken.
    pub fn phase(&mut self, at: &At, phase: &str, pulls: Option<String>) {
        if phase != self.reported {
            tracing::debug!(rayservice = %self.rayservice, %phase, "readiness");
            self.reported = phase.to_string();
            let event = self.say(Said::Phase, at, phase.to_string());
            (self.sink)(event);
        } else if self.elapsed() >= self.next_still {
            let message = match pulls {
                Some(pulls) => format!("{phase} ({pulls})"),
                None => phase.to_string(),
            };
            let event = self.say(Said::Still, at, message);
            (self.sink)(event);
        }
    }

    /// A pod's line that changed, with its cause when it is stuck.
    pub fn pod(&mut self, at: &At, pod: &PodAccount) {
        let about = At {
            link: at.link,
            object: Some(format!("pod/{}", pod.pod)),
        };
        let mut event = self.say(Said::Pod, &about, pod.to_string());
        if let Some(stuck) = pod.stuck() {
            event.stuck = Some(stuck.cause);
            event.help = Some(stuck.help.to_string());
        }
        (self.sink)(event);
    }

    /// The complete account, when `key` (the account without its clocks) changed.
    pub fn account(&mut self, at: &At, key: String, text: impl FnOnce() -> String) {
        if key == self.account {
            return;
        }
        self.account = key;
        let event = self.say(Said::Account, at, text());
        (self.sink)(event);
    }

    /// Says why the wait ends, and returns the error that ends it.
    pub fn fail(&mut self, at: &At, cause: String, help: Option<String>) -> ReadinessError {
        let mut event = self.say(Said::Failed, at, cause.clone());
        event.stuck = Some(cause.clone());
        event.help = help.clone();
        (self.sink)(event);
        let help = help.map(|h| format!("\n  help: {h}")).unwrap_or_default();
        ReadinessError::Failed(format!("rayservice.{}: {cause}{help}", self.rayservice))
    }
}

/// Where the wait is: the link it is held up by, and the object that is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct At {
    pub link: Link,
    pub object: Option<String>,
}

impl At {
    pub fn new(link: Link, object: impl Into<String>) -> At {
        At {
            link,
            object: Some(object.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(said: Said, message: &str) -> Progress {
        Progress {
            said,
            elapsed: Duration::from_millis(12_345),
            link: Link::HeadPod,
            object: Some("raycluster/echo-x7k2p".into()),
            message: message.into(),
            stuck: None,
            help: None,
        }
    }

    #[test]
    fn a_terminal_reads_the_lines_it_always_did() {
        let phase = said(Said::Phase, "a running head pod of RayCluster echo-x7k2p");
        assert_eq!(
            phase.to_string(),
            "Waiting for a running head pod of RayCluster echo-x7k2p [12.3s elapsed]"
        );
        let pod = said(Said::Pod, "pod p (head): pulling image i");
        assert_eq!(
            pod.to_string(),
            "  pod p (head): pulling image i [12.3s elapsed]"
        );
    }

    #[test]
    fn the_json_fields_are_the_documented_ones() {
        let mut failed = said(Said::Failed, "pod p (head) cannot pull image i: not found");
        failed.stuck = Some(failed.message.clone());
        failed.help = Some("check the image name".into());
        assert_eq!(
            serde_json::to_value(&failed).expect("json"),
            serde_json::json!({"type": "failed", "elapsed": 12.345, "link": "head_pod",
                "object": "raycluster/echo-x7k2p", "message": "pod p (head) cannot pull image i: not found",
                "stuck": "pod p (head) cannot pull image i: not found", "help": "check the image name"})
        );
        let quiet = serde_json::to_value(said(Said::Still, "x")).expect("json");
        assert_eq!(quiet.get("stuck"), None, "{quiet}");
    }
}
