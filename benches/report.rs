//! Writes a synthetic access log for `benches/report.sh`: N lines with the
//! proxy's exact field layout over U units (two variants 50/50, epoch 1;
//! each unit's first line is its first exposure, with `share`).
//!   cargo bench --bench report -- OUT N U

use std::io::{BufWriter, Write};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [out, n, units] = args.as_slice() else {
        eprintln!("usage: cargo bench --bench report -- OUT LINES UNITS");
        std::process::exit(64);
    };
    let n: u64 = n.parse().expect("LINES");
    let units: u64 = units.parse().expect("UNITS");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out).expect("OUT"));
    let mut seen = vec![false; units as usize];
    // xorshift: a fixed, cheap stream of unit draws.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let u = x % units;
        let first = !std::mem::replace(&mut seen[u as usize], true);
        let v = if u.is_multiple_of(2) {
            "control"
        } else {
            "treatment"
        };
        let ms = 1 + (x >> 40) % 50;
        let us = (x >> 20) % 1000;
        let t = i / 1000;
        writeln!(
            w,
            r#"{{"ts":"2026-12-01T{:02}:{:02}:{:02}.{:03}Z","schema":1,"request_id":"b7c9e1f2-{i}","method":"POST","path":"/predict","status":200,"experiment":"ranker","unit":"user-{u}","variant":"{v}","epoch":1,"current_epoch":1,"first_exposure":{first},"share":{},"in_experiment":true,"forced":false,"paused":false,"reason":"{}","bucket":{},"upstream":"127.0.0.1:9001","upstream_ms":{ms}.{us:03},"total_ms":{}.{us:03},"bytes_in":64,"bytes_out":1024,"config_version":"6d5a48f3280d","error":null}}"#,
            (t / 3600) % 24,
            (t / 60) % 60,
            t % 60,
            i % 1000,
            if first { "0.5" } else { "null" },
            if first { "new" } else { "stored" },
            u % 10_000,
            ms + 1,
        )
        .expect("write");
    }
    w.flush().expect("flush");
}
