//! "Did you mean": the one place that turns a wrong name and the valid ones into a hint.
//! Spec keys, operator names, params, node names and CLI arguments all use it, so every
//! such error reads the same.

/// The closest candidate by Jaro-Winkler similarity, when it is close enough to be a
/// plausible typo.
pub fn did_you_mean<'a>(
    got: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(got, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

/// `did you mean `x`?` for a close candidate, else `expected one of: a, b, c` (or `None`
/// when there are no candidates at all).
pub fn help_for<'a>(got: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    did_you_mean(got, candidates.iter().copied())
        .map(|s| format!("did you mean `{s}`?"))
        .or_else(|| expected_one_of(candidates))
}

/// `expected one of: a, b, c`, or `None` when the list is empty.
pub fn expected_one_of<'a>(candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let names: Vec<&str> = candidates.into_iter().collect();
    (!names.is_empty()).then(|| format!("expected one of: {}", names.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("segmnet", ["source", "segment", "generate"]),
            Some("segment".into())
        );
        assert_eq!(did_you_mean("zzz", ["source", "segment"]), None);
    }

    #[test]
    fn help_falls_back_to_the_list() {
        assert_eq!(
            help_for("avx3", ["native", "avx2"]).as_deref(),
            Some("did you mean `avx2`?")
        );
        assert_eq!(
            help_for("zzz", ["native", "avx2"]).as_deref(),
            Some("expected one of: native, avx2")
        );
        assert_eq!(help_for("zzz", []), None);
    }
}
