//! Printing shared by the commands: JSON documents, relative times, and the
//! progress bar of long byte streams.
//!
//! Human output goes to stdout (or stderr when stdout carries data); `--json`
//! prints one stable JSON document instead. A progress bar with throughput
//! and ETA is drawn on stderr only when it is a terminal and `--json` is not
//! given.

use std::{io::IsTerminal, sync::Arc};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::backup::progress::{Progress, ProgressObserver};

/// Prints `value` as pretty JSON on stdout, or on stderr when stdout carries data.
pub fn print_json<T: Serialize>(value: &T, to_stderr: bool) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    if to_stderr {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}

/// Prints a line on stdout, or on stderr when stdout carries data.
pub fn print_line(line: &str, to_stderr: bool) {
    if to_stderr {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// "in 3m 20s" / "5h ago" / "-".
pub fn relative(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else { return "-".into() };
    let d = t - now;
    let secs = d.num_seconds().unsigned_abs();
    let human = if secs >= 2 * 86_400 {
        format!("{}d", secs / 86_400)
    } else if secs >= 3_600 {
        format!("{}h{:02}m", secs / 3_600, (secs % 3_600) / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    };
    if d.num_seconds() >= 0 {
        format!("in {human}")
    } else {
        format!("{human} ago")
    }
}

/// A progress bar only on a terminal, and never with `--json`.
pub fn show_progress(json: bool, stderr_is_terminal: bool) -> bool {
    !json && stderr_is_terminal
}

const BAR: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";
const COUNT: &str = "{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}";
const SPINNER: &str = "{msg} {spinner} {bytes} {binary_bytes_per_sec}";

/// When the bar learns the stream's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLength {
    /// Becomes a bar with an ETA (the length is the object's size).
    Bar,
    /// Stays a spinner (the length is only a hint).
    Spinner,
    /// A bar of objects (not bytes) with an ETA.
    Count,
}

/// A progress bar on stderr (hidden unless [`show_progress`]) labelled
/// `verb`, and the handle the backup operations report to.
pub fn progress_bar(json: bool, verb: &str, on_length: OnLength) -> (ProgressBar, Progress) {
    if !show_progress(json, std::io::stderr().is_terminal()) {
        return (ProgressBar::hidden(), Progress::hidden());
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    set_template(
        &bar,
        if on_length == OnLength::Count {
            "{msg} {spinner} {pos}"
        } else {
            SPINNER
        },
    );
    bar.set_message(verb.to_string());
    let observer = Bar {
        bar: bar.clone(),
        on_length,
    };
    (bar, Progress::new(Arc::new(observer)))
}

fn set_template(bar: &ProgressBar, template: &str) {
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
}

struct Bar {
    bar: ProgressBar,
    on_length: OnLength,
}

impl ProgressObserver for Bar {
    fn set_length(&self, total: u64) {
        match self.on_length {
            OnLength::Bar => set_template(&self.bar, BAR),
            OnLength::Count => set_template(&self.bar, COUNT),
            OnLength::Spinner => {}
        }
        self.bar.set_length(total);
    }

    fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
}

/// Who runs the command, for audit actors (`cli/<user>`).
pub fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_on_a_terminal_without_json() {
        assert!(show_progress(false, true));
        assert!(!show_progress(true, true));
        assert!(!show_progress(false, false));
        assert!(!show_progress(true, false));
    }

    #[test]
    fn relative_times() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| Some(now + chrono::TimeDelta::seconds(s));
        assert_eq!(relative(None, now), "-");
        assert_eq!(relative(at(42), now), "in 42s");
        assert_eq!(relative(at(-200), now), "3m20s ago");
        assert_eq!(relative(at(3 * 3600 + 60), now), "in 3h01m");
        assert_eq!(relative(at(-3 * 86_400), now), "3d ago");
    }
}
