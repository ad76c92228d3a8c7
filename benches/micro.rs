//! Criterion micro-benchmarks of the pieces on the request path and the
//! reload path:
//!
//!   cargo bench --bench micro
//!
//! - bucket: the public SHA-256 bucket of a unit (new units, and the log);
//! - unit_key: the 128-bit key of the assignment map (every request);
//! - variant_for: bucket -> variant index;
//! - store_lookup: a returning unit's map read, 1M units stored;
//! - store_insert: a new unit's durable insert, 64 in flight (group commit);
//! - snapshot_load: what a request pays to see the current config;
//! - config_reload: parse + validate + plan a config (off the request path).
// criterion_group! makes a public fn that cannot carry a doc comment.
#![allow(missing_docs)]

use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use cohort::assign::buckets::{BucketTable, Weight};
use cohort::assign::epoch::Epoch;
use cohort::assign::hash::{bucket, unit_key, Bucket};
use cohort::assign::ledger::Ledger;
use cohort::assign::ledger::UnitCounts;
use cohort::assign::store::Store;
use cohort::config::{parse, Env};
use cohort::reload::plan::plan;

const CONFIG: &str = include_str!("../config/example.yaml");

struct NoUnits;
impl UnitCounts for NoUnits {
    fn units(&self, _: u16, _: u8) -> u64 {
        0
    }
}

fn hashing(c: &mut Criterion) {
    let units: Vec<String> = (0..1024).map(|i| format!("user-{i}")).collect();
    let mut i = 0;
    c.bench_function("bucket", |b| {
        b.iter(|| {
            i = (i + 1) % units.len();
            bucket("ranker-v2", units[i].as_bytes())
        })
    });
    c.bench_function("unit_key", |b| {
        b.iter(|| {
            i = (i + 1) % units.len();
            unit_key("ranker-v2", units[i].as_bytes())
        })
    });
    let table = BucketTable::new(&[Weight(3333), Weight(3333), Weight(3334)]).unwrap();
    let mut k = 0u32;
    c.bench_function("variant_for", |b| {
        b.iter(|| {
            k = (k + 7919) % 10_000;
            table.variant_for(Bucket(k))
        })
    });
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = parse(
        CONFIG,
        std::path::Path::new("example.yaml"),
        dir.path(),
        &Env::default(),
    )
    .unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let p = plan(&Ledger::default(), &NoUnits, None, &cfg, "t").unwrap();
    rt.block_on(store.append_ledger(p.events)).unwrap();
    let n = 1_000_000usize;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..n).step_by(64) {
                    store
                        .assign(
                            0,
                            unit_key("ranker-v2", format!("user-{i}").as_bytes()),
                            (i % 2) as u8,
                            Epoch(1),
                        )
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let table = store.table(0);
    let keys: Vec<_> = (0..4096)
        .map(|i| unit_key("ranker-v2", format!("user-{}", i * 241 % n).as_bytes()))
        .collect();
    let mut i = 0;
    c.bench_function("store_lookup (1M units)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            table.get(&keys[i])
        })
    });

    let mut g = c.benchmark_group("store_insert");
    g.throughput(Throughput::Elements(64));
    let mut batch = 0u64;
    g.bench_function("64 new units in flight", |b| {
        b.iter_batched(
            || {
                batch += 1;
                (0..64)
                    .map(|j| unit_key("ranker-v2", format!("fresh-{batch}-{j}").as_bytes()))
                    .collect::<Vec<_>>()
            },
            |keys| {
                rt.block_on(async {
                    let mut tasks = Vec::new();
                    for k in keys {
                        let store = store.clone();
                        tasks.push(tokio::spawn(async move {
                            store.assign(0, k, 1, Epoch(1)).await.unwrap()
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn reload(c: &mut Criterion) {
    let swap = ArcSwap::from_pointee(vec![0u8; 64]);
    c.bench_function("snapshot_load", |b| b.iter(|| swap.load_full()));
    let ledger = Ledger::default();
    c.bench_function("config_reload (parse + validate + plan)", |b| {
        b.iter(|| {
            let cfg = parse(
                CONFIG,
                std::path::Path::new("example.yaml"),
                std::path::Path::new("."),
                &Env::default(),
            )
            .unwrap();
            plan(&ledger, &NoUnits, None, &cfg, "t").unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = hashing, store, reload
}
criterion_main!(benches);
