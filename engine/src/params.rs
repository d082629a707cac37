//! Typed operator params straight from the located YAML tree.
//!
//! [`Params::parse`] runs serde over a [`Node`]: unknown keys are rejected (operators
//! use `#[serde(deny_unknown_fields)]`) with a "did you mean", and every error points at
//! the line and column of the offending key or value.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, VariantAccess, Visitor,
};

use sspo_common::suggest::help_for;

use crate::diag::{Diagnostic, Diagnostics, Loc};
use crate::yaml::{Node, Value};

/// The `params:` of one node (absent params read as an empty mapping).
#[derive(Debug, Clone)]
pub struct Params {
    node: Option<Node>,
    /// Where the node is, for errors about params as a whole.
    anchor: Option<Loc>,
}

impl Params {
    pub fn new(node: Option<Node>, anchor: Option<Loc>) -> Self {
        Self { node, anchor }
    }

    /// Params from a JSON value (code-built pipelines and tests).
    pub fn from_json(value: &serde_json::Value) -> Self {
        let loc = Loc::new("<code>".into(), 0, 0);
        Self::new(Some(node_from_json(value, &loc)), None)
    }

    /// Deserialises the typed params; every error is located.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Diagnostics> {
        let empty;
        let node = match &self.node {
            Some(n) if !matches!(n.value, Value::Null) => n,
            _ => {
                let loc = self
                    .anchor
                    .clone()
                    .unwrap_or_else(|| Loc::new("<params>".into(), 0, 0));
                empty = Node::new(Value::Map(Vec::new()), loc);
                &empty
            }
        };
        T::deserialize(NodeDe(node)).map_err(|e| e.into_diagnostic().into())
    }

    /// The node at `path` inside the params, if written.
    pub fn get(&self, path: &[&str]) -> Option<&Node> {
        self.node.as_ref()?.get_path(path)
    }

    /// Where `path` is written, falling back to the params, then the node.
    pub fn loc(&self, path: &[&str]) -> Option<Loc> {
        self.get(path)
            .map(|n| n.loc.clone())
            .or_else(|| self.node.as_ref().map(|n| n.loc.clone()))
            .or_else(|| self.anchor.clone())
    }

    /// A diagnostic located at `path` (for semantic checks after parsing).
    pub fn error(&self, path: &[&str], message: impl Into<String>) -> Diagnostic {
        Diagnostic::at(self.loc(path), message)
    }

    /// The fingerprinted form of an operator's parsed params: `typed` serialised (defaults
    /// filled in) with the `exclude`d keys removed (settings that change speed, not
    /// output). Fails, located at these params, when `typed` does not serialise to a map
    /// or an excluded key is not one of its keys: a fingerprint is never computed over
    /// `{}` or over a stale key list.
    pub fn fingerprint_json<T: serde::Serialize>(
        &self,
        typed: &T,
        exclude: &[&str],
    ) -> Result<serde_json::Value, Diagnostics> {
        let internal = |what: String| -> Diagnostics {
            self.error(
                &[],
                format!("internal error: params cannot be fingerprinted: {what}"),
            )
            .into()
        };
        let mut value = serde_json::to_value(typed).map_err(|e| internal(e.to_string()))?;
        let Some(map) = value.as_object_mut() else {
            return Err(internal(format!("they serialise to `{value}`, not a map")));
        };
        for key in exclude {
            if map.remove(*key).is_none() {
                return Err(internal(format!("no key `{key}` to leave out")));
            }
        }
        Ok(value)
    }
}

fn node_from_json(v: &serde_json::Value, loc: &Loc) -> Node {
    use serde_json::Value as J;
    let value = match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Str(s.clone()),
        J::Array(items) => Value::Seq(items.iter().map(|i| node_from_json(i, loc)).collect()),
        J::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| {
                    (
                        Node::new(Value::Str(k.clone()), loc.clone()),
                        node_from_json(v, loc),
                    )
                })
                .collect(),
        ),
    };
    Node::new(value, loc.clone())
}

/// A deserialisation error, located at the innermost node that failed.
#[derive(Debug)]
pub struct ParamError {
    loc: Option<Loc>,
    message: String,
    help: Option<String>,
}

impl ParamError {
    fn into_diagnostic(self) -> Diagnostic {
        let d = Diagnostic::at(self.loc, self.message);
        match self.help {
            Some(h) => d.with_help(h),
            None => d,
        }
    }

    fn located(mut self, loc: &Loc) -> Self {
        if self.loc.is_none() {
            self.loc = Some(loc.clone());
        }
        self
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParamError {}

impl de::Error for ParamError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            loc: None,
            message: msg.to_string(),
            help: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let help = help_for(field, expected.iter().copied());
        Self {
            loc: None,
            message: format!("unknown key `{field}`"),
            help,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let help = help_for(variant, expected.iter().copied());
        Self {
            loc: None,
            message: format!("unknown value `{variant}`"),
            help,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Self::custom(format!("missing required key `{field}`"))
    }
}

/// serde `Deserializer` over one located node.
struct NodeDe<'a>(&'a Node);

impl<'a> NodeDe<'a> {
    fn wrap<T>(&self, r: Result<T, ParamError>) -> Result<T, ParamError> {
        r.map_err(|e| e.located(&self.0.loc))
    }
}

macro_rules! forward_to_any {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
            self.deserialize_any(v)
        })*
    };
}

impl<'de, 'a> Deserializer<'de> for NodeDe<'a> {
    type Error = ParamError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
        let r = match &self.0.value {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Int(i) => v.visit_i64(*i),
            Value::Float(f) => v.visit_f64(*f),
            Value::Str(s) => v.visit_str(s),
            Value::Seq(items) => v.visit_seq(SeqDe { iter: items.iter() }),
            Value::Map(entries) => v.visit_map(MapDe {
                iter: entries.iter(),
                value: None,
            }),
        };
        self.wrap(r)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
        match self.0.value {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
        // Integers are fine where floats are expected (`temperature: 1`).
        match self.0.value {
            Value::Int(i) => self.wrap(v.visit_f64(i as f64)),
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ParamError> {
        self.deserialize_f64(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, ParamError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ParamError> {
        let r = match &self.0.value {
            Value::Str(_) => v.visit_enum(EnumDe {
                tag: self.0,
                content: None,
            }),
            Value::Map(entries) if entries.len() == 1 => v.visit_enum(EnumDe {
                tag: &entries[0].0,
                content: Some(&entries[0].1),
            }),
            _ => Err(de::Error::custom(format!(
                "expected a name or a single-key mapping, found {}",
                self.0.type_name()
            ))),
        };
        self.wrap(r)
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_unit deserialize_seq deserialize_map deserialize_identifier
        deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, ParamError> {
        self.deserialize_any(v)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, ParamError> {
        self.deserialize_any(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, ParamError> {
        self.deserialize_any(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ParamError> {
        match self.0.value {
            Value::Map(_) => self.deserialize_any(v),
            _ => Err(de::Error::custom(format!(
                "expected a mapping, found {}",
                self.0.type_name()
            )))
            .map_err(|e: ParamError| e.located(&self.0.loc)),
        }
    }
}

struct SeqDe<'a> {
    iter: std::slice::Iter<'a, Node>,
}

impl<'de, 'a> SeqAccess<'de> for SeqDe<'a> {
    type Error = ParamError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ParamError> {
        match self.iter.next() {
            Some(n) => seed.deserialize(NodeDe(n)).map(Some),
            None => Ok(None),
        }
    }
}

struct MapDe<'a> {
    iter: std::slice::Iter<'a, (Node, Node)>,
    value: Option<&'a Node>,
}

impl<'de, 'a> MapAccess<'de> for MapDe<'a> {
    type Error = ParamError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ParamError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(NodeDe(k)).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ParamError> {
        match self.value.take() {
            Some(v) => seed.deserialize(NodeDe(v)),
            None => Err(de::Error::custom("value without a key")),
        }
    }
}

struct EnumDe<'a> {
    tag: &'a Node,
    content: Option<&'a Node>,
}

impl<'de, 'a> EnumAccess<'de> for EnumDe<'a> {
    type Error = ParamError;
    type Variant = VariantDe<'a>;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantDe<'a>), ParamError> {
        let tag = self.tag;
        let name = tag
            .as_str()
            .ok_or_else(|| de::Error::custom("expected a name"))
            .map_err(|e: ParamError| e.located(&tag.loc))?;
        let v = seed
            .deserialize(name.into_deserializer())
            .map_err(|e: ParamError| e.located(&tag.loc))?;
        Ok((
            v,
            VariantDe {
                tag,
                content: self.content,
            },
        ))
    }
}

struct VariantDe<'a> {
    tag: &'a Node,
    content: Option<&'a Node>,
}

impl<'a> VariantDe<'a> {
    fn content(&self) -> Result<&'a Node, ParamError> {
        self.content.ok_or_else(|| {
            <ParamError as de::Error>::custom(format!(
                "`{}` needs a value",
                self.tag.as_str().unwrap_or("?")
            ))
            .located(&self.tag.loc)
        })
    }
}

impl<'de, 'a> VariantAccess<'de> for VariantDe<'a> {
    type Error = ParamError;
    fn unit_variant(self) -> Result<(), ParamError> {
        match self.content {
            None => Ok(()),
            Some(n) if matches!(n.value, Value::Null) => Ok(()),
            Some(n) => Err(
                <ParamError as de::Error>::custom("this value takes no parameters").located(&n.loc),
            ),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ParamError> {
        seed.deserialize(NodeDe(self.content()?))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, ParamError> {
        NodeDe(self.content()?).deserialize_any(v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ParamError> {
        NodeDe(self.content()?).deserialize_any(v)
    }
}

impl<'de> IntoDeserializer<'de, ParamError> for NodeDe<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct P {
        #[serde(default)]
        min_chars: usize,
        temperature: Option<f64>,
        #[serde(default)]
        mode: Mode,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        #[default]
        Fast,
        Slow,
    }

    fn params(doc: &str) -> Params {
        let root = parse(doc, "p.yaml").unwrap();
        Params::new(root.get("params").cloned(), Some(root.loc.clone()))
    }

    #[test]
    fn fingerprint_json_leaves_out_named_keys_and_refuses_unknown_ones() {
        #[derive(serde::Serialize)]
        struct Fp {
            lr: f64,
            batch_size: usize,
        }
        let p = params("params: {}\n");
        let typed = Fp {
            lr: 0.5,
            batch_size: 4,
        };
        let v = p.fingerprint_json(&typed, &["batch_size"]).unwrap();
        assert_eq!(v, serde_json::json!({"lr": 0.5}));
        let err = p.fingerprint_json(&typed, &["batchsize"]).unwrap_err();
        assert!(err.to_string().contains("no key `batchsize`"), "{err}");
        let err = p.fingerprint_json(&3u32, &[]).unwrap_err();
        assert!(err.to_string().contains("not a map"), "{err}");
    }

    #[test]
    fn parses_typed_values() {
        let p: P = params("params:\n  min_chars: 3\n  temperature: 1\n  mode: slow\n")
            .parse()
            .unwrap();
        assert_eq!(
            p,
            P {
                min_chars: 3,
                temperature: Some(1.0),
                mode: Mode::Slow
            }
        );
        let empty: P = params("x: 1\n").parse().unwrap();
        assert_eq!(empty.min_chars, 0);
    }

    #[test]
    fn unknown_key_is_located_with_suggestion() {
        let err = params("params:\n  min_chars: 3\n  temprature: 0.5\n")
            .parse::<P>()
            .unwrap_err();
        let d = &err.0[0];
        assert_eq!(d.loc.as_ref().map(|l| (l.line, l.col)), Some((3, 3)));
        assert_eq!(d.message, "unknown key `temprature`");
        assert_eq!(d.help.as_deref(), Some("did you mean `temperature`?"));
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let err = params("params:\n  min_chars: lots\n")
            .parse::<P>()
            .unwrap_err();
        let d = &err.0[0];
        assert_eq!(d.loc.as_ref().map(|l| (l.line, l.col)), Some((2, 14)));
        assert!(d.message.contains("invalid type"), "{}", d.message);
        let err = params("params:\n  mode: slwo\n").parse::<P>().unwrap_err();
        assert_eq!(err.0[0].help.as_deref(), Some("did you mean `slow`?"));
    }
}
