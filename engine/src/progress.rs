//! Progress of a run: one indicatif bar per node on a terminal, plain log lines
//! (at most one every few seconds per node) otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Bars,
    Log,
    Quiet,
}

impl ProgressMode {
    /// Bars on a terminal, log lines otherwise.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Log
        }
    }
}

/// The run-wide progress display.
pub struct Progress {
    mode: ProgressMode,
    multi: MultiProgress,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let multi = match mode {
            ProgressMode::Bars => MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            _ => MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
        };
        Self { mode, multi }
    }

    /// A message line that does not tear the bars.
    pub fn println(&self, line: &str) {
        match self.mode {
            ProgressMode::Bars => {
                let _ = self.multi.println(line);
            }
            ProgressMode::Log => eprintln!("{line}"),
            ProgressMode::Quiet => {}
        }
    }

    /// A bar (or log stream) for one node.
    pub fn node(&self, node: &str, unit: &str) -> NodeProgress {
        let bar = match self.mode {
            ProgressMode::Bars => {
                let bar = self.multi.add(ProgressBar::new(0));
                let style = ProgressStyle::with_template(
                    "{prefix:>14.bold} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({per_sec}, ETA {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(node.to_string());
                bar.set_message(unit.to_string());
                Some(bar)
            }
            _ => None,
        };
        NodeProgress {
            node: node.to_string(),
            unit: unit.to_string(),
            mode: self.mode,
            bar,
            state: Mutex::new(LogState {
                total: 0,
                done: 0,
                resumed_from: 0,
                start: Instant::now(),
                last_log: Instant::now(),
                extra: String::new(),
            }),
        }
    }

    /// A one-line entry for a node that did not run.
    pub fn skipped(&self, node: &str, why: &str) {
        match self.mode {
            ProgressMode::Bars => {
                let bar = self.multi.add(ProgressBar::new(1));
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>14.bold} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_prefix(node.to_string());
                bar.finish_with_message(why.to_string());
            }
            ProgressMode::Log => eprintln!("[{node}] {why}"),
            ProgressMode::Quiet => {}
        }
    }
}

struct LogState {
    total: u64,
    done: u64,
    /// Work committed by an earlier run: excluded from the rate and ETA.
    resumed_from: u64,
    start: Instant,
    last_log: Instant,
    extra: String,
}

/// Progress of one node; cheap to update from any thread.
pub struct NodeProgress {
    node: String,
    unit: String,
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    state: Mutex<LogState>,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl NodeProgress {
    pub fn set_total(&self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
        if let Ok(mut s) = self.state.lock() {
            s.total = total;
        }
    }

    /// Marks work already done by an earlier run (resume), so rates count only new work.
    pub fn set_done(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.reset_eta();
        }
        if let Ok(mut s) = self.state.lock() {
            s.done = done;
            s.resumed_from = done;
        }
    }

    /// A short extra figure shown after the unit (e.g. "1830 tok/s").
    pub fn set_extra(&self, extra: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} {extra}", self.unit));
        }
        if let Ok(mut s) = self.state.lock() {
            s.extra = extra.to_string();
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if self.mode != ProgressMode::Log {
            return;
        }
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.done += n;
        if s.last_log.elapsed() >= LOG_EVERY {
            s.last_log = Instant::now();
            let secs = s.start.elapsed().as_secs_f64().max(1e-9);
            let rate = n_per_s(s.done.saturating_sub(s.resumed_from), secs);
            let eta = if s.total > s.done && rate > 0.0 {
                format!(", ETA {:.0}s", (s.total - s.done) as f64 / rate)
            } else {
                String::new()
            };
            eprintln!(
                "[{}] {}/{} {} ({rate:.1}/s{eta}) {}",
                self.node, s.done, s.total, self.unit, s.extra
            );
        }
    }

    pub fn finish(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(format!("{} {message}", self.unit));
        } else if self.mode == ProgressMode::Log {
            eprintln!("[{}] {message}", self.node);
        }
    }

    pub fn abandon(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.abandon_with_message(message.to_string());
        } else if self.mode == ProgressMode::Log {
            eprintln!("[{}] {message}", self.node);
        }
    }
}

fn n_per_s(n: u64, secs: f64) -> f64 {
    n as f64 / secs
}
