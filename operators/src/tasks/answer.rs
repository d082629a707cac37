//! Final answers: extraction from free text and verification against a reference.
//!
//! An [`AnswerFormat`] is chosen per pipeline (`answer_format:` in `source`, and later in
//! `generate` / `evaluate`). [`AnswerFormat::extract`] pulls the final answer out of a
//! response; [`AnswerFormat::extract_reference`] does the same for a dataset's answer
//! cell, which may be either a bare answer (`42`, `\frac{3}{4}`, `B`) or a worked
//! solution (`... #### 72`). [`verify`] compares a prediction with a reference: as
//! numbers when both read as numbers (`1,000` = `1000`, `3.50` = `3.5`, `3/4` =
//! `\frac{3}{4}` = `0.75`, `$5` = `5 dollars`), otherwise as normalised strings (trimmed,
//! case-folded, trailing period dropped).

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// How the final answer is written in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerFormat {
    /// GSM8K: the last line `#### 72`.
    Gsm8k,
    /// LaTeX `\boxed{...}` (the last one; nested braces allowed).
    Boxed,
    /// "The answer is ...", "The final answer is ...", "Answer: ...".
    AnswerIs,
    /// A multiple-choice letter A–J: "Answer: B", "(B)", a final "B.".
    Choice,
    /// The last number in the text (integers, decimals, thousands commas, fractions).
    LastNumber,
    /// `\boxed{}`, then `####`, then "the answer is", then the last number.
    #[default]
    Auto,
}

impl AnswerFormat {
    /// The spec name (`gsm8k`, `boxed`, ...).
    pub fn name(self) -> &'static str {
        match self {
            AnswerFormat::Gsm8k => "gsm8k",
            AnswerFormat::Boxed => "boxed",
            AnswerFormat::AnswerIs => "answer_is",
            AnswerFormat::Choice => "choice",
            AnswerFormat::LastNumber => "last_number",
            AnswerFormat::Auto => "auto",
        }
    }

    /// The final answer written in `text` (a model response or a worked solution), or
    /// `None` when the text has none in this format.
    pub fn extract(&self, text: &str) -> Option<String> {
        match self {
            AnswerFormat::Gsm8k => extract_gsm8k(text),
            AnswerFormat::Boxed => extract_boxed(text),
            AnswerFormat::AnswerIs => extract_answer_is(text),
            AnswerFormat::Choice => extract_choice(text),
            AnswerFormat::LastNumber => extract_last_number(text),
            AnswerFormat::Auto => extract_marked(text).or_else(|| extract_last_number(text)),
        }
    }

    /// The reference answer in a dataset cell. A marked answer (`\boxed{}`, `####`,
    /// "the answer is") wins; otherwise a short single-line cell is the answer itself
    /// (`42`, `\frac{3}{4}`, `Paris`, `B`); otherwise the format's own extraction (the last
    /// number for `auto`). `None` for an empty cell or a long text with no answer.
    pub fn extract_reference(&self, text: &str) -> Option<String> {
        let t = text.trim();
        if t.is_empty() {
            return None;
        }
        let marked = match self {
            AnswerFormat::Gsm8k => extract_gsm8k(t),
            AnswerFormat::Boxed => extract_boxed(t),
            AnswerFormat::AnswerIs => extract_answer_is(t),
            AnswerFormat::Choice => None,
            AnswerFormat::LastNumber => None,
            AnswerFormat::Auto => extract_marked(t),
        };
        if marked.is_some() {
            return marked;
        }
        if is_bare_answer(t) {
            let bare = clean_answer(t);
            if *self == AnswerFormat::Choice {
                return choice_letter(&bare).or(Some(bare));
            }
            return (!bare.is_empty()).then_some(bare);
        }
        self.extract(t)
    }

    /// Whether `pred` (an extracted answer) matches `reference`. For `choice`, both sides
    /// are read as option letters first (`(B)` = `B`); otherwise [`verify`].
    pub fn verify(&self, pred: &str, reference: &str) -> bool {
        if *self == AnswerFormat::Choice {
            let letter = |s: &str| choice_letter(s).or_else(|| extract_choice(s));
            if let (Some(a), Some(b)) = (letter(pred), letter(reference)) {
                return a == b;
            }
        }
        verify(pred, reference)
    }
}

/// Whether an extracted answer matches a reference answer: numerically when both read as
/// numbers (relative tolerance 1e-9), otherwise as normalised strings. Empty never matches.
pub fn verify(pred: &str, reference: &str) -> bool {
    let p = strip_wrappers(pred);
    let r = strip_wrappers(reference);
    if p.is_empty() || r.is_empty() {
        return false;
    }
    match (parse_number(&p), parse_number(&r)) {
        (Some(a), Some(b)) => numbers_equal(a, b),
        _ => normalize_text(&p) == normalize_text(&r),
    }
}

fn numbers_equal(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// `\boxed{}`, then `####`, then "the answer is".
fn extract_marked(text: &str) -> Option<String> {
    extract_boxed(text)
        .or_else(|| extract_gsm8k(text))
        .or_else(|| extract_answer_is(text))
}

/// A short single-line text that is an answer by itself.
fn is_bare_answer(t: &str) -> bool {
    !t.contains('\n') && t.chars().count() <= 100
}

/// Trims whitespace, markdown bold and one trailing period.
fn clean_answer(s: &str) -> String {
    let mut t = s.trim().trim_matches('*').trim();
    if let Some(stripped) = t.strip_suffix('.') {
        if !stripped.is_empty() {
            t = stripped.trim_end();
        }
    }
    t.to_string()
}

/// The content of the last well-formed `\boxed{...}` (or `\fbox{...}`, or `\boxed 5`).
pub fn extract_boxed(text: &str) -> Option<String> {
    let mut end = text.len();
    loop {
        let hay = &text[..end];
        let (pos, kw) = [r"\boxed", r"\fbox"]
            .iter()
            .filter_map(|kw| hay.rfind(kw).map(|p| (p, *kw)))
            .max_by_key(|(p, _)| *p)?;
        let rest = &text[pos + kw.len()..];
        let content = if let Some(inner) = rest.trim_start().strip_prefix('{') {
            braced(inner)
        } else if rest.starts_with(' ') {
            // `\boxed 5`: the next token.
            let tok: String = rest
                .trim_start()
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '$')
                .collect();
            Some(tok)
        } else {
            None
        };
        if let Some(c) = content {
            let c = clean_answer(&c);
            if !c.is_empty() {
                return Some(c);
            }
        }
        end = pos;
    }
}

/// The text up to the brace that closes an already-opened `{`.
fn braced(s: &str) -> Option<String> {
    let mut depth = 1usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(s[..i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// GSM8K: the rest of the line after the last `####`.
pub fn extract_gsm8k(text: &str) -> Option<String> {
    let pos = text.rfind("####")?;
    let rest = text[pos + 4..].trim_start_matches('#');
    let line = rest.lines().next().unwrap_or("");
    let a = clean_answer(line);
    (!a.is_empty()).then_some(a)
}

static ANSWER_IS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:final\s+answer|answer)\s*(?:\*\*)?\s*(?:is\b|:|=)\s*:?").unwrap()
});

static SENTENCE_END: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\.(?:\s|$)").unwrap());

/// "The answer is X", "The final answer is X", "Answer: X" (the last one in the text); X
/// runs to the end of its sentence or line. `\boxed{}` inside X is unwrapped.
pub fn extract_answer_is(text: &str) -> Option<String> {
    let m = ANSWER_IS.find_iter(text).last()?;
    let rest = text[m.end()..].trim_start();
    let rest = rest.trim_start_matches(['*', ' ']);
    if let Some(b) = extract_boxed(rest.lines().next().unwrap_or("")) {
        return Some(b);
    }
    let line = rest.lines().next().unwrap_or("");
    let sentence = match SENTENCE_END.find(line) {
        Some(end) => &line[..end.start()],
        None => line,
    };
    let a = strip_math_delims(&clean_answer(sentence));
    (!a.is_empty()).then_some(a)
}

static CHOICE_ANSWER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i:answer|option|choice)(?:\s+(?i:is))?\s*(?:\*\*)?\s*:?\s*(?:\*\*)?\s*(?i:option\s+)?\(?([A-J])\)?(?:[^A-Za-z0-9]|$)",
    )
    .unwrap()
});
static CHOICE_PAREN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\(([A-J])\)").unwrap());
static CHOICE_END: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:^|\n|\b(?i:is)\s+)\(?([A-J])\)?[.:)]?\s*$").unwrap());
static CHOICE_LINE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\(?([A-J])[.:)]\s+\S").unwrap());

/// A multiple-choice letter: "Answer: B" / "the answer is (B)", else the last "(B)",
/// else a final "B." (alone on the last line, or after "is"), else a last line "B. text".
pub fn extract_choice(text: &str) -> Option<String> {
    if let Some(c) = CHOICE_ANSWER.captures_iter(text).last() {
        return Some(c[1].to_string());
    }
    if let Some(c) = CHOICE_PAREN.captures_iter(text).last() {
        return Some(c[1].to_string());
    }
    let t = text.trim_end();
    if let Some(c) = CHOICE_END.captures(t) {
        return Some(c[1].to_string());
    }
    let last = t.lines().last().unwrap_or("").trim();
    CHOICE_LINE.captures(last).map(|c| c[1].to_string())
}

/// A text that is nothing but an option letter: `B`, `(B)`, `B.`, `b)`.
fn choice_letter(s: &str) -> Option<String> {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\s*\(?([A-Ja-j])\)?[.:)]?\s*$").unwrap());
    RE.captures(s).map(|c| c[1].to_ascii_uppercase())
}

static NUMBER_SCAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"-?\s*\\[dt]?frac\{[^{}]*\}\{[^{}]*\}|-?\d[\d,]*(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+",
    )
    .unwrap()
});

/// The last number in the text: `-3`, `1,000`, `3.5`, `3/4`, `\frac{3}{4}` (as written,
/// without units or currency signs).
pub fn extract_last_number(text: &str) -> Option<String> {
    for m in NUMBER_SCAN
        .find_iter(text)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let mut s = m.as_str();
        // A hyphen glued to a word or number is not a sign (`pages 3-4`).
        if s.starts_with('-') {
            let prev = text[..m.start()].chars().next_back();
            if prev.is_some_and(|c| c.is_alphanumeric() || c == '}') {
                s = s[1..].trim_start();
            }
        }
        let s = s.trim_end_matches(',');
        let s = if s.contains(',') && !s.contains('\\') && !is_grouped(s) {
            // `1,2,3` is a list: its last item.
            s.rsplit(',').next().unwrap_or("")
        } else {
            s
        };
        if s.chars().any(|c| c.is_ascii_digit()) {
            return Some(s.to_string());
        }
    }
    None
}

/// Whether the integer part uses thousands commas correctly (`12,345.6`).
fn is_grouped(s: &str) -> bool {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:/\d+)?$").unwrap());
    RE.is_match(s)
}

/// Removes `$...$`, `\(...\)`, `\text{...}` around a whole answer.
fn strip_math_delims(s: &str) -> String {
    let mut t = s.trim();
    loop {
        let before = t;
        if t.len() >= 2 && t.starts_with('$') && t.ends_with('$') {
            t = t.trim_matches('$').trim();
        }
        if let Some(inner) = t.strip_prefix(r"\(").and_then(|x| x.strip_suffix(r"\)")) {
            t = inner.trim();
        }
        if let Some(inner) = t.strip_prefix(r"\[").and_then(|x| x.strip_suffix(r"\]")) {
            t = inner.trim();
        }
        if t == before {
            break;
        }
    }
    t.to_string()
}

/// Peels what surrounds an answer without changing it: whitespace, markdown bold, math
/// delimiters, a whole-answer `\boxed{}` or `\text{}`, `x = ` in front, a final period.
fn strip_wrappers(s: &str) -> String {
    static VAR_EQ: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[A-Za-z]\s*=\s*(\S.*)$").unwrap());
    let mut t = clean_answer(s);
    for _ in 0..4 {
        let before = t.clone();
        t = strip_math_delims(&t);
        for kw in [r"\boxed{", r"\text{", r"\textbf{", r"\mathrm{"] {
            if let Some(inner) = t.strip_prefix(kw) {
                if let Some(b) = braced(inner) {
                    if b.len() + 1 == inner.len() {
                        t = b.trim().to_string();
                    }
                }
            }
        }
        if let Some(c) = VAR_EQ.captures(&t) {
            t = c[1].to_string();
        }
        t = clean_answer(&t);
        if t == before {
            break;
        }
    }
    t
}

/// Case-folded, whitespace collapsed, trailing period dropped, a single token's wrapping
/// parentheses dropped (`(B)` = `b`).
fn normalize_text(s: &str) -> String {
    let t = clean_answer(s).to_lowercase();
    let t: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(inner) = t.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
        if !inner.is_empty() && inner.chars().all(char::is_alphanumeric) {
            return inner.to_string();
        }
    }
    t
}

static NUMBER_FULL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^([+-]?)\s*(?:\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}|\\[dt]?frac(\d)(\d)|(\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+(?:\.\d*)?|\.\d+)(?:\s*/\s*(\d+(?:\.\d+)?))?)(.*)$",
    )
    .unwrap()
});
static UNIT_TAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^\s*(?:\\(?:text|mbox|mathrm)\s*\{[^{}]*\}|[A-Za-z]+\.?(?:\s+[A-Za-z]+\.?)?|%|°|\^\s*\\circ|\^\s*\{\\circ\}|\\circ)?\s*$",
    )
    .unwrap()
});

/// Reads an answer as a number: signs, thousands commas, decimals, `a/b`, `\frac{a}{b}`,
/// a currency sign in front, a unit word or `%` behind. `None` when it is not just a
/// number (`3 and 4`, `x^2`, `1,2345`).
pub fn parse_number(s: &str) -> Option<f64> {
    let mut t = s
        .trim()
        .replace('\u{2212}', "-")
        .replace(r"\!", "")
        .replace(r"\,", "")
        .replace(r"\left", "")
        .replace(r"\right", "")
        .replace(r"\$", "")
        .replace(r"\%", "%")
        .replace('$', "");
    loop {
        let trimmed = t.trim().trim_end_matches('.').trim_end().to_string();
        if trimmed == t {
            break;
        }
        t = trimmed;
    }
    let c = NUMBER_FULL.captures(&t)?;
    let tail = c.get(8).map_or("", |m| m.as_str());
    if !UNIT_TAIL.is_match(tail) {
        return None;
    }
    let sign = if &c[1] == "-" { -1.0 } else { 1.0 };
    let value = if let (Some(a), Some(b)) = (c.get(2), c.get(3)) {
        let a = parse_number(a.as_str())?;
        let b = parse_number(b.as_str())?;
        div(a, b)?
    } else if let (Some(a), Some(b)) = (c.get(4), c.get(5)) {
        div(a.as_str().parse().ok()?, b.as_str().parse().ok()?)?
    } else {
        let whole: f64 = c.get(6)?.as_str().replace(',', "").parse().ok()?;
        match c.get(7) {
            Some(d) => div(whole, d.as_str().parse().ok()?)?,
            None => whole,
        }
    };
    Some(sign * value)
}

fn div(a: f64, b: f64) -> Option<f64> {
    (b != 0.0).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GSM: &str = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72";

    #[test]
    fn gsm8k_solutions() {
        assert_eq!(extract_gsm8k(GSM).as_deref(), Some("72"));
        assert_eq!(AnswerFormat::Gsm8k.extract(GSM).as_deref(), Some("72"));
        assert_eq!(AnswerFormat::Auto.extract(GSM).as_deref(), Some("72"));
        assert_eq!(
            extract_gsm8k("so 5*4=20\n#### 1,000").as_deref(),
            Some("1,000")
        );
        assert_eq!(extract_gsm8k("#### $18.").as_deref(), Some("$18"));
        assert_eq!(extract_gsm8k("no marker, 12 apples"), None);
        assert_eq!(extract_gsm8k("####   \n"), None);
        assert_eq!(
            AnswerFormat::Gsm8k.extract_reference(GSM).as_deref(),
            Some("72")
        );
        assert_eq!(
            AnswerFormat::Gsm8k.extract_reference("72").as_deref(),
            Some("72")
        );
    }

    #[test]
    fn boxed_with_nested_braces() {
        assert_eq!(extract_boxed(r"so $\boxed{42}$.").as_deref(), Some("42"));
        assert_eq!(
            extract_boxed(r"Thus \boxed{\frac{3}{4}} is it").as_deref(),
            Some(r"\frac{3}{4}")
        );
        assert_eq!(
            extract_boxed(r"first \boxed{1} then \boxed{\sqrt{2}+\frac{1}{2}}").as_deref(),
            Some(r"\sqrt{2}+\frac{1}{2}")
        );
        assert_eq!(extract_boxed(r"\boxed 7 done").as_deref(), Some("7"));
        // An unclosed last box falls back to the previous one.
        assert_eq!(
            extract_boxed(r"\boxed{5} and \boxed{6").as_deref(),
            Some("5")
        );
        assert_eq!(extract_boxed(r"\fbox{C}").as_deref(), Some("C"));
        assert_eq!(extract_boxed("no box here 3"), None);
        assert_eq!(extract_boxed(r"\boxed{}"), None);
    }

    #[test]
    fn answer_is_phrases() {
        let f = AnswerFormat::AnswerIs;
        assert_eq!(
            f.extract("Adding up, the answer is 18.").as_deref(),
            Some("18")
        );
        assert_eq!(
            f.extract("The final answer is $3.50$. I hope").as_deref(),
            Some("3.50")
        );
        assert_eq!(f.extract("Answer: 12 apples").as_deref(), Some("12 apples"));
        assert_eq!(f.extract("**Answer:** 7").as_deref(), Some("7"));
        assert_eq!(
            f.extract(r"The final answer is $\boxed{\frac{1}{2}}$.")
                .as_deref(),
            Some(r"\frac{1}{2}")
        );
        assert_eq!(
            f.extract("The answer is 4. Wait, let me re-check.\nThe answer is 5.")
                .as_deref(),
            Some("5")
        );
        assert_eq!(f.extract("The answer is 3.5 km").as_deref(), Some("3.5 km"));
        assert_eq!(f.extract("I think it is 5"), None);
        assert_eq!(f.extract("The answer is"), None);
    }

    #[test]
    fn choice_letters() {
        let f = AnswerFormat::Choice;
        assert_eq!(
            f.extract("The answer is (B) Aspirin.").as_deref(),
            Some("B")
        );
        assert_eq!(f.extract("Answer: C").as_deref(), Some("C"));
        assert_eq!(
            f.extract("Considering all options, (A) fits, but (D) is better")
                .as_deref(),
            Some("D")
        );
        assert_eq!(
            f.extract("Reasoning about the patient...\nE.").as_deref(),
            Some("E")
        );
        assert_eq!(f.extract("So the best option is B.").as_deref(), Some("B"));
        assert_eq!(f.extract("...\nB. Metformin").as_deref(), Some("B"));
        assert_eq!(f.extract("A patient presents with fever and rash"), None);
        assert_eq!(f.extract("She needs Vitamin C"), None);
        assert_eq!(f.extract("BC"), None);
        assert_eq!(f.extract_reference("B").as_deref(), Some("B"));
        assert_eq!(f.extract_reference("(b)").as_deref(), Some("B"));
        assert!(f.verify("(B)", "B"));
        assert!(f.verify("B", "b."));
        assert!(!f.verify("B", "BC"));
        assert!(!f.verify("A", "B"));
        assert!(!f.verify("", "B"));
    }

    #[test]
    fn last_number_variants() {
        let f = AnswerFormat::LastNumber;
        assert_eq!(
            f.extract("She has 3 apples and buys 4 more: 7 apples.")
                .as_deref(),
            Some("7")
        );
        assert_eq!(
            f.extract("Total: $1,234.50 in all").as_deref(),
            Some("1,234.50")
        );
        assert_eq!(
            f.extract("the temperature is -5 degrees").as_deref(),
            Some("-5")
        );
        assert_eq!(f.extract("read pages 3-4").as_deref(), Some("4"));
        assert_eq!(f.extract("ratio is 3/4").as_deref(), Some("3/4"));
        assert_eq!(
            f.extract(r"so $\frac{3}{4}$").as_deref(),
            Some(r"\frac{3}{4}")
        );
        assert_eq!(f.extract("values 1,2,3").as_deref(), Some("3"));
        assert_eq!(f.extract("about .5 of it").as_deref(), Some(".5"));
        assert_eq!(f.extract("It costs 50%.").as_deref(), Some("50"));
        assert_eq!(f.extract("no digits at all"), None);
        assert_eq!(f.extract(""), None);
    }

    #[test]
    fn auto_order() {
        let f = AnswerFormat::Auto;
        assert_eq!(
            f.extract(r"2+2 = 4, so \boxed{4}. Check: 5").as_deref(),
            Some("4")
        );
        assert_eq!(
            f.extract("5 + 3 = 8\n#### 8\nextra 9").as_deref(),
            Some("8")
        );
        assert_eq!(
            f.extract("3 + 4 = 7. The answer is 7. Double-check 3 and 4")
                .as_deref(),
            Some("7")
        );
        assert_eq!(f.extract("3 + 4 = 7").as_deref(), Some("7"));
        assert_eq!(f.extract("nothing"), None);
    }

    #[test]
    fn references_bare_or_worked() {
        let f = AnswerFormat::Auto;
        assert_eq!(f.extract_reference(" 42 ").as_deref(), Some("42"));
        assert_eq!(
            f.extract_reference(r"\frac{3}{4}").as_deref(),
            Some(r"\frac{3}{4}")
        );
        assert_eq!(f.extract_reference("x^2+1").as_deref(), Some("x^2+1"));
        assert_eq!(f.extract_reference("Paris.").as_deref(), Some("Paris"));
        assert_eq!(f.extract_reference(GSM).as_deref(), Some("72"));
        assert_eq!(
            f.extract_reference("The answer is 12").as_deref(),
            Some("12")
        );
        assert_eq!(f.extract_reference("   "), None);
        assert_eq!(f.extract_reference(""), None);
        let long = "We reason at length.\nNo figure ever appears in this solution text.";
        assert_eq!(f.extract_reference(long), None);
        assert_eq!(AnswerFormat::Gsm8k.extract_reference(long), None);
    }

    #[test]
    fn numbers_parse() {
        assert_eq!(parse_number("1,000"), Some(1000.0));
        assert_eq!(parse_number("-3.50"), Some(-3.5));
        assert_eq!(parse_number("$18"), Some(18.0));
        assert_eq!(parse_number(r"\$18.00"), Some(18.0));
        assert_eq!(parse_number("3/4"), Some(0.75));
        assert_eq!(parse_number(r"\frac{3}{4}"), Some(0.75));
        assert_eq!(parse_number(r"\dfrac{-1}{2}"), Some(-0.5));
        assert_eq!(parse_number(r"-\frac{1}{2}"), Some(-0.5));
        assert_eq!(parse_number(r"\frac12"), Some(0.5));
        assert_eq!(parse_number("50%"), Some(50.0));
        assert_eq!(parse_number("12 apples."), Some(12.0));
        assert_eq!(parse_number("5 square meters"), Some(5.0));
        assert_eq!(parse_number(r"90^\circ"), Some(90.0));
        assert_eq!(parse_number(r"7\text{ cm}"), Some(7.0));
        assert_eq!(parse_number("\u{2212}4"), Some(-4.0));
        assert_eq!(parse_number("3 and 4"), None);
        assert_eq!(parse_number("1,2345"), None);
        assert_eq!(parse_number("x^2"), None);
        assert_eq!(parse_number("1/0"), None);
        assert_eq!(parse_number(""), None);
    }

    #[test]
    fn verify_matches() {
        assert!(verify("72", "72"));
        assert!(verify("1,000", "1000"));
        assert!(verify("3.50", "3.5"));
        assert!(verify("3/4", "0.75"));
        assert!(verify(r"\frac{3}{4}", "0.75"));
        assert!(verify(r"\boxed{\frac{3}{4}}", "3/4"));
        assert!(verify("$18", "18"));
        assert!(verify("18 dollars", "18"));
        assert!(verify("50%", "50"));
        assert!(verify("x = 5", "5"));
        assert!(verify("-7", "\u{2212}7"));
        assert!(verify("72.", "72"));
        assert!(verify("Paris", "paris."));
        assert!(verify(" New  York ", "new york"));
        assert!(verify(r"\text{Paris}", "Paris"));
        assert!(verify("$42$", "42"));
    }

    #[test]
    fn verify_rejects() {
        assert!(!verify("42", "420"));
        assert!(!verify("420", "42"));
        assert!(!verify("1/2", "2"));
        assert!(!verify("B", "BC"));
        assert!(!verify("", ""));
        assert!(!verify("", "0"));
        assert!(!verify("0", ""));
        assert!(!verify("   ", "7"));
        assert!(!verify("1000000", "1000001"));
        assert!(!verify("0.333", "1/3"));
        assert!(!verify("3 and 4", "3"));
        assert!(!verify("-5", "5"));
        assert!(!verify("50%", "0.5"));
        assert!(!verify("Paris", "Parish"));
    }

    #[test]
    fn formats_parse_from_snake_case() {
        let f: AnswerFormat = serde_json::from_str("\"answer_is\"").unwrap();
        assert_eq!(f, AnswerFormat::AnswerIs);
        let f: AnswerFormat = serde_json::from_str("\"last_number\"").unwrap();
        assert_eq!(f, AnswerFormat::LastNumber);
        assert_eq!(
            serde_json::to_string(&AnswerFormat::Gsm8k).unwrap(),
            "\"gsm8k\""
        );
        assert_eq!(AnswerFormat::default(), AnswerFormat::Auto);
        for f in [
            AnswerFormat::Gsm8k,
            AnswerFormat::Boxed,
            AnswerFormat::AnswerIs,
            AnswerFormat::Choice,
            AnswerFormat::LastNumber,
            AnswerFormat::Auto,
        ] {
            let s = serde_json::to_string(&f).unwrap();
            assert_eq!(s, format!("\"{}\"", f.name()));
        }
    }
}
