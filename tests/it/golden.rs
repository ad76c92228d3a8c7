//! Golden tests for everything cohort keeps on disk. The files under
//! tests/golden/ were written once and are never regenerated: a change that
//! would orphan stored assignments (a new unit-key hash, a new bucket or
//! variant mapping) or make an existing store unreadable turns these red.
//! See tests/golden/README.md for how each file was made.

use std::path::{Path, PathBuf};

use cohort::assign::buckets::{BucketTable, Weight};
use cohort::assign::hash::{bucket, coverage_bucket, unit_key};
use cohort::assign::store::{Store, StoreView};
use cohort::config::record::ConfigRecord;
use cohort::config::{parse, Config, Env};
use serde_json::Value;

fn golden(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(rel)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fixed unit ids -> unit key -> bucket -> variant, as checked in.
#[test]
fn unit_key_bucket_and_variant_vectors_are_golden() {
    let text = std::fs::read_to_string(golden("unit_keys.tsv")).unwrap();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        let [experiment, unit, salt, key, b, cov, weights, variant] = f[..] else {
            panic!("bad golden line {line:?}")
        };
        let u = unit.as_bytes();
        assert_eq!(
            hex(&unit_key(experiment, u).to_bytes()),
            key,
            "unit key of {experiment}/{unit}"
        );
        assert_eq!(bucket(salt, u).0.to_string(), b, "bucket of {salt}/{unit}");
        assert_eq!(
            coverage_bucket(salt, u).0.to_string(),
            cov,
            "coverage bucket of {salt}/{unit}"
        );
        let ws: Vec<Weight> = weights
            .split(',')
            .map(|w| Weight(w.parse().unwrap()))
            .collect();
        let table = BucketTable::new(&ws).unwrap();
        assert_eq!(
            table.variant_for(bucket(salt, u)).to_string(),
            variant,
            "variant of {unit} under {weights}"
        );
        n += 1;
    }
    assert!(n >= 60, "only {n} vectors");
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(golden("journal-v1/expected.json")).unwrap())
        .unwrap()
}

/// A copy of the checked-in journal, in a store directory of its own.
fn journal_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        golden("journal-v1/journal.cohort"),
        dir.path().join("journal.cohort"),
    )
    .unwrap();
    dir
}

/// The golden configs, parsed as they were when the journal was written.
fn golden_config(name: &str) -> Config {
    let text = std::fs::read_to_string(golden(&format!("journal-v1/{name}"))).unwrap();
    let env = Env {
        log_unit_key: Some("golden-key".into()),
        admin_token: Some("golden-token".into()),
    };
    parse(
        &text,
        Path::new("/golden/cohort.yaml"),
        Path::new("/golden"),
        &env,
    )
    .unwrap()
}

/// Every unit of the fixture resolves to the variant, epoch and first-seen
/// second it was stored with (or to nothing: reset, paused, not covered).
fn assert_assignments(get: impl Fn(&str, &str) -> Option<(String, u32, u32)>) {
    let want = expected();
    let list = want["assignments"].as_array().unwrap();
    assert!(list.len() > 100);
    for a in list {
        let (x, u) = (
            a["experiment"].as_str().unwrap(),
            a["unit"].as_str().unwrap(),
        );
        let want = a["assignment"].as_object().map(|o| {
            (
                o["variant"].as_str().unwrap().to_string(),
                o["epoch"].as_u64().unwrap() as u32,
                o["first_seen"].as_u64().unwrap() as u32,
            )
        });
        assert_eq!(get(x, u), want, "{x}/{u}");
    }
}

#[tokio::test]
async fn the_checked_in_journal_replays_to_the_same_assignments_and_ledger() {
    let dir = journal_copy();
    let want = expected();
    let store = Store::open(dir.path()).unwrap();
    let ledger = store.ledger();
    assert_eq!(serde_json::to_value(&ledger).unwrap(), want["ledger"]);
    assert_assignments(|x, u| {
        let l = ledger.get(x)?;
        let a = store.table(l.id).get(&unit_key(x, u.as_bytes()))?;
        Some((
            l.variants[usize::from(a.variant)].clone(),
            a.epoch.0,
            a.first_seen,
        ))
    });
    // The admin pause of `search` is still in force.
    let search = ledger.get("search").unwrap().id;
    assert!(store.table(search).admin_paused());
    // Reopening replays to the same state (nothing was rewritten).
    drop(store);
    let again = Store::open(dir.path()).unwrap();
    assert_eq!(
        serde_json::to_value(again.ledger()).unwrap(),
        want["ledger"]
    );
}

#[test]
fn the_read_only_view_of_the_checked_in_journal_agrees() {
    let dir = journal_copy();
    let view = StoreView::open(dir.path()).unwrap();
    assert_eq!(
        serde_json::to_value(view.ledger()).unwrap(),
        expected()["ledger"]
    );
    let ledger = view.ledger();
    assert_assignments(|x, u| {
        let l = ledger.get(x)?;
        let a = view.get(x, u.as_bytes())?;
        Some((
            l.variants[usize::from(a.variant)].clone(),
            a.epoch.0,
            a.first_seen,
        ))
    });
}

/// The config version is recorded in the ledger and compared on every
/// restart: the same file must keep the same version, or each restart after
/// an upgrade would record a spurious new config.
#[test]
fn config_versions_of_the_golden_configs_are_unchanged() {
    let want = expected();
    for (name, v) in want["versions"].as_object().unwrap() {
        assert_eq!(golden_config(name).version(), v.as_str().unwrap(), "{name}");
    }
}

/// Today's encoder writes the fixture's records byte for byte as they were
/// written: the journal format (framing, checksums, assignment layout, the
/// ledger events' JSON) has not moved, so a journal this build writes is
/// one the build that wrote the fixture could read.
#[test]
fn the_journal_encoder_rewrites_the_fixture_byte_for_byte() {
    use cohort::assign::journal::{self, Tail};
    let bytes = std::fs::read(golden("journal-v1/journal.cohort")).unwrap();
    assert_eq!(&bytes[..8], journal::MAGIC);
    let mut records = Vec::new();
    let (len, tail) = journal::replay(&bytes[8..], |r| {
        records.push(r);
        Ok(())
    })
    .unwrap();
    assert_eq!((len, tail), (bytes.len() as u64, Tail::Clean));
    let mut again = journal::MAGIC.to_vec();
    for r in &records {
        journal::encode(r, &mut again);
    }
    assert!(again == bytes, "re-encoded journal differs");
}

/// Configs recorded before records were versioned (the live struct's JSON)
/// read back as the same record today's code makes of the same file: the
/// previous config of an upgraded store is understood, so the first plan
/// after an upgrade names no spurious routing change.
#[test]
fn pre_versioned_config_records_in_the_journal_still_read() {
    let want = expected();
    let history = want["ledger"]["history"].as_array().unwrap();
    let names = [
        "1-start.yaml",
        "2-ramp.yaml",
        "3-reset.yaml",
        "4-closed.yaml",
    ];
    assert_eq!(history.len(), names.len());
    for (h, name) in history.iter().zip(names) {
        assert!(
            h["config"].get("version").is_none(),
            "{name}: pre-versioned"
        );
        let read = ConfigRecord::from_stored(&h["config"]).unwrap();
        let now = ConfigRecord::of(&golden_config(name));
        assert_eq!(read, now.summarized(), "{name}");
        assert_eq!(h["config_version"], now.version(), "{name}");
    }
}

/// The versioned record as it is written to the ledger today.
#[test]
fn the_versioned_config_record_is_golden() {
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(golden("config-record-v1.json")).unwrap())
            .unwrap();
    assert_eq!(file["version"], 1);
    let record = ConfigRecord::of(&golden_config("4-closed.yaml"));
    assert_eq!(record.to_stored(), file);
    assert_eq!(
        ConfigRecord::from_stored(&file).unwrap(),
        record.summarized()
    );
    // A record from a newer cohort is refused, not misread.
    let mut newer = file.clone();
    newer["version"] = 2.into();
    assert!(ConfigRecord::from_stored(&newer).is_err());
}

/// Runs `cohort --config <dir>/cohort.yaml [args]` until it listens, then
/// stops it with SIGTERM.
fn run_until_listening(dir: &Path, args: &[&str]) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .arg("--config")
        .arg(dir.join("cohort.yaml"))
        .args(args)
        .env("COHORT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cohort");
    let mut log = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let up = line.contains("listening on http://");
        log.push(line);
        if up {
            break;
        }
    }
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.wait().unwrap();
    assert!(
        log.iter().any(|l| l.contains("listening on http://")),
        "cohort did not start ({status:?}):\n{}",
        log.join("\n")
    );
}

/// `--listen` wins over the file's `listen` but is no part of the applied
/// config: starting with and without it records one config version.
#[test]
fn the_listen_flag_records_no_new_config_version() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cohort.yaml"),
        "listen: 127.0.0.1:0
store: { path: ./data }
access_log: { path: ./access.jsonl }
upstreams:
  old: { url: http://127.0.0.1:1 }
experiments:
  - name: e
    routes: [/p]
    variants:
      - { name: a, upstream: old, weight: 100 }
",
    )
    .unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let flag = free.local_addr().unwrap().to_string();
    drop(free);
    run_until_listening(dir.path(), &[]);
    run_until_listening(dir.path(), &["--listen", &flag]);
    run_until_listening(dir.path(), &[]);
    let view = StoreView::open(&dir.path().join("data")).unwrap();
    let versions: Vec<String> = view
        .ledger()
        .history
        .iter()
        .map(|a| a.config_version.clone())
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
}
