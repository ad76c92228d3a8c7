//! Store figures: RAM per stored unit, restart (journal replay) time, lookup
//! rate, and durable insert rate with group commit.
//!
//!   cargo bench --bench store                       # 1M units
//!   COHORT_BENCH_UNITS=10000000 cargo bench --bench store
//!
//! Prints figures; asserts nothing about speed.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use cohort::assign::buckets::Weight;
use cohort::assign::epoch::{Epoch, Rule, RuleVariant};
use cohort::assign::hash::unit_key;
use cohort::assign::journal::{self, Record};
use cohort::assign::ledger::{EpochRecord, LedgerEvent};
use cohort::assign::store::Store;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn event() -> LedgerEvent {
    LedgerEvent::Epoch {
        experiment: "bench".into(),
        record: EpochRecord {
            epoch: Epoch(1),
            rule: Rule {
                salt: "bench".into(),
                unit_header: "x-user-id".into(),
                coverage: Weight(10_000),
                variants: vec![
                    RuleVariant {
                        name: "control".into(),
                        weight: Weight(5000),
                    },
                    RuleVariant {
                        name: "treatment".into(),
                        weight: Weight(5000),
                    },
                ],
                bucketing: Default::default(),
            },
            started_at: "2026-12-01T00:00:00.000Z".into(),
            config_version: "bench".into(),
            reset: 0,
            dropped_assignments: false,
        },
    }
}

fn main() {
    let n: usize = std::env::var("COHORT_BENCH_UNITS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.cohort");

    // A journal as a proxy would have left it after n first exposures.
    let t = Instant::now();
    {
        let mut f =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
        journal::init(&mut f).unwrap();
        let mut buf = Vec::new();
        journal::encode(&Record::Ledger(event()), &mut buf);
        for i in 0..n {
            journal::encode(
                &Record::Assign {
                    experiment: 0,
                    key: unit_key("bench", format!("user-{i}").as_bytes()),
                    variant: (i % 2) as u8,
                    epoch: Epoch(1),
                    first_seen: 1_796_000_000,
                },
                &mut buf,
            );
            if buf.len() > 1 << 20 {
                f.write_all(&buf).unwrap();
                buf.clear();
            }
        }
        f.write_all(&buf).unwrap();
        f.flush().unwrap();
    }
    let journal_bytes = std::fs::metadata(&path).unwrap().len();
    println!("units: {n}");
    println!(
        "journal: {:.1} MB ({:.1} bytes/unit), written in {:.2?}",
        journal_bytes as f64 / 1e6,
        journal_bytes as f64 / n as f64,
        t.elapsed()
    );

    let before = rss_bytes();
    let t = Instant::now();
    let store = Store::open(dir.path()).unwrap();
    let replay = t.elapsed();
    let after = rss_bytes();
    let table = store.table(0);
    assert_eq!(table.len(), n);
    println!(
        "restart (open + replay): {replay:.2?} ({:.0} units/s)",
        n as f64 / replay.as_secs_f64()
    );
    println!(
        "RAM for the assignment map: {:.1} MB = {:.1} bytes/unit (RSS {:.1} -> {:.1} MB)",
        (after - before) as f64 / 1e6,
        (after - before) as f64 / n as f64,
        before as f64 / 1e6,
        after as f64 / 1e6
    );

    // Returning-unit path: hash the unit id, look it up.
    let probes = n.min(2_000_000);
    let t = Instant::now();
    let mut found = 0usize;
    for i in 0..probes {
        let k = unit_key("bench", format!("user-{}", (i * 7919) % n).as_bytes());
        found += usize::from(table.get(&k).is_some());
    }
    let el = t.elapsed();
    assert_eq!(found, probes);
    println!(
        "lookup (unit_key + map get, 1 thread): {:.0} ns each",
        el.as_nanos() as f64 / probes as f64
    );

    // New-unit path: durable inserts through the group-commit writer.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(store);
    for conc in [1usize, 64] {
        let inserts = if conc == 1 { 2_000 } else { 100_000 };
        let t = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for c in 0..conc {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    for i in (c..inserts).step_by(conc) {
                        let k = unit_key("bench", format!("new-{conc}-{i}").as_bytes());
                        store.assign(0, k, 1, Epoch(1)).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let el = t.elapsed();
        println!(
            "durable insert, {conc} concurrent: {:.0} units/s ({:.1} µs each, fdatasync per batch)",
            inserts as f64 / el.as_secs_f64(),
            el.as_micros() as f64 / inserts as f64
        );
    }
}
