//! Where steps end: the splitting rules of `segment`, usable without the engine
//! (benchmarks, `evaluate`'s own step counts).

use std::ops::Range;

use memchr::memmem;
use regex::Regex;

/// Where steps end.
#[derive(Debug, Clone)]
pub enum Boundary {
    /// A literal delimiter; following whitespace joins the step it ends.
    Delimiter(String),
    /// A regex: the end of a match, or the start of its group 1.
    Regex(Regex),
}

/// The splitting rules, usable without the engine (benchmarks, other operators).
#[derive(Debug, Clone)]
pub struct Splitter {
    boundary: Boundary,
    finder: Option<memmem::Finder<'static>>,
    group: bool,
    min_chars: usize,
    max_steps: Option<usize>,
}

impl Splitter {
    /// `delimiter` must not be empty; `max_steps` must be at least 1.
    pub fn new(boundary: Boundary, min_chars: usize, max_steps: Option<usize>) -> Self {
        let (finder, group) = match &boundary {
            Boundary::Delimiter(d) => (Some(memmem::Finder::new(d.as_bytes()).into_owned()), false),
            Boundary::Regex(re) => (None, re.captures_len() > 1),
        };
        Self {
            boundary,
            finder,
            group,
            min_chars,
            max_steps,
        }
    }

    /// The default: blank lines, no merging, no cap.
    pub fn blank_lines() -> Self {
        Self::new(Boundary::Delimiter("\n\n".into()), 0, None)
    }

    /// Byte ranges of the steps of `text` into `out` (cleared first). They cover the
    /// text exactly; an empty or all-whitespace text has none.
    pub fn split_into(&self, text: &str, out: &mut Vec<Range<usize>>) {
        out.clear();
        if text.trim().is_empty() {
            return;
        }
        let mut pending: Option<usize> = None;
        let mut push = |frag: Range<usize>, out: &mut Vec<Range<usize>>| {
            if let Some(start) = pending {
                let acc = start..frag.end;
                if !self.is_short(&text[acc.clone()]) {
                    out.push(acc);
                    pending = None;
                }
            } else if !self.is_short(&text[frag.clone()]) {
                out.push(frag);
            } else if let Some(last) = out.last_mut() {
                last.end = frag.end;
            } else {
                pending = Some(frag.start);
            }
        };
        let bytes = text.as_bytes();
        let mut pos = 0usize;
        match (&self.boundary, &self.finder) {
            (Boundary::Delimiter(d), Some(finder)) => {
                while let Some(i) = finder.find(&bytes[pos..]) {
                    let mut end = pos + i + d.len();
                    end += text[end..].len() - text[end..].trim_start().len();
                    push(pos..end, out);
                    pos = end;
                    if pos >= bytes.len() {
                        break;
                    }
                }
            }
            (Boundary::Regex(re), _) => {
                for caps in re.captures_iter(text) {
                    let end = if self.group {
                        caps.get(1).map(|g| g.start())
                    } else {
                        caps.get(0).filter(|m| !m.is_empty()).map(|m| m.end())
                    };
                    if let Some(end) = end {
                        if end > pos && end < bytes.len() {
                            push(pos..end, out);
                            pos = end;
                        }
                    }
                }
            }
            (Boundary::Delimiter(_), None) => {}
        }
        if pos < bytes.len() {
            push(pos..bytes.len(), out);
        }
        if let Some(start) = pending {
            // Everything was short: one step.
            out.push(start..bytes.len());
        }
        if let Some(max) = self.max_steps {
            if out.len() > max.max(1) {
                let end = bytes.len();
                out.truncate(max.max(1));
                if let Some(last) = out.last_mut() {
                    last.end = end;
                }
            }
        }
    }

    /// Byte ranges of the steps of `text`.
    pub fn split(&self, text: &str) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        self.split_into(text, &mut out);
        out
    }

    /// Blank, or (with `min_chars`) fewer non-surrounding-whitespace characters.
    fn is_short(&self, frag: &str) -> bool {
        let t = frag.trim();
        if self.min_chars <= 1 {
            return t.is_empty();
        }
        t.chars().take(self.min_chars).count() < self.min_chars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &Splitter, t: &str) -> Vec<String> {
        s.split(t).into_iter().map(|r| t[r].to_string()).collect()
    }

    #[test]
    fn blank_lines_end_steps_and_cover_the_text() {
        let t = "First, 3+4=7.\n\nThen 7*2=14.\n\n\n  So the answer is 14.";
        let steps = texts(&Splitter::blank_lines(), t);
        assert_eq!(
            steps,
            [
                "First, 3+4=7.\n\n",
                "Then 7*2=14.\n\n\n  ",
                "So the answer is 14."
            ]
        );
        assert_eq!(steps.concat(), t);
    }

    #[test]
    fn leading_and_trailing_blanks_merge() {
        let t = "\n\nA\n\nB\n\n";
        let steps = texts(&Splitter::blank_lines(), t);
        assert_eq!(steps, ["\n\nA\n\n", "B\n\n"]);
        assert_eq!(texts(&Splitter::blank_lines(), "single"), ["single"]);
        assert!(Splitter::blank_lines().split("").is_empty());
        assert!(Splitter::blank_lines().split(" \n\n ").is_empty());
    }

    #[test]
    fn min_chars_merges_short_fragments() {
        let s = Splitter::new(Boundary::Delimiter("\n\n".into()), 5, None);
        let t = "Ok\n\nA longer step.\n\nyes\n\nAnother long one.\n\nno";
        assert_eq!(
            texts(&s, t),
            ["Ok\n\nA longer step.\n\nyes\n\n", "Another long one.\n\nno"]
        );
        // All short: one step.
        assert_eq!(texts(&s, "a\n\nb"), ["a\n\nb"]);
        // Leading short fragments accumulate until long enough.
        assert_eq!(
            texts(&s, "ab\n\ncd\n\nef\n\nlonger text"),
            ["ab\n\ncd\n\nef\n\n", "longer text"]
        );
    }

    #[test]
    fn max_steps_merges_the_tail() {
        let s = Splitter::new(Boundary::Delimiter("\n\n".into()), 0, Some(2));
        assert_eq!(texts(&s, "a\n\nb\n\nc\n\nd"), ["a\n\n", "b\n\nc\n\nd"]);
        let s1 = Splitter::new(Boundary::Delimiter("\n\n".into()), 0, Some(1));
        assert_eq!(texts(&s1, "a\n\nb"), ["a\n\nb"]);
    }

    #[test]
    fn regex_ends_and_groups() {
        let s = Splitter::new(Boundary::Regex(Regex::new(r"\.\s+").unwrap()), 0, None);
        assert_eq!(
            texts(&s, "One. Two.  Three."),
            ["One. ", "Two.  ", "Three."]
        );
        let g = Splitter::new(
            Boundary::Regex(Regex::new(r"\n(Step \d+)").unwrap()),
            0,
            None,
        );
        assert_eq!(
            texts(&g, "Step 1: a\nStep 2: b\nStep 3: c"),
            ["Step 1: a\n", "Step 2: b\n", "Step 3: c"]
        );
    }
}
