//! Profiling windows: which engine iterations to record, from `LUMEN_PROFILE_START_STOP`
//! (`TLLM_PROFILE_START_STOP` is accepted too) or `--profile-iters`. A value is a comma list of
//! single iterations `N` and inclusive ranges `A-B`; ranges may not overlap.

use anyhow::{bail, Result};
use std::fmt;

/// Iteration ranges, inclusive at both ends, sorted and disjoint.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProfileWindows {
    ranges: Vec<(u64, u64)>,
}

/// The environment variables that name the windows, in order of precedence.
pub const WINDOW_VARS: [&str; 2] = ["LUMEN_PROFILE_START_STOP", "TLLM_PROFILE_START_STOP"];

impl ProfileWindows {
    /// Parses `10-20,50-60`, `7`, `0-3,9`; `source` names where the text came from for errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let number = |s: &str| -> Result<u64> {
                match s.trim().parse::<u64>() {
                    Ok(n) => Ok(n),
                    Err(_) => bail!("{source}={text:?}: {s:?} is not an iteration number; expected a list like 20-40 or 10-20,50-60"),
                }
            };
            let range = match part.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => {
                    let n = number(part)?;
                    (n, n)
                }
            };
            if range.0 > range.1 {
                bail!("{source}={text:?}: range {part} ends before it starts");
            }
            ranges.push(range);
        }
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            if pair[1].0 <= pair[0].1 {
                bail!("{source}={text:?}: ranges {}-{} and {}-{} overlap", pair[0].0, pair[0].1, pair[1].0, pair[1].1);
            }
        }
        Ok(ProfileWindows { ranges })
    }

    /// One window over iterations `first..=last`.
    pub fn between(first: u64, last: u64) -> Self {
        ProfileWindows { ranges: vec![(first.min(last), last)] }
    }

    /// One window over every iteration.
    pub fn all() -> Self {
        ProfileWindows { ranges: vec![(0, u64::MAX)] }
    }

    /// The windows set in the environment, with the variable that set them.
    pub fn from_env() -> Result<Option<(Self, &'static str)>> {
        for var in WINDOW_VARS {
            if let Ok(text) = std::env::var(var) {
                return Self::parse(&text, var).map(|w| Some((w, var)));
            }
        }
        Ok(None)
    }

    pub fn contains(&self, iter: u64) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= iter && iter <= b)
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// The last iteration any window covers.
    pub fn last(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }
}

impl fmt::Display for ProfileWindows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == ProfileWindows::all() {
            return f.write_str("all");
        }
        let parts: Vec<String> = self.ranges.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
        f.write_str(&parts.join(","))
    }
}

/// What the engine must do at an iteration boundary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WindowEvent {
    Open,
    Close,
}

/// Tracks whether a window is open as iterations go by.
#[derive(Debug, Clone, Default)]
pub struct WindowState {
    pub windows: ProfileWindows,
    open: bool,
}

impl WindowState {
    pub fn new(windows: ProfileWindows) -> Self {
        WindowState { windows, open: false }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Called before iteration `iter` runs.
    pub fn before(&mut self, iter: u64) -> Option<WindowEvent> {
        let inside = self.windows.contains(iter);
        (inside && !self.open).then(|| {
            self.open = true;
            WindowEvent::Open
        })
    }

    /// Called after iteration `iter` ran.
    pub fn after(&mut self, iter: u64) -> Option<WindowEvent> {
        (self.open && !self.windows.contains(iter + 1)).then(|| {
            self.open = false;
            WindowEvent::Close
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_singles_and_lists() {
        let w = ProfileWindows::parse("50-60, 10-20,7", "X").unwrap();
        assert_eq!(w.ranges(), &[(7, 7), (10, 20), (50, 60)]);
        assert!(w.contains(10) && w.contains(20) && w.contains(7) && !w.contains(21) && !w.contains(8));
        assert_eq!(w.to_string(), "7,10-20,50-60");
        assert_eq!(ProfileWindows::all().to_string(), "all");
        assert!(ProfileWindows::all().contains(u64::MAX - 1));
    }

    #[test]
    fn rejects_malformed_and_overlapping_values() {
        for (text, want) in [
            ("", "is not an iteration number"),
            ("a-b", "\"a\" is not an iteration number"),
            ("20-10", "ends before it starts"),
            ("10-20,15-30", "overlap"),
            ("5,5", "overlap"),
            ("-3", "is not an iteration number"),
            ("1-2-3", "is not an iteration number"),
        ] {
            let e = ProfileWindows::parse(text, "LUMEN_PROFILE_START_STOP").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("LUMEN_PROFILE_START_STOP"), "{text:?}: {e}");
        }
    }

    #[test]
    fn state_opens_and_closes_at_the_boundaries() {
        let mut s = WindowState::new(ProfileWindows::parse("2-3,5", "X").unwrap());
        let mut events = Vec::new();
        for iter in 0..8 {
            if let Some(e) = s.before(iter) {
                events.push((iter, e));
            }
            if let Some(e) = s.after(iter) {
                events.push((iter, e));
            }
        }
        use WindowEvent::*;
        assert_eq!(events, vec![(2, Open), (3, Close), (5, Open), (5, Close)]);
    }
}
