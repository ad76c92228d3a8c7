//! One-off generator of tests/golden/journal-v1 with the code of the commit
//! it was written in (run with `COHORT_GOLDEN_OUT=dir cargo test --test it
//! generate_journal_fixture -- --ignored`). Kept only until the fixture is
//! checked in; the fixture, not this code, is the golden record.

use std::path::Path;

use cohort::assign::ledger::{AppliedConfig, LedgerEvent};
use cohort::assign::plan::{canonical, plan, Previous};
use cohort::assign::store::Store;
use cohort::config::{parse, Config, Env};
use cohort::snapshot::Snapshot;

fn load(name: &str) -> Config {
    let text = std::fs::read_to_string(format!("tests/golden/journal-v1/{name}")).unwrap();
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

async fn apply(store: &Store, cfg: Config, trigger: &str, now: &str) -> Snapshot {
    let mut ledger = store.ledger();
    let previous = ledger.last_applied().cloned();
    let p = plan(
        &ledger,
        store,
        previous.as_ref().map(|a| Previous {
            version: &a.config_version,
            config: &a.config,
        }),
        &cfg,
        now,
    )
    .unwrap();
    for ev in &p.events {
        ledger.apply(ev).unwrap();
    }
    let mut events = p.events.clone();
    events.push(LedgerEvent::Applied(AppliedConfig {
        config_version: p.config_version.clone(),
        applied_at: now.to_string(),
        trigger: trigger.to_string(),
        summary: p.to_string(),
        config: canonical(&cfg),
    }));
    let snap = Snapshot::build(cfg, &ledger, store, None);
    store.append_ledger(events).await.unwrap();
    snap
}

async fn assign(store: &Store, snap: &Snapshot, x: usize, units: &[String]) {
    for u in units {
        snap.experiments[x]
            .assigner
            .assign(store, u.as_bytes())
            .await
            .unwrap();
    }
}

fn units(prefix: &str, r: std::ops::Range<usize>) -> Vec<String> {
    r.map(|i| format!("{prefix}{i:02}")).collect()
}

async fn pause(store: &Store, x: &str, paused: bool, at: &str) {
    store
        .append_ledger(vec![LedgerEvent::Pause {
            experiment: x.into(),
            paused,
            at: at.into(),
        }])
        .await
        .unwrap();
}

#[tokio::test]
#[ignore]
async fn generate_journal_fixture() {
    let out = std::env::var("COHORT_GOLDEN_OUT").expect("COHORT_GOLDEN_OUT");
    let out = Path::new(&out);
    let store = Store::open(&out.join("store")).unwrap();
    let mut versions = serde_json::Map::new();
    let names = [
        "1-start.yaml",
        "2-ramp.yaml",
        "3-reset.yaml",
        "4-closed.yaml",
    ];
    for n in names {
        versions.insert(n.into(), load(n).version().into());
    }

    let s = apply(
        &store,
        load(names[0]),
        "start-up",
        "2026-12-04T15:00:00.000Z",
    )
    .await;
    assign(&store, &s, 0, &units("u", 0..30)).await;
    assign(&store, &s, 1, &units("s", 0..30)).await;
    assign(&store, &s, 1, &["qa-1".to_string()]).await;

    let s = apply(
        &store,
        load(names[1]),
        "file changed",
        "2026-12-04T15:01:00.000Z",
    )
    .await;
    assign(&store, &s, 0, &units("u", 20..50)).await;
    pause(&store, "ranker", true, "2026-12-04T15:02:00.000Z").await;
    assign(&store, &s, 0, &units("u", 50..55)).await;
    pause(&store, "ranker", false, "2026-12-04T15:03:00.000Z").await;

    let s = apply(&store, load(names[2]), "SIGHUP", "2026-12-04T15:04:00.000Z").await;
    assign(&store, &s, 1, &units("s", 20..40)).await;

    let s = apply(&store, load(names[3]), "admin", "2026-12-04T15:05:00.000Z").await;
    assign(&store, &s, 0, &units("u", 50..60)).await;
    pause(&store, "search", true, "2026-12-04T15:06:00.000Z").await;
    assign(&store, &s, 1, &units("s", 40..45)).await;
    store.sync().await.unwrap();

    let ledger = store.ledger();
    let mut assignments = Vec::new();
    let all = units("u", 0..60).into_iter().map(|u| ("ranker", u)).chain(
        units("s", 0..45)
            .into_iter()
            .chain(["qa-1".to_string()])
            .map(|u| ("search", u)),
    );
    for (x, u) in all {
        let l = ledger.get(x).unwrap();
        let got = store
            .table(l.id)
            .get(&cohort::assign::hash::unit_key(x, u.as_bytes()));
        assignments.push(serde_json::json!({
            "experiment": x,
            "unit": u,
            "assignment": got.map(|a| serde_json::json!({
                "variant": l.variants[usize::from(a.variant)],
                "epoch": a.epoch.0,
                "first_seen": a.first_seen,
            })),
        }));
    }
    let expected = serde_json::json!({
        "versions": versions,
        "ledger": ledger,
        "assignments": assignments,
    });
    drop(store);
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}
