//! `kind:` of a probe: one kind, or several probed in the same pass. Written and
//! fingerprinted as a name when there is one (so single-kind configs keep their
//! fingerprints), as a list otherwise.

use std::fmt;

use serde::de::{self, IntoDeserializer, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sspo_engine::{Diagnostics, Params};

use super::params::ProbeKind;

/// The kinds one probe pass computes, in the order written: the first gives the `value`
/// column. Checked non-empty and without repeats by [`ProbeKinds::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeKinds(Vec<ProbeKind>);

impl ProbeKinds {
    /// The kinds in the order written (unchecked: see [`ProbeKinds::check`]).
    pub fn new(kinds: Vec<ProbeKind>) -> Self {
        ProbeKinds(kinds)
    }

    /// The kind whose value is the `value` column: the first one written.
    pub fn primary(&self) -> ProbeKind {
        self.0.first().copied().unwrap_or_default()
    }

    pub fn has(&self, kind: ProbeKind) -> bool {
        self.0.contains(&kind)
    }

    /// Whether several kinds are probed: the output then has a value column per kind.
    pub fn is_combined(&self) -> bool {
        self.0.len() > 1
    }

    pub fn as_slice(&self) -> &[ProbeKind] {
        &self.0
    }

    /// Located errors for an empty list or a kind listed twice.
    pub fn check(&self, params: &Params) -> Diagnostics {
        let mut d = Diagnostics::new();
        if self.0.is_empty() {
            d.push(params.error(
                &["kind"],
                "`kind` must name at least one of `verbal`, `answer`",
            ));
        }
        if self
            .0
            .iter()
            .enumerate()
            .any(|(i, k)| self.0[..i].contains(k))
        {
            d.push(params.error(&["kind"], "`kind` lists a kind twice"));
        }
        d
    }
}

impl Default for ProbeKinds {
    fn default() -> Self {
        ProbeKind::default().into()
    }
}

impl From<ProbeKind> for ProbeKinds {
    fn from(kind: ProbeKind) -> Self {
        ProbeKinds(vec![kind])
    }
}

impl Serialize for ProbeKinds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ProbeKinds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ProbeKinds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`verbal`, `answer`, or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ProbeKinds, E> {
                // Through the enum's own deserializer: the same "unknown value" message.
                ProbeKind::deserialize(v.into_deserializer()).map(ProbeKinds::from)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ProbeKinds, A::Error> {
                let mut kinds = Vec::new();
                while let Some(k) = seq.next_element()? {
                    kinds.push(k);
                }
                Ok(ProbeKinds(kinds))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<ProbeKinds, String> {
        #[derive(Deserialize)]
        struct P {
            kind: ProbeKinds,
        }
        Params::from_json(&json!({ "kind": v }))
            .parse::<P>()
            .map(|p| p.kind)
            .map_err(|d| d.to_string())
    }

    #[test]
    fn a_name_or_a_list() {
        use ProbeKind::*;
        assert_eq!(parse(json!("verbal")).unwrap(), Verbal.into());
        let both = parse(json!(["verbal", "answer"])).unwrap();
        assert_eq!(both.as_slice(), [Verbal, Answer]);
        assert_eq!(both.primary(), Verbal);
        assert!(both.is_combined() && both.has(Answer));
        assert_eq!(parse(json!(["answer"])).unwrap(), Answer.into());
        let err = parse(json!("verbl")).unwrap_err();
        assert!(err.contains("unknown value `verbl`"), "{err}");
        assert!(err.contains("did you mean `verbal`"), "{err}");
        let err = parse(json!(["verbal", "answr"])).unwrap_err();
        assert!(err.contains("unknown value `answr`"), "{err}");
    }

    #[test]
    fn one_kind_serialises_as_a_name() {
        use ProbeKind::*;
        let one = serde_json::to_value(ProbeKinds::from(Answer)).unwrap();
        assert_eq!(one, json!("answer"));
        let both = serde_json::to_value(ProbeKinds::new(vec![Answer, Verbal])).unwrap();
        assert_eq!(both, json!(["answer", "verbal"]));
    }

    #[test]
    fn empty_and_repeated_lists_are_errors() {
        let params = Params::from_json(&json!({"kind": []}));
        let d = ProbeKinds::new(vec![]).check(&params).to_string();
        assert!(d.contains("at least one"), "{d}");
        let d = ProbeKinds::new(vec![ProbeKind::Verbal, ProbeKind::Verbal])
            .check(&params)
            .to_string();
        assert!(d.contains("twice"), "{d}");
    }
}
