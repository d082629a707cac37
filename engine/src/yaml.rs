//! A YAML document as a tree whose every node keeps its source position.
//!
//! The spec is parsed once into this tree (by `serde-saphyr`, keeping spans); the
//! engine checks its structure, `--set` edits it, and each operator deserialises its
//! own typed params from its subtree through [`crate::params`], so every error can point
//! at the exact line and column.

use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::diag::{Diagnostic, Loc};

/// A YAML value whose children carry positions.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order (duplicates are reported by the parser).
    Map(Vec<(Node, Node)>),
}

/// A value and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub loc: Loc,
}

impl Node {
    pub fn new(value: Value, loc: Loc) -> Self {
        Self { value, loc }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The entry under `key`, with the key node itself.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, v)| (k, v))
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// Follows a path of map keys.
    pub fn get_path(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |node, key| node.get(key))
    }

    /// A short name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// Plain JSON, positions dropped.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (key_text(k), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Sets `path` (map keys) to `value`, creating mappings on the way; a scalar in the
    /// way is replaced. Used by `--set`.
    pub fn set_path(&mut self, path: &[&str], value: Node) {
        let Some((first, rest)) = path.split_first() else {
            *self = value;
            return;
        };
        if !matches!(self.value, Value::Map(_)) {
            self.value = Value::Map(Vec::new());
        }
        let Value::Map(entries) = &mut self.value else {
            return;
        };
        let idx = match entries.iter().position(|(k, _)| k.as_str() == Some(first)) {
            Some(i) => i,
            None => {
                // A key added by `--set` points at the start of the flag.
                let key_loc = Loc::new(value.loc.source.clone(), value.loc.line, 1);
                let key = Node::new(Value::Str(first.to_string()), key_loc);
                let placeholder = Node::new(Value::Null, value.loc.clone());
                entries.push((key, placeholder));
                entries.len() - 1
            }
        };
        entries[idx].1.set_path(rest, value);
    }
}

fn key_text(k: &Node) -> String {
    match &k.value {
        Value::Str(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// Parses a YAML text into a located tree. `source` names it in messages.
pub fn parse(text: &str, source: &str) -> Result<Node, Diagnostic> {
    let source: Arc<str> = Arc::from(source);
    let raw: Spanned<Raw> = from_yaml(text).map_err(|e| parse_error(&e, &source))?;
    Ok(into_node(raw, &source))
}

/// Parses the value side of `--set key=value` as YAML (so `0.7`, `true`, `[a, b]`
/// and `{k: v}` keep their types), located at the value's column in the flag.
pub fn parse_set_value(text: &str, flag: &str, col: u64) -> Result<Node, Diagnostic> {
    let source: Arc<str> = Arc::from(format!("--set {flag}"));
    if text.trim().is_empty() {
        return Ok(Node::new(
            Value::Str(String::new()),
            Loc::new(source, 1, col),
        ));
    }
    let raw: Spanned<Raw> = from_yaml(text).map_err(|e| parse_error(&e, &source))?;
    let mut node = into_node(raw, &source);
    shift_cols(&mut node, col - 1);
    Ok(node)
}

/// YAML 1.2 booleans only: `n`, `y`, `no`, `off` stay strings (`synth: {n: 500}`).
fn from_yaml(text: &str) -> Result<Spanned<Raw>, serde_saphyr::Error> {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    serde_saphyr::from_str_with_options(text, options)
}

fn shift_cols(node: &mut Node, by: u64) {
    if node.loc.line == 1 {
        node.loc.col += by;
    }
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| shift_cols(n, by)),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            shift_cols(k, by);
            shift_cols(v, by);
        }),
        _ => {}
    }
}

fn parse_error(e: &serde_saphyr::Error, source: &Arc<str>) -> Diagnostic {
    let loc = e
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| Loc::new(source.clone(), l.line(), l.column()));
    // The library's message may embed its own position and a snippet; keep the first
    // line, our prefix already says where.
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    Diagnostic::at(loc, format!("invalid YAML: {first}"))
}

/// The tree as the YAML library hands it over, before positions are attached to our
/// own source name.
#[derive(Debug)]
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

fn into_node(raw: Spanned<Raw>, source: &Arc<str>) -> Node {
    let loc = Loc::new(
        source.clone(),
        raw.referenced.line(),
        raw.referenced.column(),
    );
    let value = match raw.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(f) => Value::Float(f),
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(items.into_iter().map(|n| into_node(n, source)).collect()),
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (into_node(k, source), into_node(v, source)))
                .collect(),
        ),
    };
    Node::new(value, loc)
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        i64::try_from(v)
            .map(Raw::Int)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Raw>>()? {
            let value = map.next_value::<Spanned<Raw>>()?;
            entries.push((key, value));
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_of_keys_and_values() {
        let doc = "name: demo\nnodes:\n  a:\n    op: source\n    params: {x: 1.5, y: [1, 2]}\n";
        let root = parse(doc, "p.yaml").unwrap();
        let (k, v) = root.get("nodes").unwrap().entry("a").unwrap();
        assert_eq!((k.loc.line, k.loc.col), (3, 3));
        let op = v.get("op").unwrap();
        assert_eq!(op.as_str(), Some("source"));
        assert_eq!((op.loc.line, op.loc.col), (4, 9));
        let x = v.get_path(&["params", "x"]).unwrap();
        assert_eq!(x.value, Value::Float(1.5));
        assert_eq!(x.loc.line, 5);
        assert_eq!(
            root.get("name").unwrap().to_json(),
            serde_json::json!("demo")
        );
    }

    #[test]
    fn set_path_creates_and_replaces() {
        let mut root = parse("a: {b: 1}\n", "p.yaml").unwrap();
        let v = parse_set_value("0.7", "a.c.d=0.7", 7).unwrap();
        root.set_path(&["a", "c", "d"], v);
        assert_eq!(
            root.to_json(),
            serde_json::json!({"a": {"b": 1, "c": {"d": 0.7}}})
        );
        let node = root.get_path(&["a", "c", "d"]).unwrap();
        assert_eq!(node.loc.col, 7);
        assert!(node.loc.source.starts_with("--set"));
    }

    #[test]
    fn yaml_1_1_booleans_are_strings() {
        let root = parse("n: 1\ny: no\nz: true\n", "p.yaml").unwrap();
        assert_eq!(
            root.to_json(),
            serde_json::json!({"n": 1, "y": "no", "z": true})
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse("a: [1, 2\nb: 3\n", "bad.yaml").unwrap_err();
        assert!(err.loc.is_some(), "{err}");
        assert!(err.to_string().starts_with("bad.yaml:"), "{err}");
    }
}
