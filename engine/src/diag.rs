//! Located diagnostics: `FILE:LINE:COL: error: message` plus an optional help line.
//! Every spec problem becomes one of these, and validation collects all of them. Hints
//! for a wrong name come from [`sspo_common::suggest`], as everywhere in `sspo`.

use std::fmt;
use std::sync::Arc;

use sspo_common::suggest;
/// The shared "did you mean" (kept under its old path).
pub use sspo_common::suggest::did_you_mean;

/// A position in a source text (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    /// The file (or pseudo-source such as `--set`) the position is in.
    pub source: Arc<str>,
    pub line: u64,
    pub col: u64,
}

impl Loc {
    pub fn new(source: Arc<str>, line: u64, col: u64) -> Self {
        Self { source, line, col }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.source, self.line, self.col)
    }
}

/// One problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub loc: Option<Loc>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn at(loc: Option<Loc>, message: impl Into<String>) -> Self {
        Self {
            loc,
            message: message.into(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds "did you mean `x`?" when a close candidate exists.
    pub fn suggest<'a>(mut self, got: &str, candidates: impl IntoIterator<Item = &'a str>) -> Self {
        if let Some(best) = did_you_mean(got, candidates) {
            self.help = Some(format!("did you mean `{best}`?"));
        }
        self
    }

    /// Adds "did you mean `x`?" when a close candidate exists, else the list of valid
    /// names ([`sspo_common::suggest::help_for`]).
    pub fn help_for<'a>(
        mut self,
        got: &str,
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        if let Some(help) = suggest::help_for(got, candidates) {
            self.help = Some(help);
        }
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.loc {
            Some(loc) => write!(f, "{loc}: error: {}", self.message)?,
            None => write!(f, "error: {}", self.message)?,
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// All problems found in one pass; an error type in its own right.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
    /// `Ok(())` when empty, the collection itself otherwise.
    pub fn into_result(self) -> Result<(), Diagnostics> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
    /// Sorted by position so output reads top to bottom.
    pub fn sorted(mut self) -> Self {
        self.0.sort_by(|a, b| {
            let key = |d: &Diagnostic| {
                d.loc
                    .as_ref()
                    .map(|l| (l.source.to_string(), l.line, l.col))
            };
            key(a).cmp(&key(b))
        });
        self
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_falls_back_to_the_list_of_names() {
        let d = Diagnostic::at(None, "unknown operator `zzz`").help_for("zzz", ["source", "pair"]);
        assert_eq!(d.help.as_deref(), Some("expected one of: source, pair"));
        let d = Diagnostic::at(None, "unknown operator `sorce`").help_for("sorce", ["source"]);
        assert_eq!(d.help.as_deref(), Some("did you mean `source`?"));
    }

    #[test]
    fn renders_location_and_help() {
        let d = Diagnostic::at(Some(Loc::new("p.yaml".into(), 3, 5)), "unknown key `nmae`")
            .suggest("nmae", ["name", "seed"]);
        assert_eq!(
            d.to_string(),
            "p.yaml:3:5: error: unknown key `nmae`\n  help: did you mean `name`?"
        );
    }
}
