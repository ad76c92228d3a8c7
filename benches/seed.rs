//! Pre-assigns units, as if each had made its first request: the
//! returning-unit benchmark needs a store that already holds every user.
//!
//!   seed CONFIG N [PREFIX]     # assigns PREFIX1 ..= PREFIXN (default "user-")
//!
//! Goes through the real path (plan, ledger, Assigner, group-commit store),
//! so the proxy started on the same config serves exactly these assignments.

use std::sync::Arc;
use std::time::Instant;

use cohort::state::State;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (Some(path), Some(n)) = (
        args.first(),
        args.get(1).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: seed CONFIG N [PREFIX]");
        std::process::exit(64);
    };
    let prefix = args.get(2).cloned().unwrap_or_else(|| "user-".into());
    let cfg =
        cohort::config::load_file(std::path::Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let state = State::start(cfg, None, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let t = Instant::now();
        let mut tasks = Vec::new();
        const CONC: usize = 256;
        for c in 0..CONC {
            let state: Arc<State> = state.clone();
            let prefix = prefix.clone();
            tasks.push(tokio::spawn(async move {
                let snap = state.snapshot();
                let x = &snap.experiments[0];
                for i in (1 + c..=n).step_by(CONC) {
                    let unit = format!("{prefix}{i}");
                    x.assigner
                        .assign(&state.store, unit.as_bytes())
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        state.store.sync().await.unwrap();
        eprintln!("seeded {n} units in {:.1?}", t.elapsed());
    });
}
