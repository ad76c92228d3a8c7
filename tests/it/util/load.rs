//! Many requests at once and the statistics to judge them: [`users`],
//! [`post_all`], closed-loop [`Load`], and the bucket contract recomputed
//! independently of the library.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::{Resp, TestClient};

/// Distinct unit ids for a test, deterministic.
pub(crate) fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The public bucket contract, recomputed independently of the library.
pub(crate) fn bucket(salt: &str, unit: &str) -> u32 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{salt}:{unit}").as_bytes());
    (u64::from_be_bytes(d[..8].try_into().unwrap()) % 10_000) as u32
}

/// Half-width of a 5-sigma interval for a binomial count.
pub(crate) fn binomial_bound(n: usize, p: f64) -> f64 {
    5.0 * (n as f64 * p * (1.0 - p)).sqrt()
}

/// Sends one request per user, `concurrency` at a time; returns responses in user order.
pub(crate) async fn post_all(
    client: &TestClient,
    addr: SocketAddr,
    users: &[String],
    concurrency: usize,
) -> Vec<Resp> {
    let users = Arc::new(users.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let out = Arc::new(Mutex::new(vec![None; users.len()]));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, users, next, out) = (client.clone(), users.clone(), next.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= users.len() {
                    break;
                }
                let r = client.post(addr, "/predict", Some(&users[i])).await;
                out.lock().unwrap()[i] = Some(r);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = std::mem::take(&mut *out.lock().unwrap());
    v.into_iter().map(|r| r.unwrap()).collect()
}

/// Closed-loop load until stopped: `clients` tasks, each sending
/// `POST /predict` for `unit(task, i)` (its i-th request) and handing every
/// outcome to `answer`. Counts requests and failures (non-200 or no answer).
pub(crate) struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    failures: Arc<std::sync::atomic::AtomicUsize>,
}

impl Load {
    pub(crate) fn spawn(
        addr: SocketAddr,
        clients: usize,
        unit: impl Fn(usize, usize) -> String + Send + Sync + 'static,
        answer: impl Fn(String, &Resp) + Send + Sync + 'static,
    ) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let (unit, answer) = (Arc::new(unit), Arc::new(answer));
        let tasks = (0..clients)
            .map(|w| {
                let (stop, requests, failures, unit, answer) = (
                    stop.clone(),
                    requests.clone(),
                    failures.clone(),
                    unit.clone(),
                    answer.clone(),
                );
                tokio::spawn(async move {
                    let client = TestClient::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let u = unit(w, i);
                        i += 1;
                        match client
                            .try_send(addr, "POST", "/predict", &[("x-user-id", Some(&u))], "{}")
                            .await
                        {
                            Ok(r) if r.status == 200 => answer(u, &r),
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            requests,
            failures,
        }
    }

    /// Stops the clients and waits for their last requests.
    pub(crate) async fn stop(self) -> Load {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut me = self;
        for t in std::mem::take(&mut me.tasks) {
            t.await.unwrap();
        }
        me
    }

    pub(crate) fn failed(&self) -> usize {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn sent(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}
