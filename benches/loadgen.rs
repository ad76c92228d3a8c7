//! A closed-loop HTTP/1.1 load generator that keeps every request's latency
//! with its start time, so latency can be read over time, not only in
//! aggregate: wrk reports one distribution per run, which cannot show
//! whether a reload made a short spike or where in the run slow requests sit.
//!
//! It sends what the shared harness's `predict.lua` sends: POST /predict, a
//! small JSON body, `X-User-Id: user-N` with N uniform in 1..=users.
//!
//!   cargo bench --bench loadgen -- ADDR SECONDS [CONNECTIONS] [THREADS]
//!
//! Environment: BENCH_USERS (default 1000000), LOADGEN_WINDOW_MS (default
//! 100), LOADGEN_CSV (a file to write one line per window to).
//!
//! Prints a `LOADGEN` line with the overall figures and the worst window.

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY: &str = r#"{"features":[0.12,0.5,0.33,0.91,0.07,0.66],"request_id":"bench"}"#;

/// One finished request: when it started (µs into the run) and how long it took.
#[derive(Clone, Copy)]
struct Sample {
    start_us: u32,
    latency_us: u32,
}

#[derive(Default)]
struct Tally {
    samples: Vec<Sample>,
    errors: u64,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let addr = args
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let conns: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let threads: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    let users: u64 = env_or("BENCH_USERS", 1_000_000);
    let window_ms: u64 = env_or("LOADGEN_WINDOW_MS", 100);

    let start = Instant::now();
    let start_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let end = start + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let addr = addr.clone();
            let mine = conns / threads + usize::from(t < conns % threads);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let tasks: Vec<_> = (0..mine)
                        .map(|c| {
                            let seed = 0x9e37_79b9_7f4a_7c15 ^ ((t * 1000 + c) as u64 + 1);
                            tokio::spawn(connection(addr.clone(), users, seed, start, end))
                        })
                        .collect();
                    let mut tally = Tally::default();
                    for task in tasks {
                        let t = task.await.expect("connection task");
                        tally.samples.extend(t.samples);
                        tally.errors += t.errors;
                    }
                    tally
                })
            })
        })
        .collect();
    let mut all = Tally::default();
    for h in handles {
        let t = h.join().expect("load thread");
        all.samples.extend(t.samples);
        all.errors += t.errors;
    }
    report(&all, secs, window_ms, start_unix);
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One keep-alive connection, request after request until `end`.
async fn connection(addr: String, users: u64, mut rng: u64, start: Instant, end: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut req = Vec::with_capacity(256);
    let mut buf = vec![0u8; 16 * 1024];
    let mut stream: Option<TcpStream> = None;
    while Instant::now() < end {
        let s = match &mut stream {
            Some(s) => s,
            None => match TcpStream::connect(&addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream.insert(s)
                }
                Err(_) => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // xorshift64*: cheap, and enough to spread user ids uniformly.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        let user = rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % users + 1;
        req.clear();
        write!(
            req,
            "POST /predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             X-User-Id: user-{user}\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        )
        .expect("write to a Vec");
        let t0 = Instant::now();
        let ok = s.write_all(&req).await.is_ok() && read_response(s, &mut buf).await;
        let took = t0.elapsed();
        if !ok {
            tally.errors += 1;
            stream = None;
            continue;
        }
        tally.samples.push(Sample {
            start_us: (t0 - start).as_micros() as u32,
            latency_us: took.as_micros() as u32,
        });
    }
    tally
}

/// Reads one response with a 200 status and a Content-Length or chunked
/// body; false on anything else (the connection is then dropped).
async fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> bool {
    let mut have = 0;
    loop {
        match s.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => have += n,
        }
        let got = &buf[..have];
        let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            if have == buf.len() {
                return false;
            }
            continue;
        };
        let head = std::str::from_utf8(&got[..head_end]).unwrap_or("");
        if !head.starts_with("HTTP/1.1 200") {
            return false;
        }
        let body = &got[head_end + 4..];
        let mut length = None;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim().eq_ignore_ascii_case("chunked");
            }
        }
        let done = match (length, chunked) {
            (Some(n), false) => body.len() >= n,
            (None, true) => body.ends_with(b"0\r\n\r\n"),
            _ => return false,
        };
        if done {
            return true;
        }
        if have == buf.len() {
            return false;
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(all: &Tally, secs: u64, window_ms: u64, start_unix: f64) {
    let mut lat: Vec<u32> = all.samples.iter().map(|s| s.latency_us).collect();
    lat.sort_unstable();
    let window_us = (window_ms * 1000) as u32;
    let windows = (secs * 1000 / window_ms) as usize + 1;
    let mut by_window: Vec<Vec<u32>> = vec![Vec::new(); windows];
    for s in &all.samples {
        if let Some(w) = by_window.get_mut((s.start_us / window_us) as usize) {
            w.push(s.latency_us);
        }
    }
    let mut csv = std::env::var("LOADGEN_CSV")
        .ok()
        .map(|p| std::fs::File::create(p).expect("LOADGEN_CSV file"));
    if let Some(f) = &mut csv {
        writeln!(f, "unix_start,requests,p50_us,p99_us,max_us").expect("csv write");
    }
    // The worst window by p99; a window with too few requests for a p99
    // (the run's ragged end) is skipped.
    let mut worst = (0u32, 0u32, 0.0f64);
    for (i, w) in by_window.iter_mut().enumerate() {
        w.sort_unstable();
        let at = start_unix + (i as u64 * window_ms) as f64 / 1000.0;
        let (p99, max) = (percentile(w, 99.0), w.last().copied().unwrap_or(0));
        if let Some(f) = &mut csv {
            writeln!(f, "{at:.3},{},{},{p99},{max}", w.len(), percentile(w, 50.0))
                .expect("csv write");
        }
        if w.len() >= 100 && p99 > worst.0 {
            worst = (p99, max, at);
        }
    }
    println!(
        "LOADGEN requests={} rps={:.0} errors={} p50_us={} p99_us={} p999_us={} max_us={} \
         window_ms={window_ms} worst_window_p99_us={} worst_window_max_us={} worst_window_at={:.3}",
        lat.len(),
        lat.len() as f64 / secs as f64,
        all.errors,
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        percentile(&lat, 99.9),
        lat.last().copied().unwrap_or(0),
        worst.0,
        worst.1,
        worst.2,
    );
}
