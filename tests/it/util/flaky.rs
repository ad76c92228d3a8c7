//! [`Flaky`]: an upstream endpoint whose behaviour a test switches while it
//! runs — answer, answer 5xx, hang, answer late, reset after reading the
//! body, or go down (its port refuses connections) and come back on the
//! same port. It answers `GET /health` by the same mode, so the proxy's
//! active health check sees what requests see, and it counts the requests
//! (health checks apart) and request-body bytes it received.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::find;

/// What a [`Flaky`] endpoint does with each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    /// 200 with `{"model": name}`.
    Ok = 0,
    /// 503.
    Fail = 1,
    /// Reads the request and never answers.
    Hang = 2,
    /// Answers 200 after the endpoint's `delay`.
    Late = 3,
    /// Reads the whole request, body included, then resets the connection.
    Reset = 4,
    /// Sends a head announcing 100 body bytes, 10 of them, then stalls.
    StallBody = 5,
}

pub(crate) struct Flaky {
    pub addr: SocketAddr,
    name: String,
    mode: Arc<AtomicU8>,
    /// Requests received, health checks not counted.
    pub hits: Arc<AtomicUsize>,
    /// Health checks received.
    pub checks: Arc<AtomicUsize>,
    /// Request-body bytes received.
    pub body_bytes: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Flaky {
    pub(crate) async fn spawn(name: &str) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let f = Flaky {
            addr: listener.local_addr().unwrap(),
            name: name.to_string(),
            mode: Arc::new(AtomicU8::new(Mode::Ok as u8)),
            hits: Arc::default(),
            checks: Arc::default(),
            body_bytes: Arc::default(),
            delay_ms: Arc::new(AtomicU64::new(2000)),
            task: Mutex::new(None),
        };
        f.serve(listener);
        f
    }

    /// An address nothing listens on (connections are refused).
    pub(crate) async fn dead_address() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// How long [`Mode::Late`] waits.
    pub(crate) fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Closes its port: new connections are refused.
    pub(crate) fn go_down(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }

    /// Listens on its port again.
    pub(crate) async fn come_back(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let (name, mode, hits, checks, bytes, delay) = (
            self.name.clone(),
            self.mode.clone(),
            self.hits.clone(),
            self.checks.clone(),
            self.body_bytes.clone(),
            self.delay_ms.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let c = Conn {
                    name: name.clone(),
                    mode: mode.clone(),
                    hits: hits.clone(),
                    checks: checks.clone(),
                    bytes: bytes.clone(),
                    delay: delay.clone(),
                };
                tokio::spawn(c.run(s));
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.go_down();
    }
}

struct Conn {
    name: String,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    bytes: Arc<AtomicU64>,
    delay: Arc<AtomicU64>,
}

impl Conn {
    async fn run(self, mut s: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let end = loop {
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    break end;
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let health = head.starts_with("get /health ");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..end + 4 + len);
            if health {
                self.checks.fetch_add(1, Ordering::SeqCst);
            } else {
                self.hits.fetch_add(1, Ordering::SeqCst);
                self.bytes.fetch_add(len as u64, Ordering::SeqCst);
            }
            let ok = format!("{{\"model\":\"{}\"}}", self.name);
            let answer = match self.mode.load(Ordering::SeqCst) {
                0 => ok_answer(&ok),
                1 => b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown".to_vec(),
                2 => {
                    std::future::pending::<()>().await;
                    return;
                }
                3 => {
                    let ms = self.delay.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ok_answer(&ok)
                }
                4 => {
                    // Zero linger: the close is a reset (it cannot block).
                    #[allow(deprecated)]
                    let _ = s.set_linger(Some(Duration::ZERO));
                    return;
                }
                _ => {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                        .await;
                    std::future::pending::<()>().await;
                    return;
                }
            };
            if s.write_all(&answer).await.is_err() {
                return;
            }
        }
    }
}

fn ok_answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An address whose connects hang: a listener that never accepts, with
/// its accept queue filled, so the kernel drops further handshakes (for
/// connect timeouts).
pub(crate) struct BlackHole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl BlackHole {
    pub(crate) async fn spawn() -> BlackHole {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => queued.push(s),
                Ok(Err(e)) => panic!("connect to the black hole failed: {e}"),
                Err(_) => break,
            }
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        BlackHole {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }
}
