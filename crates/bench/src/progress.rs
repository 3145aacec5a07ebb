//! Progress reporting for long benchmark phases, always on stderr so stdout
//! stays clean for reports and `--stdout` datasets. On a terminal it draws an
//! indicatif bar; otherwise (logs, CI) it prints a plain line such as
//! `[lumen] requests 32/64 (50%) 12.3 s` at most once per 10% of progress,
//! plus a final line from [`Progress::finish`].

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const BAR_TEMPLATE: &str = "[lumen] {msg} [{bar:40}] {pos}/{len} ({percent}%) {elapsed_precise} eta {eta}";

/// A progress reporter over `total` units of work.
pub struct Progress {
    total: u64,
    done: u64,
    label: String,
    start: Instant,
    sink: Sink,
}

enum Sink {
    Bar(ProgressBar),
    Lines(LineThrottle),
}

/// Decides when a plain line is due: on entering a new tenth of progress.
#[derive(Default)]
struct LineThrottle {
    /// The count of the last printed line.
    printed: Option<u64>,
    /// The tenth of progress (0..=10) of the last printed line.
    tenth: u64,
}

impl LineThrottle {
    /// Whether a line is due at `done` of `total`; records it as printed if so.
    fn due(&mut self, done: u64, total: u64) -> bool {
        let now = tenths(done, total);
        if now <= self.tenth {
            return false;
        }
        self.tenth = now;
        self.printed = Some(done);
        true
    }
}

impl Progress {
    /// Starts reporting; picks the bar when stderr is a terminal.
    pub fn new(total: u64, label: &str) -> Self {
        let sink = if std::io::stderr().is_terminal() {
            let style = ProgressStyle::with_template(BAR_TEMPLATE).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
            let bar = ProgressBar::new(total).with_style(style).with_message(label.to_owned());
            Sink::Bar(bar)
        } else {
            Sink::Lines(LineThrottle::default())
        };
        Progress { total, done: 0, label: label.to_owned(), start: Instant::now(), sink }
    }

    /// Records `n` more completed units.
    pub fn inc(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        match &mut self.sink {
            Sink::Bar(bar) => bar.inc(n),
            Sink::Lines(throttle) => {
                if throttle.due(self.done, self.total) {
                    lumen_trace::status!("{}", format_line(&self.label, self.done, self.total, self.start.elapsed()));
                }
            }
        }
    }

    /// Ends reporting: completes the bar, or prints the final count unless
    /// that exact count was the last line printed.
    pub fn finish(self) {
        match self.sink {
            Sink::Bar(bar) => bar.finish(),
            Sink::Lines(throttle) => {
                if throttle.printed != Some(self.done) {
                    lumen_trace::status!("{}", format_line(&self.label, self.done, self.total, self.start.elapsed()));
                }
            }
        }
    }
}

/// Completed tenths of the work, 0..=10 (10 when `total` is 0).
fn tenths(done: u64, total: u64) -> u64 {
    percent(done, total) / 10
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    (u128::from(done.min(total)) * 100 / u128::from(total)) as u64
}

/// The plain progress line: `[lumen] LABEL DONE/TOTAL (PCT%) SECONDS s`.
pub fn format_line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    format!("[lumen] {label} {done}/{total} ({}%) {:.1} s", percent(done, total), elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format() {
        assert_eq!(format_line("requests", 32, 64, Duration::from_millis(12_345)), "[lumen] requests 32/64 (50%) 12.3 s");
        assert_eq!(format_line("warm-up", 0, 3, Duration::ZERO), "[lumen] warm-up 0/3 (0%) 0.0 s");
        assert_eq!(format_line("requests", 2, 3, Duration::from_secs(1)), "[lumen] requests 2/3 (66%) 1.0 s");
        assert_eq!(format_line("empty", 0, 0, Duration::from_secs(2)), "[lumen] empty 0/0 (100%) 2.0 s");
        assert_eq!(format_line("over", 5, 4, Duration::ZERO), "[lumen] over 5/4 (100%) 0.0 s");
    }

    #[test]
    fn lines_at_most_every_tenth() {
        let mut throttle = LineThrottle::default();
        let due: Vec<u64> = (1..=64).filter(|&done| throttle.due(done, 64)).collect();
        // First counts reaching 10%, 20%, ... 100% of 64.
        assert_eq!(due, vec![7, 13, 20, 26, 32, 39, 45, 52, 58, 64]);
        assert_eq!(throttle.printed, Some(64));

        let mut throttle = LineThrottle::default();
        assert!(throttle.due(3, 3));
        assert!(!throttle.due(4, 3));
        let mut throttle = LineThrottle::default();
        assert!(!throttle.due(1, 1000));
        assert_eq!(throttle.printed, None);
        let mut throttle = LineThrottle::default();
        assert!(throttle.due(0, 0));
    }
}
