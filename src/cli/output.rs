//! Output habits: results on stdout, progress and errors on stderr, colour
//! as `--color`, NO_COLOR and CLICOLOR_FORCE say, and a closed pipe is not
//! an error.
//!
//! Everything printed, logs included, goes through the run's
//! [`Redactor`]: once the stack's secret values are read, no message quotes
//! one, whoever wrote the message (the API server, a webhook, a library).

use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, PoisonError, RwLock};

use anstyle::{AnsiColor, Style};
use rayform::secret::Redactor;
use rayform::util::Paint;

use super::args::ColorWhen;

#[derive(Clone)]
pub struct Out {
    color_out: bool,
    color_err: bool,
    masks: Masks,
}

/// The secret values of this run, shared by every clone of [`Out`] and the
/// log writer; filled in once the values are read.
#[derive(Clone, Default)]
pub struct Masks(Arc<RwLock<Redactor>>);

impl Masks {
    pub fn add(&self, redactor: &Redactor) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .merge(redactor);
    }

    pub fn redact(&self, text: &str) -> String {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .redact(text)
            .into_owned()
    }
}

impl Out {
    /// Colour as the conventions say (no-color.org, bixense.com/clicolors):
    /// an explicit `--color` wins; in `auto`, a non-empty NO_COLOR turns it
    /// off, a CLICOLOR_FORCE other than 0 on, else a terminal decides.
    pub fn new(when: ColorWhen) -> Out {
        let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0");
        let on = |terminal: bool| match when {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) => false,
            ColorWhen::Auto => set("CLICOLOR_FORCE") || terminal,
        };
        Out {
            color_out: on(std::io::stdout().is_terminal()),
            color_err: on(std::io::stderr().is_terminal()),
            masks: Masks::default(),
        }
    }

    /// What is masked in everything this prints (and in the logs).
    pub fn masks(&self) -> &Masks {
        &self.masks
    }

    pub fn color_err(&self) -> bool {
        self.color_err
    }

    pub fn render_options(&self) -> rayform::plan::RenderOptions {
        rayform::plan::RenderOptions {
            color: self.color_out,
        }
    }

    /// Text as it is, to stdout.
    pub fn raw(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        // A reader that went away (`| head`) is not our failure.
        let _ = stdout.write_all(self.masks.redact(text).as_bytes());
        let _ = stdout.flush();
    }

    pub fn line(&self, text: &str) {
        self.raw(&format!("{text}\n"));
    }

    pub fn prompt(&self, text: &str) {
        self.raw(text);
    }

    /// `address: message` on stderr, as Terraform reports progress.
    pub fn progress(&self, address: &str, message: &str) {
        let address = Paint(self.color_err).bold(address);
        let line = self.masks.redact(&format!("{address}: {message}"));
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    /// A line on stderr about why the run waits (a held Lease it watches).
    pub fn note(&self, message: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{message}");
    }

    pub fn error(&self, message: &str) {
        self.labelled(AnsiColor::Red, "Error:", message);
    }

    pub fn warn(&self, message: &str) {
        self.labelled(AnsiColor::Yellow, "Warning:", message);
    }

    /// `label message` on stderr, the label bold in `color` when stderr takes colour.
    fn labelled(&self, color: AnsiColor, label: &str, message: &str) {
        let style = Style::new().bold().fg_color(Some(color.into()));
        let label = Paint(self.color_err).style(style, label);
        let message = self.masks.redact(message);
        let _ = writeln!(std::io::stderr().lock(), "{label} {message}");
    }
}

/// Logs through `tracing`, where kube-rs already reports its requests:
/// `RAYFORM_LOG` takes a filter (`debug`, `rayform=trace,kube=debug`), else
/// `-v` shows rayform's own debug events and `-vv` also kube's requests.
/// The HTTP and TLS layers stay at `info` whatever is asked: below it they
/// log headers and bytes, which may carry a bearer token or a Secret body.
/// kube's client module is not heard at all: it logs whole response bodies
/// (an error's, or any it cannot parse: a Secret's data whose values this
/// run does not know); rayform logs an API refusal itself, at debug. What
/// is logged is masked as all output is (see [`Masks`]).
pub fn init_logs(verbose: u8, color: bool, masks: &Masks) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let spec = match std::env::var("RAYFORM_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec,
        _ => match verbose {
            0 => "off",
            1 => "rayform=debug",
            _ => "rayform=trace,kube=debug",
        }
        .to_string(),
    };
    let filter = EnvFilter::builder().parse(&spec).map_err(|e| {
        format!(
            "RAYFORM_LOG=`{spec}` is not a log filter: {e}\n  help: e.g. RAYFORM_LOG=debug, or RAYFORM_LOG=rayform=trace,kube=debug"
        )
    })?;
    let filter = ["hyper", "hyper_util", "h2", "rustls", "tower", "tower_http"]
        .iter()
        .filter_map(|target| format!("{target}=info").parse().ok())
        .fold(filter, EnvFilter::add_directive);
    let bodies = tracing_subscriber::filter::filter_fn(|m| m.target() != KUBE_BODIES);
    let masks = masks.clone();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(move || Masked {
            line: Vec::new(),
            masks: masks.clone(),
        })
        .with_ansi(color)
        .with_filter(filter)
        .with_filter(bodies);
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .map_err(|e| format!("cannot start logging: {e}"))
}

/// The module of kube-client that logs response bodies (its request and
/// response events come from `kube_client::client::builder`, which stays).
const KUBE_BODIES: &str = "kube_client::client";

/// One log event, gathered whole and masked before it reaches stderr.
struct Masked {
    line: Vec<u8>,
    masks: Masks,
}

impl std::io::Write for Masked {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Masked {
    fn drop(&mut self) {
        let text = self.masks.redact(&String::from_utf8_lossy(&self.line));
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// What an operation has to say along the way, said as the terminal says it.
impl rayform::ops::Notes for Out {
    fn note(&self, message: &str) {
        Out::note(self, message);
    }

    fn warn(&self, message: &str) {
        Out::warn(self, message);
    }

    fn mask(&self, values: &rayform::secret::Redactor) {
        self.masks.add(values);
    }

    fn redact(&self, text: &str) -> String {
        self.masks.redact(text)
    }
}
