//! Output habits: results on stdout, progress and errors on stderr, colour
//! as `--color`, NO_COLOR and CLICOLOR_FORCE say, and a closed pipe is not
//! an error.

use std::io::{IsTerminal as _, Write as _};

use anstyle::{AnsiColor, Style};
use rayform::util::Paint;

use super::args::ColorWhen;

#[derive(Clone)]
pub struct Out {
    color_out: bool,
    color_err: bool,
    verbose: u8,
}

impl Out {
    /// Colour as the conventions say (no-color.org, bixense.com/clicolors):
    /// an explicit `--color` wins; in `auto`, a non-empty NO_COLOR turns it
    /// off, a CLICOLOR_FORCE other than 0 on, else a terminal decides.
    pub fn new(when: ColorWhen, verbose: u8) -> Out {
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
            verbose,
        }
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
        let _ = stdout.write_all(text.as_bytes());
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
        let _ = writeln!(std::io::stderr().lock(), "{address}: {message}");
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
        let _ = writeln!(std::io::stderr().lock(), "{label} {message}");
    }

    pub fn debug(&self, message: &str) {
        if self.verbose > 0 {
            let _ = writeln!(std::io::stderr().lock(), "debug: {message}");
        }
    }
}

/// Logs through `tracing`, where kube-rs already reports its requests:
/// `RAYFORM_LOG` takes a filter (`debug`, `rayform=trace,kube=debug`), else
/// `-v` shows rayform's own debug events and `-vv` also kube's requests.
/// The HTTP and TLS layers stay at `info` whatever is asked: below it they
/// log headers and bytes, which may carry a bearer token or a Secret body.
pub fn init_logs(verbose: u8, color: bool) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .try_init()
        .map_err(|e| format!("cannot start logging: {e}"))
}
