//! The `arithmetic` task: short word problems over one running quantity, the worked
//! equations that solve them, and verbose traces with redundant re-checks.

use super::{OpKind, StepKind, SynthConfig, SynthError, SynthStep};
use sspo_common::rng::SplitMix64;

/// Someone the story is about, with the pronouns the templates need.
struct Person {
    name: &'static str,
    subj: &'static str,
    obj: &'static str,
    poss: &'static str,
}

const fn he(name: &'static str) -> Person {
    Person {
        name,
        subj: "he",
        obj: "him",
        poss: "his",
    }
}

const fn she(name: &'static str) -> Person {
    Person {
        name,
        subj: "she",
        obj: "her",
        poss: "her",
    }
}

const PEOPLE: &[Person] = &[
    he("Tom"),
    she("Anna"),
    he("Ben"),
    she("Lily"),
    he("Sam"),
    she("Mia"),
    he("Max"),
    she("Emma"),
    he("Leo"),
    she("Zoe"),
    he("Jack"),
    she("Nora"),
];

pub(super) const ITEMS: &[&str] = &[
    "apples", "books", "coins", "marbles", "stickers", "cookies", "pencils", "cards", "shells",
    "stamps", "candies", "toys",
];

// Prompt sentences. Placeholders: {name} {Pron} {pron} {obj} {poss} {items} {n} {k} {m}.
pub(super) const START: &[&str] = &[
    "{name} has {n} {items}.",
    "{name} starts with {n} {items}.",
    "{name} collects {n} {items}.",
];
pub(super) const ADD: &[&str] = &[
    "{Pron} buys {n} more {items}.",
    "{Pron} finds {n} more.",
    "A friend gives {obj} {n} more {items}.",
];
pub(super) const SUB: &[&str] = &[
    "{Pron} gives away {n}.",
    "{Pron} loses {n} {items}.",
    "{Pron} sells {n} of them.",
];
pub(super) const MUL: &[&str] = &["Then {pron} ends up with {k} times as many {items}."];
pub(super) const MUL2: &str = "Then {pron} doubles {poss} {items}.";
pub(super) const MUL3: &str = "Then {pron} triples {poss} {items}.";
pub(super) const DIV: &[&str] = &[
    "{Pron} splits them into {k} equal piles and keeps one pile.",
    "{Pron} puts them into {k} equal boxes and keeps one box.",
];
pub(super) const GROUPS: &[&str] = &[
    "{Pron} buys {k} bags with {m} {items} each.",
    "{Pron} gets {k} boxes of {m} {items}.",
    "{Pron} wins {k} packs with {m} {items} in each.",
];
pub(super) const QUESTION: &[&str] = &[
    "How many {items} does {name} have now?",
    "How many {items} does {name} have in the end?",
    "How many {items} does {pron} have at the end?",
];

// Trace steps.
pub(super) const FIRST_LEAD: &[&str] = &["", "First, "];
pub(super) const NEXT_LEAD: &[&str] = &["", "Then ", "Next, ", "Now "];
pub(super) const CHECK_LEAD: &[&str] = &[
    "Let me double-check: ",
    "Let me verify: ",
    "Checking again: ",
    "To be sure, ",
];
pub(super) const INVERSE_LEAD: &[&str] = &["Check: ", "Checking backwards: ", "Going backwards, "];
pub(super) const REDO_LEAD: &[&str] = &[
    "Let me redo it: ",
    "Going through it again: ",
    "Once more from the start: ",
];
pub(super) const RESTATE: &[&str] = &[
    "So {name} has {v} {items}.",
    "So the result is {v}.",
    "In the end {name} has {v} {items}.",
];
pub(super) const FIX: &[&str] = &[
    "Wait, {eq}, not {w}. So it is {v} after all.",
    "Hmm, that is wrong: {eq}, not {w}. So the result is {v}.",
];
/// Joins the equations of one re-derivation.
pub(super) const CHAIN_JOIN: &str = ", then ";
/// The final line; `{v}` is the answer. `AnswerFormat::AnswerIs` and `Auto` read it.
pub(super) const FINAL: &str = "The answer is {v}.";

/// Every template, for the tokenizer's vocabulary.
pub(super) fn all_templates() -> Vec<&'static str> {
    let mut t: Vec<&'static str> = Vec::new();
    for list in [
        START,
        ADD,
        SUB,
        MUL,
        DIV,
        GROUPS,
        QUESTION,
        FIRST_LEAD,
        NEXT_LEAD,
        CHECK_LEAD,
        INVERSE_LEAD,
        REDO_LEAD,
        RESTATE,
        FIX,
    ] {
        t.extend_from_slice(list);
    }
    t.extend([MUL2, MUL3, CHAIN_JOIN, FINAL]);
    for p in PEOPLE {
        t.extend([p.name, p.subj, p.obj, p.poss]);
    }
    t.extend_from_slice(ITEMS);
    t
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sym {
    Add,
    Sub,
    Mul,
    Div,
}

impl Sym {
    fn text(self) -> &'static str {
        match self {
            Sym::Add => "+",
            Sym::Sub => "-",
            Sym::Mul => "*",
            Sym::Div => "/",
        }
    }

    fn inverse(self) -> Sym {
        match self {
            Sym::Add => Sym::Sub,
            Sym::Sub => Sym::Add,
            Sym::Mul => Sym::Div,
            Sym::Div => Sym::Mul,
        }
    }

    /// `a op b`, or `None` when it leaves the natural numbers or exceeds `max`.
    fn apply(self, a: u32, b: u32, max: u32) -> Option<u32> {
        let r = match self {
            Sym::Add => a.checked_add(b)?,
            Sym::Sub => a.checked_sub(b)?,
            Sym::Mul => a.checked_mul(b)?,
            Sym::Div => {
                if b == 0 || a / b * b != a {
                    return None;
                }
                a / b
            }
        };
        (r <= max).then_some(r)
    }
}

#[derive(Debug, Clone, Copy)]
enum Operand {
    Const(u32),
    /// The result of an earlier equation.
    Eq(usize),
}

#[derive(Debug, Clone, Copy)]
struct Equation {
    a: Operand,
    sym: Sym,
    b: Operand,
}

/// The solved problem: its equations in order; the last one gives the answer.
struct Plan {
    equations: Vec<Equation>,
    max_value: u32,
}

impl Plan {
    /// Results of every equation, with equation `j` forced to `forced` when given.
    fn evaluate(&self, forced: Option<(usize, u32)>) -> Option<Vec<u32>> {
        let mut values: Vec<u32> = Vec::with_capacity(self.equations.len());
        for (i, e) in self.equations.iter().enumerate() {
            let v = match forced {
                Some((j, w)) if j == i => w,
                _ => {
                    let a = operand(e.a, &values);
                    let b = operand(e.b, &values);
                    e.sym.apply(a, b, self.max_value)?
                }
            };
            values.push(v);
        }
        Some(values)
    }

    /// `a op b = c` for equation `i` under `values` (with `result` as the right-hand side).
    fn show(&self, i: usize, values: &[u32], result: u32) -> String {
        let e = &self.equations[i];
        format!(
            "{} {} {} = {}",
            operand(e.a, values),
            e.sym.text(),
            operand(e.b, values),
            result
        )
    }

    /// `c inv b = a` (the check backwards) for equation `i`.
    fn show_inverse(&self, i: usize, values: &[u32]) -> String {
        let e = &self.equations[i];
        format!(
            "{} {} {} = {}",
            values[i],
            e.sym.inverse().text(),
            operand(e.b, values),
            operand(e.a, values)
        )
    }
}

fn operand(o: Operand, values: &[u32]) -> u32 {
    match o {
        Operand::Const(c) => c,
        Operand::Eq(i) => values[i],
    }
}

/// Text of a template with its placeholders filled.
struct Filler<'a> {
    person: &'a Person,
    items: &'a str,
}

impl Filler<'_> {
    fn fill(&self, template: &str, nums: &[(&str, String)]) -> String {
        let mut s = template
            .replace("{name}", self.person.name)
            .replace("{Pron}", &capitalize(self.person.subj))
            .replace("{pron}", self.person.subj)
            .replace("{obj}", self.person.obj)
            .replace("{poss}", self.person.poss)
            .replace("{items}", self.items);
        for (k, v) in nums {
            s = s.replace(&format!("{{{k}}}"), v);
        }
        s
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// One generated problem before it is packaged.
pub(super) struct Generated {
    pub prompt: String,
    pub answer: u32,
    pub steps: Vec<SynthStep>,
    pub n_needed: usize,
    pub final_value: u32,
    pub n_errors: u32,
    pub n_fixes: u32,
}

const MAX_ATTEMPTS: usize = 1000;

/// One problem from its own generator.
pub(super) fn generate_one(
    cfg: &SynthConfig,
    rng: &mut SplitMix64,
) -> Result<Generated, SynthError> {
    for _ in 0..MAX_ATTEMPTS {
        if let Some(g) = try_generate(cfg, rng) {
            return Ok(g);
        }
    }
    Err(SynthError::InvalidConfig(format!(
        "could not build a problem with {}..={} steps from ops {:?} within max_value {} \
         in {MAX_ATTEMPTS} attempts; widen the ranges or allow more ops",
        cfg.min_ops, cfg.max_ops, cfg.ops, cfg.max_value
    )))
}

fn try_generate(cfg: &SynthConfig, rng: &mut SplitMix64) -> Option<Generated> {
    let person = rng.pick(PEOPLE);
    let items = *rng.pick(ITEMS);
    let f = Filler { person, items };
    let n_steps = rng.range(cfg.min_ops, cfg.max_ops) as usize;
    let max = cfg.max_value;

    // The story and its equations.
    let start = rng.range(cfg.start[0], cfg.start[1]);
    let mut sentences = vec![f.fill(rng.pick::<&str>(START), &[("n", start.to_string())])];
    let mut equations: Vec<Equation> = Vec::new();
    let mut values: Vec<u32> = Vec::new();
    let mut current = Operand::Const(start);
    let mut x = start;
    let mut tries = 0;
    while equations.len() < n_steps {
        tries += 1;
        if tries > 64 {
            return None;
        }
        let room = n_steps - equations.len();
        let kind = *rng.pick(&cfg.ops);
        let (sentence, eqs): (String, Vec<(Equation, u32)>) = match kind {
            OpKind::Add => {
                let b = rng.range(cfg.addend[0], cfg.addend[1]);
                let y = Sym::Add.apply(x, b, max)?;
                let e = Equation {
                    a: current,
                    sym: Sym::Add,
                    b: Operand::Const(b),
                };
                (
                    f.fill(rng.pick::<&str>(ADD), &[("n", b.to_string())]),
                    vec![(e, y)],
                )
            }
            OpKind::Sub => {
                let hi = cfg.addend[1].min(x.saturating_sub(1));
                if hi < cfg.addend[0] {
                    return None;
                }
                let b = rng.range(cfg.addend[0], hi);
                let e = Equation {
                    a: current,
                    sym: Sym::Sub,
                    b: Operand::Const(b),
                };
                (
                    f.fill(rng.pick::<&str>(SUB), &[("n", b.to_string())]),
                    vec![(e, x - b)],
                )
            }
            OpKind::Mul => {
                let k = rng.range(cfg.factor[0], cfg.factor[1]);
                let y = Sym::Mul.apply(x, k, max)?;
                let template = match (k, rng.below(2)) {
                    (2, 0) => MUL2,
                    (3, 0) => MUL3,
                    _ => rng.pick(MUL),
                };
                let e = Equation {
                    a: current,
                    sym: Sym::Mul,
                    b: Operand::Const(k),
                };
                (f.fill(template, &[("k", k.to_string())]), vec![(e, y)])
            }
            OpKind::Div => {
                let divisors: Vec<u32> = (cfg.factor[0]..=cfg.factor[1])
                    .filter(|&k| k > 1 && x / k * k == x && x / k >= 1)
                    .collect();
                if divisors.is_empty() {
                    continue;
                }
                let k = *rng.pick(&divisors);
                let e = Equation {
                    a: current,
                    sym: Sym::Div,
                    b: Operand::Const(k),
                };
                (
                    f.fill(rng.pick::<&str>(DIV), &[("k", k.to_string())]),
                    vec![(e, x / k)],
                )
            }
            OpKind::Groups => {
                if room < 2 {
                    continue;
                }
                let k = rng.range(cfg.group_count[0], cfg.group_count[1]);
                let m = rng.range(cfg.group_size[0], cfg.group_size[1]);
                let p = Sym::Mul.apply(k, m, max)?;
                let y = Sym::Add.apply(x, p, max)?;
                let i = equations.len();
                let e1 = Equation {
                    a: Operand::Const(k),
                    sym: Sym::Mul,
                    b: Operand::Const(m),
                };
                let e2 = Equation {
                    a: current,
                    sym: Sym::Add,
                    b: Operand::Eq(i),
                };
                let s = f.fill(
                    rng.pick::<&str>(GROUPS),
                    &[("k", k.to_string()), ("m", m.to_string())],
                );
                (s, vec![(e1, p), (e2, y)])
            }
        };
        sentences.push(sentence);
        for (e, v) in eqs {
            equations.push(e);
            values.push(v);
            x = v;
        }
        current = Operand::Eq(equations.len() - 1);
    }
    sentences.push(f.fill(rng.pick::<&str>(QUESTION), &[]));
    let prompt = sentences.join(" ");
    let plan = Plan {
        equations,
        max_value: max,
    };
    debug_assert_eq!(plan.evaluate(None).as_deref(), Some(values.as_slice()));
    let answer = x;
    let last = plan.equations.len() - 1;

    // Needed steps.
    let mut steps: Vec<SynthStep> = Vec::new();
    for i in 0..=last {
        let lead = if i == 0 {
            rng.pick(FIRST_LEAD)
        } else {
            rng.pick(NEXT_LEAD)
        };
        steps.push(SynthStep {
            text: format!("{lead}{}.", plan.show(i, &values, values[i])),
            kind: StepKind::Needed,
            settled: i == last,
        });
    }
    let n_needed = steps.len();

    // Redundant re-checks.
    let planned = rng.range(0, cfg.max_rechecks);
    let mut belief = answer;
    let (mut n_errors, mut n_fixes) = (0u32, 0u32);
    for _ in 0..planned {
        if rng.chance(cfg.recheck_error_rate) {
            let (text, j, wrong, final_wrong) = erroneous_recheck(&plan, &values, rng);
            steps.push(SynthStep {
                text,
                kind: StepKind::Error,
                settled: false,
            });
            n_errors += 1;
            if rng.chance(cfg.fix_rate) {
                let eq = plan.show(j, &values, values[j]);
                let text = rng
                    .pick(FIX)
                    .replace("{eq}", &eq)
                    .replace("{w}", &wrong.to_string())
                    .replace("{v}", &answer.to_string());
                steps.push(SynthStep {
                    text,
                    kind: StepKind::Fix,
                    settled: true,
                });
                n_fixes += 1;
            } else {
                belief = final_wrong;
                break;
            }
        } else {
            let text = correct_recheck(&plan, &values, &f, rng);
            steps.push(SynthStep {
                text,
                kind: StepKind::Recheck,
                settled: true,
            });
        }
    }
    let correct = belief == answer;
    steps.push(SynthStep {
        text: FINAL.replace("{v}", &belief.to_string()),
        kind: StepKind::Final,
        settled: correct,
    });
    Some(Generated {
        prompt,
        answer,
        steps,
        n_needed,
        final_value: belief,
        n_errors,
        n_fixes,
    })
}

/// A re-check that repeats the solution correctly.
fn correct_recheck(plan: &Plan, values: &[u32], f: &Filler, rng: &mut SplitMix64) -> String {
    let last = values.len() - 1;
    // Weights: single equation 3, backwards 2, full re-derivation 1, restatement 2.
    match rng.below(8) {
        0..=2 => {
            let j = rng.below(values.len() as u64) as usize;
            format!(
                "{}{}.",
                rng.pick(CHECK_LEAD),
                plan.show(j, values, values[j])
            )
        }
        3 | 4 => {
            let j = rng.below(values.len() as u64) as usize;
            format!(
                "{}{}.",
                rng.pick(INVERSE_LEAD),
                plan.show_inverse(j, values)
            )
        }
        5 => {
            let chain: Vec<String> = (0..=last)
                .map(|i| plan.show(i, values, values[i]))
                .collect();
            format!("{}{}.", rng.pick(REDO_LEAD), chain.join(CHAIN_JOIN))
        }
        _ => f.fill(
            rng.pick::<&str>(RESTATE),
            &[("v", values[last].to_string())],
        ),
    }
}

/// A re-check with an arithmetic slip in equation `j`, carried forward to the end.
/// Returns (text, j, the wrong result of `j`, the wrong final value).
fn erroneous_recheck(
    plan: &Plan,
    values: &[u32],
    rng: &mut SplitMix64,
) -> (String, usize, u32, u32) {
    let last = values.len() - 1;
    let redo = rng.below(4) == 0;
    let j0 = rng.below(values.len() as u64) as usize;
    let mut deltas: [i64; 8] = [1, -1, 2, -2, 3, -3, 10, -10];
    rng.shuffle(&mut deltas);
    let mut found = None;
    'outer: for j in [j0, last] {
        for d in deltas {
            let w = i64::from(values[j]) + d;
            if w < 0 || w > i64::from(plan.max_value) {
                continue;
            }
            if let Some(wrong) = plan.evaluate(Some((j, w as u32))) {
                found = Some((j, wrong));
                break 'outer;
            }
        }
    }
    // The last equation always admits +1 or -1 unless max_value == 0 (rejected by validate).
    let (j, wrong) = found.expect("a slip in the last equation is always possible");
    let from = if redo { 0 } else { j };
    let chain: Vec<String> = (from..=last)
        .map(|i| plan.show(i, &wrong, wrong[i]))
        .collect();
    let lead = if redo {
        rng.pick(REDO_LEAD)
    } else {
        rng.pick(CHECK_LEAD)
    };
    let text = format!("{lead}{}.", chain.join(CHAIN_JOIN));
    (text, j, wrong[j], wrong[last])
}
