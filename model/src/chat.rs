//! Chat templates (`tokenizer_config.json` / `chat_template.jinja`) rendered with minijinja,
//! with the environment transformers sets up: trim/lstrip blocks, loop controls, python string
//! methods, `raise_exception`, `strftime_now` and transformers' `tojson`.

use std::path::Path;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use crate::error::{read_file, ModelError, Result};
use crate::tokenizer::TextTokenizer;

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template plus the special tokens it may reference.
#[derive(Debug)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    special_tokens: Vec<(String, String)>,
}

impl ChatTemplate {
    /// Compiles `source`; `special_tokens` become template variables (`bos_token`, ...).
    pub fn new(source: &str, special_tokens: Vec<(String, String)>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME.to_string(), source.to_string())
            .map_err(|e| ModelError::ChatTemplate(describe(&e)))?;
        Ok(ChatTemplate {
            source: source.to_string(),
            env,
            special_tokens,
        })
    }

    /// Finds the template of a model directory the way transformers does: `chat_template.jinja`
    /// first, else `chat_template` in `tokenizer_config.json` (a string, or a list of named
    /// templates of which "default" is used). `None` when the model has no template.
    pub fn from_dir(dir: &Path, tokenizer: &TextTokenizer) -> Result<Option<Self>> {
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            let bytes = read_file(&jinja)?;
            Some(String::from_utf8(bytes).map_err(|_| {
                ModelError::ChatTemplate(format!("{} is not UTF-8", jinja.display()))
            })?)
        } else {
            template_from_config(&tokenizer.config)?
        };
        let specials = special_tokens(tokenizer);
        source.map(|s| Self::new(&s, specials)).transpose()
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` (a JSON list of `{role, content, ...}` objects). `extra` is merged into
    /// the context (e.g. `{"tools": [...]}`, `{"enable_thinking": false}`).
    pub fn render(
        &self,
        messages: &Json,
        add_generation_prompt: bool,
        extra: Option<&Json>,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::ChatTemplate(describe(&e)))?;
        let mut ctx = serde_json::Map::new();
        // transformers always defines these (as None when unused); templates test them.
        ctx.insert("tools".into(), Json::Null);
        ctx.insert("documents".into(), Json::Null);
        for (k, v) in &self.special_tokens {
            ctx.insert(k.clone(), Json::String(v.clone()));
        }
        if let Some(Json::Object(extra)) = extra {
            for (k, v) in extra {
                ctx.insert(k.clone(), v.clone());
            }
        }
        let base = Value::from_serialize(&ctx);
        let ctx = context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            ..base
        };
        tmpl.render(ctx)
            .map_err(|e| ModelError::ChatTemplate(describe(&e)))
    }
}

fn template_from_config(cfg: &Json) -> Result<Option<String>> {
    match cfg.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(items)) => {
            let named = |want: &str| {
                items.iter().find_map(|t| {
                    (t.get("name")?.as_str()? == want)
                        .then(|| t.get("template")?.as_str().map(str::to_string))
                        .flatten()
                })
            };
            named("default").map(Some).ok_or_else(|| {
                ModelError::ChatTemplate("chat_template list has no \"default\" entry".into())
            })
        }
        Some(other) => Err(ModelError::ChatTemplate(format!(
            "chat_template must be a string or a list, got {other}"
        ))),
    }
}

/// The special-token variables transformers passes to templates.
fn special_tokens(tok: &TextTokenizer) -> Vec<(String, String)> {
    [
        "bos_token",
        "eos_token",
        "unk_token",
        "pad_token",
        "sep_token",
        "cls_token",
        "mask_token",
    ]
    .iter()
    .filter_map(|k| tok.special_token(k).map(|v| (k.to_string(), v)))
    .collect()
}

fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> String {
    chrono::Local::now().format(&format).to_string()
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`; no HTML escaping, python separators.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson separators must have two items",
            ))
        }
        // json.dumps uses "," when indenting, ", " otherwise.
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let mut out = String::new();
    let opts = DumpOpts {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    dump(&value, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct DumpOpts {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn dump(v: &Value, o: &DumpOpts, depth: usize, out: &mut String) -> std::result::Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = o.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String | ValueKind::Bytes => {
            escape_into(v.as_str().unwrap_or_default(), out);
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                dump(item, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map | ValueKind::Plain => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if o.sort_keys {
                keys.sort_by_key(|a| a.to_string());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                escape_into(&key.to_string(), out);
                out.push_str(&o.key_sep);
                dump(&v.get_item(key)?, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => escape_into(&v.to_string(), out),
    }
    Ok(())
}

fn python_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

fn escape_into(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, extra: Json) -> String {
        ChatTemplate::new(src, vec![("bos_token".into(), "<s>".into())])
            .unwrap()
            .render(&serde_json::json!([]), false, Some(&extra))
            .unwrap()
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let extra =
            serde_json::json!({"x": {"name": "f", "args": [1, 2.5, "a\"b ü"], "none": null}});
        // json.dumps(x, ensure_ascii=False): python separators, no HTML escaping.
        assert_eq!(
            render("{{ x | tojson }}", extra.clone()),
            r#"{"args": [1, 2.5, "a\"b ü"], "name": "f", "none": null}"#
        );
        assert_eq!(
            render("{{ x.args | tojson(indent=2) }}", extra),
            "[\n  1,\n  2.5,\n  \"a\\\"b ü\"\n]"
        );
    }

    #[test]
    fn transformers_globals_are_available() {
        assert_eq!(
            render("{{ bos_token }}{{ tools is none }}", serde_json::json!({})),
            "<s>True" // rendered like Jinja
        );
        assert!(!render("{{ strftime_now('%Y-%m-%d') }}", serde_json::json!({})).is_empty());
        let t = ChatTemplate::new("{{ raise_exception('nope') }}", vec![]).unwrap();
        let err = t.render(&serde_json::json!([]), false, None).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
