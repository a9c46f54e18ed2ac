//! The progress bar on stderr: shown only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::LoadArgs;
use crate::pace::{Pattern, NS};
use crate::run::Shared;

/// A progress bar over published messages (burst) or time (timed
/// patterns), with live rates in its message.
pub(crate) struct Progress {
    bar: ProgressBar,
    by_time: bool,
    last: Mutex<(u64, u64, u64)>,
}

/// Whether a progress bar should be drawn.
pub(crate) fn wanted(no_progress: bool, json: bool) -> bool {
    !no_progress && !json && std::io::stderr().is_terminal()
}

/// A bar of `len` steps, hidden unless [`wanted`].
pub(crate) fn bar(len: u64, show: bool, template: &str) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr_with_hz(5)
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

impl Progress {
    pub(crate) fn new(load: &LoadArgs, pattern: &Pattern, _producers: u32) -> Self {
        let show = wanted(load.no_progress, load.json);
        let (len, by_time) = match *pattern {
            Pattern::Burst { messages } => (messages, false),
            _ => (pattern.duration_ns().unwrap_or(0) / 1_000_000, true),
        };
        let template = if by_time {
            "{spinner} [{elapsed_precise}] [{bar:30}] {msg}"
        } else {
            "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}"
        };
        Self {
            bar: bar(len, show, template),
            by_time,
            last: Mutex::new((0, 0, 0)),
        }
    }

    /// Redraws from the shared counters (called every 100 ms).
    pub(crate) fn update(&self, shared: &Shared, now_ns: u64) {
        if self.bar.is_hidden() {
            return;
        }
        let published = shared.published.load(Ordering::Relaxed);
        let consumed = shared.consumed.load(Ordering::Relaxed);
        let mut last = self.last.lock().unwrap();
        let (t0, p0, c0) = *last;
        let dt = now_ns.saturating_sub(t0);
        if dt >= NS {
            let secs = dt as f64 / NS as f64;
            let pub_rate = (published - p0) as f64 / secs;
            let con_rate = (consumed - c0) as f64 / secs;
            self.bar.set_message(format!(
                "pub {published} ({}/s)  consumed {consumed} ({}/s)",
                human(pub_rate),
                human(con_rate)
            ));
            *last = (now_ns, published, consumed);
        }
        if self.by_time {
            self.bar.set_position(now_ns / 1_000_000);
        } else {
            self.bar.set_position(published);
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// 12345.6 -> "12.3k".
pub(crate) fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
