//! The early-exit answer: where it ends in greedy text, and whether it is correct.

use crate::tasks::AnswerFormat;

/// Where the early answer ends in decoded greedy text: the first newline after the answer
/// started, or the first period followed by whitespace. `complete` is false while more
/// tokens could still extend the answer.
pub fn cut_early_answer(text: &str) -> (String, bool) {
    let t = text.trim_start();
    let bytes = t.as_bytes();
    let mut end = None;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            end = Some(i);
            break;
        }
        if b == b'.' && bytes.get(i + 1).is_some_and(|c| c.is_ascii_whitespace()) {
            end = Some(i);
            break;
        }
    }
    match end {
        Some(e) => (clean(&t[..e]), true),
        None => (clean(t), false),
    }
}

fn clean(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    s.trim().to_string()
}

/// Whether an early answer matches the reference: as written, or as the answer format
/// extracts it from the early text.
pub fn early_is_correct(fmt: &AnswerFormat, early: &str, reference: &str) -> bool {
    if early.trim().is_empty() {
        return false;
    }
    fmt.verify(early, reference)
        || fmt
            .extract(early)
            .is_some_and(|e| fmt.verify(&e, reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_answer_cut() {
        assert_eq!(cut_early_answer(" 24. So"), ("24".into(), true));
        assert_eq!(
            cut_early_answer(" 3.5 apples"),
            ("3.5 apples".into(), false)
        );
        assert_eq!(cut_early_answer(" 3.5.\n"), ("3.5".into(), true));
        assert_eq!(cut_early_answer(" 7\nStep"), ("7".into(), true));
        assert_eq!(cut_early_answer("\n 7."), ("7".into(), false));
        assert_eq!(cut_early_answer(""), (String::new(), false));
    }
}
