//! Stop strings: text is let through as it is generated, except a tail that could still be the
//! start of a stop string; when a stop string appears, the text before it is the end of the
//! answer and the stop string itself is left out, as the OpenAI API does.

pub struct StopStrings {
    stops: Vec<String>,
    /// Text received but not yet let through.
    held: String,
    stopped: bool,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Self {
        StopStrings { stops, held: String::new(), stopped: false }
    }

    /// Takes the next piece of text; returns what may be sent now. After a stop string was
    /// seen, [`StopStrings::stopped`] is true and nothing more comes out.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return out;
        }
        let keep = self.longest_pending_prefix();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        out
    }

    /// What is still held back, at the end of the answer.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Bytes at the end of the held text that begin some stop string (on a character boundary).
    fn longest_pending_prefix(&self) -> usize {
        let held = self.held.as_str();
        (1..=held.len())
            .rev()
            .filter(|&n| held.is_char_boundary(held.len() - n))
            .find(|&n| self.stops.iter().any(|s| s.len() > n && s.starts_with(&held[held.len() - n..])))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out: Vec<String> = pieces.iter().map(|p| s.push(p)).collect();
        out.push(s.finish());
        (out, s.stopped())
    }

    #[test]
    fn text_before_the_stop_string_comes_out_and_the_rest_does_not() {
        assert_eq!(
            run(&["\n\n"], &["Paris", ".\n", "\nNext", "more"]),
            (vec!["Paris".into(), ".".into(), "".into(), "".into(), "".into()], true)
        );
        assert_eq!(run(&["END"], &["abcE", "N", "x"]), (vec!["abc".into(), "".into(), "ENx".into(), "".into()], false));
        assert_eq!(run(&["b", "abc"], &["xab"]), (vec!["xa".into(), "".into()], true), "the earliest stop string wins");
        assert_eq!(run(&[], &["a", "b"]), (vec!["a".into(), "b".into(), "".into()], false));
        assert_eq!(run(&["é!"], &["café"]), (vec!["caf".into(), "é".into()], false), "held back on a character boundary");
    }
}
