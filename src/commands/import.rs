//! `cohort import`: a vendor's existing assignments into the store, so a
//! migration moves nobody — not even units bucketed under an older vendor
//! config that today's parameters would draw differently.
//!
//! Input: GrowthBook sticky-bucket documents (`{"attributeName",
//! "attributeValue", "assignments": {"<experimentKey>__<bucketVersion>":
//! "<variationKey>"}}`, as a JSON array, a JSON object of documents keyed
//! as the SDKs key them, or one document per line), or a CSV of
//! `unit,variant` from any vendor. A variant is named by its cohort name, or
//! by its index (GrowthBook's default variation keys are `"0"`, `"1"`, ...).
//!
//! Every line is checked before anything is written: one bad line and
//! nothing is imported. The rows are then recorded as the experiment's
//! **epoch-1** assignments, first writer wins (a unit already stored keeps
//! what it has). A store that has never seen the experiment first gets the
//! config's epoch 1 for it, as a start-up would record it. The proxy must
//! not be running on the store (the embedded store is one process's).
//!
//! [`import_assignments`] is the one place rows reach the store, so a
//! store with another write API adapts there.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::Outcome;
use crate::assign::epoch::Epoch;
use crate::assign::hash::unit_key;
use crate::assign::ledger::{ExperimentId, LedgerEvent, VariantId};
use crate::assign::store::{Store, StoreError};
use crate::config::{Config, ExperimentConfig};
use crate::observe::time::now_rfc3339;
use crate::terms::valid_unit;

/// What the input file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportFormat {
    /// GrowthBook sticky-bucket documents for the experiment key given
    /// (all bucket versions; the highest one a document has wins).
    GrowthbookSticky {
        /// GrowthBook's experiment key (the `<key>` of `<key>__<version>`).
        experiment_key: String,
        /// Only documents of this `attributeName`, if given.
        attribute: Option<String>,
    },
    /// `unit,variant` lines; a first line `unit,variant` is a header.
    Csv,
}

/// One row to import: a unit id and the vendor's name for its variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Where it came from (`line 3`, `document 2`), for error messages.
    pub at: String,
    /// The unit id.
    pub unit: String,
    /// The variant as the vendor names it.
    pub variant: String,
}

/// Rows of a CSV file of `unit,variant`. A field may be double-quoted
/// (`""` inside is a quote).
pub fn parse_csv(text: &str) -> Result<Vec<Row>, Vec<String>> {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("line {}", i + 1);
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        match csv_fields(line) {
            Some(f) if f.len() == 2 => {
                if i == 0 && f[0] == "unit" && f[1] == "variant" {
                    continue;
                }
                rows.push(Row {
                    at,
                    unit: f[0].clone(),
                    variant: f[1].trim().to_string(),
                });
            }
            _ => errors.push(format!("{at}: expected `unit,variant`, got {line:?}")),
        }
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(errors)
    }
}

fn csv_fields(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => break,
                    c => field.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                field.push(c);
                chars.next();
            }
        }
        out.push(field);
        match chars.next() {
            None => return Some(out),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

/// Rows of GrowthBook sticky-bucket documents for `experiment_key`.
pub fn parse_growthbook(
    text: &str,
    experiment_key: &str,
    attribute: Option<&str>,
) -> Result<Vec<Row>, Vec<String>> {
    let docs: Vec<(String, Value)> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(a)) => a
            .into_iter()
            .enumerate()
            .map(|(i, d)| (format!("document {}", i + 1), d))
            .collect(),
        Ok(Value::Object(m)) if !m.contains_key("assignments") => m
            .into_iter()
            .map(|(k, d)| (format!("document {k:?}"), d))
            .collect(),
        Ok(doc) => vec![("document 1".into(), doc)],
        Err(_) => {
            let mut docs = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str(line) {
                    Ok(d) => docs.push((format!("line {}", i + 1), d)),
                    Err(e) => return Err(vec![format!("line {}: not JSON: {e}", i + 1)]),
                }
            }
            docs
        }
    };
    let prefix = format!("{experiment_key}__");
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (at, doc) in docs {
        let (Some(name), Some(unit), Some(assignments)) = (
            doc.get("attributeName").and_then(Value::as_str),
            doc.get("attributeValue").and_then(Value::as_str),
            doc.get("assignments").and_then(Value::as_object),
        ) else {
            errors.push(format!(
                "{at}: not a sticky-bucket document (attributeName, attributeValue, assignments)"
            ));
            continue;
        };
        if attribute.is_some_and(|a| a != name) {
            continue;
        }
        // The highest bucket version of this experiment the document holds.
        let best = assignments
            .iter()
            .filter_map(|(k, v)| {
                let version: u64 = k.strip_prefix(&prefix)?.parse().ok()?;
                Some((version, v))
            })
            .max_by_key(|(version, _)| *version);
        let Some((_, v)) = best else { continue };
        match v.as_str() {
            Some(variant) => rows.push(Row {
                at,
                unit: unit.to_string(),
                variant: variant.to_string(),
            }),
            None => errors.push(format!("{at}: the variation key {v} is not a string")),
        }
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(errors)
    }
}

/// The configured variant a vendor's variant name means: a variant of that
/// name, else an index into the variants.
fn variant_index(x: &ExperimentConfig, vendor: &str) -> Option<usize> {
    x.variants
        .iter()
        .position(|v| v.name == vendor)
        .or_else(|| {
            vendor
                .parse::<usize>()
                .ok()
                .filter(|i| *i < x.variants.len())
        })
}

/// How an import went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Imported {
    /// Units recorded now.
    pub created: u64,
    /// Units the store already held (they keep their assignment).
    pub already: u64,
}

/// Records `rows` (unit, variant ledger id) as assignments of experiment
/// `id` under `epoch`, first writer wins; many in flight, so the store's
/// group commit shares each fsync among them.
pub async fn import_assignments(
    store: Arc<Store>,
    name: &str,
    id: ExperimentId,
    epoch: Epoch,
    rows: Vec<(String, VariantId)>,
) -> Result<Imported, StoreError> {
    const IN_FLIGHT: usize = 64;
    let rows = Arc::new(rows);
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..IN_FLIGHT {
        let (store, rows, name) = (store.clone(), rows.clone(), name.to_string());
        tasks.spawn(async move {
            let mut got = Imported::default();
            for (unit, variant) in rows.iter().skip(lane).step_by(IN_FLIGHT) {
                let key = unit_key(&name, unit.as_bytes());
                let a = store.assign(id, key, *variant, epoch).await?;
                if a.created {
                    got.created += 1;
                } else {
                    got.already += 1;
                }
            }
            Ok::<_, StoreError>(got)
        });
    }
    let mut total = Imported::default();
    while let Some(r) = tasks.join_next().await {
        let got = r.expect("an import task does not panic")?;
        total.created += got.created;
        total.already += got.already;
    }
    Ok(total)
}

/// `cohort import`: reads `input` in `format` and records its rows as
/// epoch-1 assignments of `experiment` in the store of `config`.
pub async fn import_command(
    config: Config,
    experiment: &str,
    format: &ImportFormat,
    input: &Path,
) -> Outcome {
    let Some(x) = config.experiments.iter().find(|x| x.name == experiment) else {
        let names: Vec<&str> = config.experiments.iter().map(|x| x.name.as_str()).collect();
        return Outcome::fail(format!(
            "cohort import: no experiment {experiment:?} in the config (it has: {})",
            names.join(", ")
        ));
    };
    let text = match std::fs::read_to_string(input) {
        Ok(t) => t,
        Err(e) => return Outcome::fail(format!("cohort import: {}: {e}", input.display())),
    };
    let parsed = match format {
        ImportFormat::Csv => parse_csv(&text),
        ImportFormat::GrowthbookSticky {
            experiment_key,
            attribute,
        } => parse_growthbook(&text, experiment_key, attribute.as_deref()),
    };
    let rows = match parsed {
        Ok(r) => r,
        Err(errors) => return fail_lines(input, &errors),
    };
    let mut errors = Vec::new();
    let mut wanted: Vec<(String, usize)> = Vec::with_capacity(rows.len());
    for r in &rows {
        if !valid_unit(r.unit.as_bytes()) {
            errors.push(format!(
                "{}: {:?} is not a valid unit id (1-256 bytes, no control characters)",
                r.at, r.unit
            ));
        } else {
            match variant_index(x, &r.variant) {
                Some(i) => wanted.push((r.unit.clone(), i)),
                None => errors.push(format!(
                    "{}: variant {:?} is neither a variant of {experiment:?} nor an index below {}",
                    r.at,
                    r.variant,
                    x.variants.len()
                )),
            }
        }
    }
    if !errors.is_empty() {
        return fail_lines(input, &errors);
    }
    // The config's store, whichever it is (a Redis store takes the units
    // with SET NX, like a first request would).
    let opened = match &config.redis {
        None => Store::open(&config.store_path),
        Some(r) => {
            // Never degrade here: a unit not acknowledged by Redis must
            // fail the import, not be queued by a process about to exit.
            let mut o = crate::reload::redis_options(r);
            o.serve_by_hash = false;
            o.timeout = std::time::Duration::from_secs(5);
            Store::open_redis(o).await
        }
    };
    let store = match opened {
        Ok(s) => Arc::new(s),
        Err(e @ StoreError::Locked(_)) => {
            return Outcome::fail(format!(
                "cohort import: {e}: stop it first (import writes the store the proxy owns)"
            ))
        }
        Err(e) => return Outcome::fail(format!("cohort import: {e}")),
    };
    let mut ledger = store.ledger();
    if ledger.get(experiment).is_none() {
        // The experiment's first epoch, as a start-up with this config
        // would record it; the rest of the config is left to the start-up.
        let plan = match crate::reload::plan::plan(&ledger, &*store, None, &config, &now_rfc3339())
        {
            Ok(p) => p,
            Err(errors) => {
                let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                return fail_lines(&config.source, &lines);
            }
        };
        let first: Vec<LedgerEvent> = plan
            .events
            .into_iter()
            .filter(|e| matches!(e, LedgerEvent::Epoch { experiment: n, .. } if n == experiment))
            .collect();
        if let Err(e) = store.append_ledger(first).await {
            return Outcome::fail(format!("cohort import: {e}"));
        }
        ledger = store.ledger();
    }
    let Some(l) = ledger.get(experiment) else {
        return Outcome::fail(format!(
            "cohort import: {experiment:?} has no epoch in the store"
        ));
    };
    if l.current().epoch != Epoch::FIRST {
        return Outcome::fail(format!(
            "cohort import: {experiment:?} is at epoch {} in the store; imported assignments are epoch 1 and must be recorded before the rule first changes",
            l.current().epoch.0
        ));
    }
    let mut to_store = Vec::with_capacity(wanted.len());
    for (unit, i) in wanted {
        let name = &x.variants[i].name;
        match l.variant_id(name) {
            Some(v) => to_store.push((unit, v)),
            None => {
                return Outcome::fail(format!(
                    "cohort import: variant {name:?} is not in the store's ledger of {experiment:?} (apply the config first)"
                ))
            }
        }
    }
    let n = to_store.len();
    match import_assignments(store.clone(), experiment, l.id, Epoch::FIRST, to_store).await {
        Ok(got) => {
            if let Err(e) = store.sync().await {
                return Outcome::fail(format!("cohort import: {e}"));
            }
            Outcome {
                stdout: format!(
                    "imported {n} rows into {experiment:?} as epoch-1 assignments: {} recorded, {} already stored (kept as they were)\n",
                    got.created, got.already
                ),
                stderr: String::new(),
                code: 0,
            }
        }
        Err(e) => Outcome::fail(format!("cohort import: {e} (rows already recorded stay)")),
    }
}

fn fail_lines(file: &Path, errors: &[String]) -> Outcome {
    let mut msg = format!(
        "cohort import: {}: {} error(s), nothing imported\n",
        file.display(),
        errors.len()
    );
    for e in errors {
        msg.push_str(&format!("  {e}\n"));
    }
    Outcome {
        stdout: String::new(),
        stderr: msg,
        code: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_with_header_quotes_and_errors() {
        let rows = parse_csv("unit,variant\nalice,control\n\"bo,b\",1\r\n\ncarol,\"treat\"\"x\"\n")
            .unwrap();
        let got: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.unit.as_str(), r.variant.as_str()))
            .collect();
        assert_eq!(
            got,
            [("alice", "control"), ("bo,b", "1"), ("carol", "treat\"x")]
        );
        assert_eq!(rows[1].at, "line 3");
        let errs = parse_csv("alice\nbob,a,b\n").unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("line 1"));
    }

    /// The document shape of growthbook-python tests/cases.json
    /// `stickyBucket` (saved docs keyed `attributeName||attributeValue`).
    #[test]
    fn growthbook_sticky_documents_in_every_layout() {
        let keyed = r#"{"anonymousId||123": {"assignments": {"feature__0": "3"}, "attributeName": "anonymousId", "attributeValue": "123"},
                        "id||u1": {"assignments": {"feature__0": "0", "feature__2": "1", "other__0": "1"}, "attributeName": "id", "attributeValue": "u1"}}"#;
        let mut rows = parse_growthbook(keyed, "feature", None).unwrap();
        rows.sort_by(|a, b| a.unit.cmp(&b.unit));
        let got: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.unit.as_str(), r.variant.as_str()))
            .collect();
        // The highest bucket version wins.
        assert_eq!(got, [("123", "3"), ("u1", "1")]);
        let only_id = parse_growthbook(keyed, "feature", Some("id")).unwrap();
        assert_eq!(only_id.len(), 1);
        let array = r#"[{"attributeName": "id", "attributeValue": "a", "assignments": {"exp__0": "control"}}]"#;
        assert_eq!(
            parse_growthbook(array, "exp", None).unwrap()[0].variant,
            "control"
        );
        let lines = "{\"attributeName\": \"id\", \"attributeValue\": \"a\", \"assignments\": {\"exp__1\": \"1\"}}\n\n{\"attributeName\": \"id\", \"attributeValue\": \"b\", \"assignments\": {}}\n";
        let rows = parse_growthbook(lines, "exp", None).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].at, "line 1");
        assert!(parse_growthbook("[{\"x\": 1}]", "exp", None).is_err());
    }
}
