//! The docs checked against the code, so they cannot drift apart silently:
//! config fields (`config/reference.yaml`, `docs/configuration.md`) against
//! the raw config structs, `config/invalid/` headers against `cohort check`,
//! the admin API table against a running proxy and the admin router, the
//! commands and flags the docs use against `cohort --help`, and the Docker
//! example against the files the shipped config names.
//!
//! The config fields themselves are checked by a unit test next to the raw
//! structs (`src/config/docs_test.rs`), which this binary cannot see.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::util::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// ---------------------------------------------------------------------------
// config/reference.yaml (its fields against the code are checked by the unit
// test in src/config/docs_test.rs, which can see the raw structs).

#[test]
fn reference_yaml_is_a_valid_config() {
    let (code, _, err) = cohort_cmd(&[
        "check",
        &repo("config/reference.yaml").display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
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
                let help = cohort_cmd(&[first, "--help"]).1;
                // A nested command (`cohort store migrate`): its own help.
                match inv.split_whitespace().nth(1) {
                    Some(sub) if help.contains(&format!("\n  {sub} ")) => {
                        let at = inv.find(sub).unwrap() + sub.len();
                        (cohort_cmd(&[first, sub, "--help"]).1, &inv[at..])
                    }
                    _ => (help, &inv[first.len()..]),
                }
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
        "RUSTDOCFLAGS=\"-D warnings\" cargo doc --no-deps --lib --document-private-items --locked",
        "cargo check --quiet --manifest-path fuzz/Cargo.toml",
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
