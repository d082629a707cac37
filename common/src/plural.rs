//! Count phrases that agree with their number: `1 row was skipped`, `2 rows were
//! skipped`. A phrase is written once, with each word that changes given as
//! `{singular|plural}`: `"row{|s} without a prompt {was|were} skipped"`.

/// `phrase` with every `{singular|plural}` resolved for `n`. Text outside braces is kept
/// as written; a brace group without `|` is kept whole (braces included), so a phrase
/// that quotes `{...}` is safe.
pub fn agree(n: u64, phrase: &str) -> String {
    let mut out = String::with_capacity(phrase.len());
    let mut rest = phrase;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let group = &after[..close];
        match group.split_once('|') {
            Some((one, many)) => out.push_str(if n == 1 { one } else { many }),
            None => {
                out.push('{');
                out.push_str(group);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::agree;

    #[test]
    fn words_agree_with_the_count() {
        let phrase = "row{|s} without a prompt {was|were} skipped";
        assert_eq!(agree(1, phrase), "row without a prompt was skipped");
        assert_eq!(agree(2, phrase), "rows without a prompt were skipped");
        assert_eq!(agree(0, phrase), "rows without a prompt were skipped");
    }

    #[test]
    fn text_without_groups_and_unclosed_or_plain_braces_is_kept() {
        assert_eq!(agree(1, "responses (kept)"), "responses (kept)");
        assert_eq!(agree(1, "a {json} value"), "a {json} value");
        assert_eq!(agree(3, "open {brace"), "open {brace");
    }
}
