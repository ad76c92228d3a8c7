//! The config docs checked against the code: every field the raw serde
//! structs accept must be shown in `config/reference.yaml` (live, or
//! commented out as `# key: value`) and listed in `docs/configuration.md`,
//! and every field those show must be one the structs accept.
//!
//! The structs are traced with a small serde `Deserializer` that answers
//! every `deserialize_struct` by visiting each declared field: the field
//! list comes from `#[derive(Deserialize)]` itself, so a field added to the
//! code without a doc entry turns this red. (A unit test, not in
//! `tests/it/docs.rs` with the other doc checks, because the raw structs are
//! private to the crate.)

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::raw::RawConfig;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// The config's fields, from the serde derive.

/// Every field path of the config (`upstreams.<name>.url`,
/// `experiments[].variants[].weight`), which ones hold a struct, and which
/// paths are maps keyed by names the user picks.
#[derive(Debug, Default)]
struct Fields {
    all: BTreeSet<String>,
    structs: BTreeSet<String>,
    maps: BTreeSet<String>,
}

impl Fields {
    fn of_config() -> Fields {
        let fields = RefCell::new(Fields::default());
        RawConfig::deserialize(Tracer {
            path: String::new(),
            fields: &fields,
        })
        .expect("the config structs can be traced");
        fields.into_inner()
    }

    /// Fields whose value is not itself a struct (or a list or map of them).
    fn leaves(&self) -> Vec<&String> {
        self.all
            .iter()
            .filter(|f| {
                ![f.to_string(), format!("{f}[]"), format!("{f}.<name>")]
                    .iter()
                    .any(|p| self.structs.contains(p))
            })
            .collect()
    }

    /// The path of `key` under `parent`: a field, or `<name>` in a map.
    fn child(&self, parent: &str, key: &str) -> String {
        if self.maps.contains(parent) {
            format!("{parent}.<name>")
        } else if parent.is_empty() {
            key.to_string()
        } else {
            format!("{parent}.{key}")
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Deserializes any config struct by visiting every field it declares,
/// one element of every list and one `<name>` entry of every map.
struct Tracer<'a> {
    path: String,
    fields: &'a RefCell<Fields>,
}

type E = de::value::Error;

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = E;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, E> {
        Err(de::Error::custom(format!(
            "{}: a type the tracer does not know",
            self.path
        )))
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_bool(false)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_u64(0)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_u64(0)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_u64(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_u64(0)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_i64(0)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_i64(0)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_i64(0)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_i64(0)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_f64(0.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_f64(0.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_char('x')
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_string(String::new())
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_some(self)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, E> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_seq(OneItem {
            path: Some(format!("{}[]", self.path)),
            fields: self.fields,
        })
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        self.fields.borrow_mut().maps.insert(self.path.clone());
        v.visit_map(Entries {
            keys: vec!["<name>"],
            next: 0,
            path: self.path.clone(),
            value_path: Some(format!("{}.<name>", self.path)),
            fields: self.fields,
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        names: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, E> {
        {
            let mut f = self.fields.borrow_mut();
            f.structs.insert(self.path.clone());
            for n in names {
                f.all.insert(join(&self.path, n));
            }
        }
        v.visit_map(Entries {
            keys: names.to_vec(),
            next: 0,
            path: self.path.clone(),
            value_path: None,
            fields: self.fields,
        })
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        v.visit_str("")
    }
    serde::forward_to_deserialize_any! {
        i128 u128 bytes byte_buf unit unit_struct tuple tuple_struct enum ignored_any
    }
}

/// A list of one traced element.
struct OneItem<'a> {
    path: Option<String>,
    fields: &'a RefCell<Fields>,
}

impl<'de> SeqAccess<'de> for OneItem<'_> {
    type Error = E;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, E> {
        match self.path.take() {
            None => Ok(None),
            Some(path) => seed
                .deserialize(Tracer {
                    path,
                    fields: self.fields,
                })
                .map(Some),
        }
    }
}

/// A struct's fields (or a map's one `<name>` entry), each traced.
struct Entries<'a> {
    keys: Vec<&'static str>,
    next: usize,
    path: String,
    /// For a map: where its values live; for a struct: `None` (per field).
    value_path: Option<String>,
    fields: &'a RefCell<Fields>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = E;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, E> {
        let Some(key) = self.keys.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        seed.deserialize(de::value::StrDeserializer::<E>::new(key))
            .map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, E> {
        let key = self.keys[self.next - 1];
        let path = self
            .value_path
            .clone()
            .unwrap_or_else(|| join(&self.path, key));
        seed.deserialize(Tracer {
            path,
            fields: self.fields,
        })
    }
}

// ---------------------------------------------------------------------------
// What config/reference.yaml shows.

/// Every field path `reference.yaml` shows: its live YAML, plus the
/// settings shown commented out (`# key: value`, the `#` where the key
/// would start), placed by indentation.
fn documented_in_reference(fields: &Fields) -> BTreeSet<String> {
    let text = read("config/reference.yaml");
    let mut out = BTreeSet::new();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    walk_yaml(&doc, "", fields, &mut out);

    // (column of the key, normalized path) of the entries above this line.
    let mut stack: Vec<(usize, String)> = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let rest = line.trim_start();
        let (col, content, commented) = match rest.strip_prefix('#') {
            Some(after) => {
                let body = after.trim_start_matches(' ');
                let spaces = after.len() - body.len();
                if spaces == 0 || key_of(body).is_none() {
                    continue;
                }
                (indent + spaces - 1, body, true)
            }
            None if rest.is_empty() => continue,
            None => (indent, rest, false),
        };
        let (mut col, mut content) = (col, content);
        while let Some(after) = content.strip_prefix("- ") {
            while stack.last().is_some_and(|(c, _)| *c > col) {
                stack.pop();
            }
            let parent = stack.last().map_or(String::new(), |(_, p)| p.clone());
            let item = if parent.ends_with("[]") {
                parent
            } else {
                format!("{parent}[]")
            };
            if stack.last().is_some_and(|(c, _)| *c == col) {
                stack.pop();
            }
            stack.push((col, item));
            let trimmed = after.trim_start_matches(' ');
            col += 2 + after.len() - trimmed.len();
            content = trimmed;
        }
        let Some(key) = key_of(content) else {
            continue;
        };
        while stack.last().is_some_and(|(c, _)| *c >= col) {
            stack.pop();
        }
        let parent = stack.last().map_or(String::new(), |(_, p)| p.clone());
        let path = fields.child(&parent, key);
        if commented {
            out.insert(path.clone());
        }
        stack.push((col, path));
    }
    out
}

fn walk_yaml(v: &serde_yaml::Value, path: &str, fields: &Fields, out: &mut BTreeSet<String>) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                let key = k.as_str().expect("string keys");
                let p = fields.child(path, key);
                out.insert(p.clone());
                walk_yaml(v, &p, fields, out);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for item in items {
                walk_yaml(item, &format!("{path}[]"), fields, out);
            }
        }
        _ => {}
    }
}

/// The key of `key: value` or `key:`, if it is a lower-case field name.
fn key_of(s: &str) -> Option<&str> {
    let end = s.find(": ").or_else(|| s.strip_suffix(':').map(str::len))?;
    let key = &s[..end];
    (!key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then_some(key)
}

#[test]
fn reference_yaml_shows_every_config_field_and_only_real_ones() {
    let fields = Fields::of_config();
    assert!(
        fields.all.contains("experiments[].variants[].weight")
            && fields.all.contains("upstreams.<name>.url"),
        "the tracer sees nested fields: {:?}",
        fields.all
    );
    let shown = documented_in_reference(&fields);
    let shown_fields: BTreeSet<String> = shown
        .iter()
        .filter(|p| !p.ends_with("<name>"))
        .cloned()
        .collect();
    let unknown: Vec<_> = shown_fields.difference(&fields.all).collect();
    assert!(
        unknown.is_empty(),
        "config/reference.yaml shows fields the code does not accept: {unknown:?}"
    );
    let missing: Vec<_> = fields.all.difference(&shown_fields).collect();
    assert!(
        missing.is_empty(),
        "fields the code accepts that config/reference.yaml does not show (add them, commented out if they cannot be live): {missing:?}"
    );
    // And the live part is a valid config.
    let reference = repo("config/reference.yaml");
    if let Err(e) = crate::config::load_file(&reference) {
        panic!("config/reference.yaml is not a valid config:\n{e}");
    }
}

#[test]
fn configuration_md_lists_every_config_field_and_only_real_ones() {
    let fields = Fields::of_config();
    let md = read("docs/configuration.md");
    let missing: Vec<_> = fields
        .leaves()
        .into_iter()
        .filter(|f| !md.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md's field table lacks {missing:?}"
    );
    let table = md
        .split("## Every field")
        .nth(1)
        .and_then(|t| t.split("\n## ").next())
        .expect("docs/configuration.md has an `## Every field` table");
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let name = row[3..].split('`').next().unwrap();
        assert!(
            fields.all.contains(name),
            "docs/configuration.md lists `{name}`, which the code does not accept"
        );
    }
}
