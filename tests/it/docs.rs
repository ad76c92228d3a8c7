//! The docs checked against the code, so they cannot drift apart silently:
//! config fields (`config/reference.yaml`, `docs/configuration.md`) against
//! the raw config structs, `config/invalid/` headers against `cohort check`,
//! the admin API table against a running proxy and the admin router, the
//! commands and flags the docs use against `cohort --help`, and the Docker
//! example against the files the shipped config names.
//!
//! The config structs are traced with a small serde `Deserializer` that
//! answers every `deserialize_struct` by visiting each declared field: the
//! field list comes from `#[derive(Deserialize)]` itself, so a field added
//! to the code without a doc entry turns this red.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::util::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// ---------------------------------------------------------------------------
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
        cohort::config::raw::RawConfig::deserialize(Tracer {
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
    let (code, _, err) = cohort_cmd(&[
        "check",
        &repo("config/reference.yaml").display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
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

// ---------------------------------------------------------------------------
// config/invalid/: each file's header is exactly what `cohort check` says.

#[test]
fn every_invalid_example_reports_exactly_what_its_header_says() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("config/invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .skip_while(|l| !l.contains("must report exactly"))
            .skip(1)
            .map(|l| l.trim_start_matches('#').trim())
            .collect();
        assert!(
            !expected.is_empty(),
            "{}: no `must report exactly` header",
            file.display()
        );
        let shown = file.display().to_string();
        let (code, _, err) = cohort_cmd(&["check", &shown]);
        assert_eq!(code, 1, "{shown} must be rejected:\n{err}");
        let got: Vec<String> = err
            .lines()
            .skip(1)
            .map(|l| {
                l.trim()
                    .trim_start_matches(&format!("{shown}:"))
                    .to_string()
            })
            .collect();
        assert_eq!(got, expected, "{shown}: header and `cohort check` differ");
    }
}

// ---------------------------------------------------------------------------
// The admin API table.

/// `(METHOD, /path/{param})` of every row of docs/admin-api.md's table.
fn documented_admin_routes() -> Vec<(String, String)> {
    read("docs/admin-api.md")
        .lines()
        .filter_map(|l| {
            let cell = l.strip_prefix("| `")?.split('`').next()?;
            let (method, path) = cell.split_once(' ')?;
            (matches!(method, "GET" | "POST") && path.starts_with('/'))
                .then(|| (method.to_string(), path.to_string()))
        })
        .collect()
}

/// `(METHOD, /path/{})` of every route the admin router matches, read from
/// its source: `(Method::GET, ["admin", "assignments", experiment, unit])`.
fn routed_admin_routes() -> BTreeSet<(String, String)> {
    let src = read("src/admin/mod.rs");
    let mut out = BTreeSet::new();
    for (i, _) in src.match_indices("(Method::") {
        let arm = &src[i + "(Method::".len()..];
        let Some((method, rest)) = arm.split_once(", [") else {
            continue;
        };
        let Some((segments, _)) = rest.split_once("])") else {
            continue;
        };
        // `action @ ("pause" | "resume")` matches each alternative.
        let mut paths = vec![String::new()];
        for seg in segments.split(", ") {
            let seg = seg.split(" @ ").last().unwrap().trim_matches(['(', ')']);
            let options: Vec<String> = if seg.starts_with('"') {
                seg.split(" | ")
                    .map(|s| s.trim_matches('"').to_string())
                    .collect()
            } else {
                vec!["{}".to_string()]
            };
            paths = paths
                .iter()
                .flat_map(|p| options.iter().map(move |o| format!("{p}/{o}")))
                .collect();
        }
        for p in paths {
            out.insert((method.to_string(), p));
        }
    }
    out
}

fn params_as_braces(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_admin_endpoint_is_served_and_every_route_documented() {
    let documented = documented_admin_routes();
    assert!(documented.len() >= 8, "{documented:?}");
    let routed = routed_admin_routes();
    assert!(routed.len() >= 8, "{routed:?}");
    let doc_set: BTreeSet<(String, String)> = documented
        .iter()
        .map(|(m, p)| (m.clone(), params_as_braces(p)))
        .collect();
    assert_eq!(
        doc_set, routed,
        "docs/admin-api.md's table and the admin router differ"
    );

    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &with_admin(
            &dir,
            &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
        ),
    );
    let client = TestClient::new();
    client.post(cohort.addr, "/predict", Some("alice")).await;
    let admin = cohort.admin_addr();
    for (method, path) in &documented {
        let concrete = path
            .replace("{experiment}", "ranker")
            .replace("{name}", "ranker")
            .replace("{unit}", "alice");
        assert!(!concrete.contains('{'), "unknown parameter in {path}");
        let r = admin_call(&client, admin, method, &concrete, Some(ADMIN_TOKEN)).await;
        assert!(
            r.status.is_success(),
            "{method} {concrete} (documented as {path}) answered {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Commands and flags the docs use.

fn doc_pages() -> Vec<(String, String)> {
    let mut pages = vec![("README.md".to_string(), read("README.md"))];
    let mut names: Vec<String> = std::fs::read_dir(repo("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    names.sort();
    for n in names {
        let path = format!("docs/{n}");
        pages.push((path.clone(), read(&path)));
    }
    pages
}

/// Every `cohort ...` invocation in a page's code blocks and inline code,
/// as the words after `cohort` (`cargo run --release -- X` counts as
/// `cohort X`), up to a pipe or a comment.
fn invocations(page: &str) -> Vec<String> {
    let mut snippets: Vec<&str> = Vec::new();
    let mut in_block = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            snippets.push(line);
        } else {
            snippets.extend(line.split('`').skip(1).step_by(2));
        }
    }
    let mut out = Vec::new();
    for s in snippets {
        let s = s.split(" | ").next().unwrap().split(" # ").next().unwrap();
        let s = s.replace("cargo run --release -- ", "cohort ");
        let words: Vec<&str> = s.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            let starts = *w == "cohort" && (i == 0 || matches!(words[i - 1], "$" | "sudo"));
            if starts && i + 1 < words.len() {
                out.push(words[i + 1..].join(" "));
            }
        }
    }
    out
}

#[test]
fn every_command_and_flag_the_docs_use_exists() {
    let (_, top_help, _) = cohort_cmd(&["--help"]);
    let mut checked = 0;
    for (page, text) in doc_pages() {
        for inv in invocations(&text) {
            let first = inv.split_whitespace().next().unwrap();
            if first.chars().all(|c| c.is_ascii_uppercase()) {
                continue; // a placeholder: `cohort COMMAND --help`
            }
            let (help, flags_of) = if first.starts_with('-') {
                (top_help.clone(), inv.as_str())
            } else {
                assert!(
                    top_help.contains(&format!("\n  {first} ")),
                    "{page}: `cohort {inv}` uses a command `cohort --help` does not list"
                );
                (cohort_cmd(&[first, "--help"]).1, &inv[first.len()..])
            };
            for flag in flags_of
                .split_whitespace()
                .filter(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap())
            {
                assert!(
                    help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                    "{page}: `cohort {inv}` uses {flag}, which `--help` does not list:\n{help}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} invocations found");
}

#[test]
fn the_readme_test_command_is_what_ci_runs() {
    let readme = read("README.md");
    assert!(
        readme.contains("```sh\nbash .ci/run\n```"),
        "README gives `bash .ci/run`"
    );
    let ci = read(".ci/run");
    for step in [
        "RUSTDOCFLAGS=\"-D warnings\" cargo doc --no-deps --lib --locked",
        "python3 .ci/licences.py",
        "cargo fmt --all -- --check",
        "cargo clippy --all-targets --locked -- -D warnings",
        "cargo test --locked",
        "COHORT_TEST_DATA_PATH=hyper cargo test --locked --test it",
        "COHORT_TEST_WORKERS=1 cargo test --locked --test it",
    ] {
        assert!(ci.contains(step), ".ci/run lacks `{step}`");
        assert!(
            read("docs/testing.md").contains(step),
            "docs/testing.md does not describe `{step}`"
        );
    }
    assert!(readme.lines().count() <= 200, "the README stays short");
}

// ---------------------------------------------------------------------------
// deploy/: the Docker example can start on the shipped config.

#[test]
fn the_docker_examples_mount_every_file_the_shipped_config_names() {
    let cfg = read("deploy/cohort.yaml");
    let named: Vec<&str> = cfg
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| {
            ["token_file:", "overrides_file:", "log_unit_key_file:"]
                .into_iter()
                .filter_map(move |k| l.split(k).nth(1))
        })
        .map(|v| v.trim().split([' ', '}', ',']).next().unwrap())
        .collect();
    assert!(
        named.contains(&"/etc/cohort/admin.token"),
        "deploy/cohort.yaml names its token: {named:?}"
    );
    for example in ["deploy/Dockerfile", "deploy/README.md"] {
        let text = read(example);
        let run = &text[text.find("docker run").expect("a docker run example")..];
        for file in &named {
            assert!(
                run.contains(&format!(":{file}:ro")),
                "{example}'s docker run does not mount {file}, which deploy/cohort.yaml needs"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Links between the pages.

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_block = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if !in_block && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut pages = doc_pages();
    pages.push(("deploy/README.md".into(), read("deploy/README.md")));
    let mut checked = 0;
    for (page, text) in &pages {
        let dir = Path::new(page).parent().unwrap();
        for (i, _) in text.match_indices("](") {
            let target = text[i + 2..].split(')').next().unwrap();
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                PathBuf::from(page)
            } else {
                dir.join(file)
            };
            let full = repo(&path.display().to_string());
            assert!(full.exists(), "{page}: link to {target}: no such file");
            if !anchor.is_empty() {
                let text = std::fs::read_to_string(&full).unwrap();
                assert!(
                    anchors(&text).contains(anchor),
                    "{page}: link to {target}: no such heading in {}",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} links found");
}

// ---------------------------------------------------------------------------
// The assignment contract's numbers.

#[test]
fn the_documented_golden_buckets_are_the_contract() {
    let md = read("docs/assignment.md");
    let mut rows = 0;
    let golden = md
        .split("Golden vectors")
        .nth(1)
        .and_then(|t| t.split("\n\n").nth(1))
        .expect("docs/assignment.md has a golden vector table");
    for line in golden
        .lines()
        .filter(|l| l.starts_with("| `") || l.starts_with("| (empty"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (salt, unit, want) = (cells[1], cells[2], cells[3]);
        let Ok(want) = want.parse::<u32>() else {
            continue;
        };
        let salt = if salt.starts_with("(empty") {
            ""
        } else {
            salt.trim_matches('`')
        };
        let unit = unit.split('`').nth(1).unwrap();
        assert_eq!(bucket(salt, unit), want, "docs/assignment.md: {line}");
        rows += 1;
    }
    assert!(rows >= 8, "golden table not found ({rows} rows)");
    // The README's example: alice is bucket 7889, bob 1237.
    let readme = read("README.md");
    assert!(
        readme.contains("`alice` hashes to bucket 7889") && bucket("ranker-v2", "alice") == 7889
    );
    assert!(readme.contains("`bob` (bucket 1237)") && bucket("ranker-v2", "bob") == 1237);
    // The coverage example.
    assert!(md.contains("are 5449, 8654 and 359"));
    let cov: Vec<u32> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| bucket("coverage:ranker-v2", u))
        .collect();
    assert_eq!(cov, [5449, 8654, 359]);
}
