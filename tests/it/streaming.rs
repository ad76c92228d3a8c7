//! Streaming and upgrades (issue 14, point 8), on the data path the run
//! picks: Server-Sent Events and other streamed bodies reach the client as
//! the upstream writes them (the upstream writes its next event only once
//! the client has the previous one, so a proxy that buffered would miss
//! the deadline); a WebSocket goes through with its unit assigned, its 101
//! stamped and frames echoed both ways by a real RFC 6455 endpoint; an
//! `Upgrade: h2c` is ignored (served plain).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::util::*;

/// How long the client waits for each event: generous, since only a proxy
/// that holds events back (until the body ends, which here never comes
/// without the client's go-ahead) can miss it.
const EACH_EVENT: Duration = Duration::from_secs(10);

/// An upstream that streams three events on `GET /sse` (chunked) and on
/// `GET /close` (delimited by closing), writing each only after the test
/// added a permit to `go` (it got the previous one).
async fn event_source(go: Arc<Semaphore>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let go = go.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let chunked = head.starts_with(b"GET /sse");
                // Both close the connection after the stream: a chunked one
                // says so, or the proxy would pool a connection the upstream
                // is about to close under the next request.
                let framing = if chunked {
                    "transfer-encoding: chunked\r\nconnection: close\r\n"
                } else {
                    "connection: close\r\n"
                };
                let start = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n{framing}\r\n"
                );
                s.write_all(start.as_bytes()).await.unwrap();
                for i in 0..3 {
                    if i > 0 {
                        go.acquire().await.unwrap().forget();
                    }
                    let event = format!("data: event-{i}\n\n");
                    let bytes = if chunked {
                        format!("{:x}\r\n{event}\r\n", event.len())
                    } else {
                        event
                    };
                    if s.write_all(bytes.as_bytes()).await.is_err() {
                        return;
                    }
                }
                if chunked {
                    let _ = s.write_all(b"0\r\n\r\n").await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_client_as_the_upstream_writes_them() {
    let go = Arc::new(Semaphore::new(0));
    let up = event_source(go.clone()).await;
    let dir = TestDir::new();
    let exp = "  - name: feed\n    routes: [/sse, /close]\n    salt: s\n    variants:\n      - { name: control, upstream: old, weight: 100 }\n";
    let cohort = Cohort::start(&dir, &config_urls(&[("old", format!("http://{up}"))], exp));
    for path in ["/sse", "/close"] {
        let mut s = TcpStream::connect(cohort.addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: t\r\nx-user-id: reader\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = String::new();
        for i in 0..3 {
            let want = format!("data: event-{i}\n\n");
            let read = async {
                while !got.contains(&want) {
                    let mut b = [0u8; 4096];
                    let n = s.read(&mut b).await.unwrap();
                    assert!(n > 0, "{path}: closed before event {i}: {got}");
                    got.push_str(&String::from_utf8_lossy(&b[..n]));
                }
            };
            tokio::time::timeout(EACH_EVENT, read)
                .await
                .unwrap_or_else(|_| panic!("{path}: event {i} held back by the proxy: {got:?}"));
            // The client has it: the upstream may write the next.
            go.add_permits(1);
        }
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.contains("x-cohort-variant: control"), "{got}");
    }
}

/// The RFC 6455 §1.3 example key and the accept value it yields.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A WebSocket echo server: checks the handshake, answers 101 (with an
/// `x-served-by` naming it), then echoes every data frame unmasked and
/// answers a close with a close. Keeps every request head it got. A
/// request for `/ws/refuse` is declined with a 403.
pub(crate) async fn ws_echo(name: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                buf.drain(..end);
                seen.lock().unwrap().push(head.clone());
                if head.starts_with("get /ws/refuse") {
                    let _ = s
                        .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno")
                        .await;
                    return;
                }
                if !head.contains(&format!("sec-websocket-key: {}", WS_KEY.to_lowercase())) {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\nx-served-by: {name}\r\n\r\n");
                s.write_all(answer.as_bytes()).await.unwrap();
                loop {
                    let Some((opcode, payload)) = read_frame(&mut s, &mut buf).await else {
                        return;
                    };
                    if opcode == 8 {
                        let _ = s.write_all(&frame(8, &payload, None)).await;
                        return;
                    }
                    if s.write_all(&frame(opcode, &payload, None)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// One frame (FIN set), masked with `mask` if given (a client's frames
/// must be, RFC 6455 §5.3). Payloads here are under 126 bytes.
pub(crate) fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x80 | opcode, payload.len() as u8];
    match mask {
        Some(m) => {
            f[1] |= 0x80;
            f.extend_from_slice(&m);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// Reads one frame (payload under 126 bytes), unmasking it.
pub(crate) async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 2 {
            let masked = buf[1] & 0x80 != 0;
            let len = (buf[1] & 0x7f) as usize;
            assert!(len < 126, "only short frames here");
            let need = 2 + if masked { 4 } else { 0 } + len;
            if buf.len() >= need {
                let opcode = buf[0] & 0x0f;
                let mut payload = buf[need - len..need].to_vec();
                if masked {
                    let m = [buf[2], buf[3], buf[4], buf[5]];
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= m[i % 4];
                    }
                }
                buf.drain(..need);
                return Some((opcode, payload));
            }
        }
        let mut b = [0u8; 4096];
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
}

pub(crate) fn ws_handshake(path: &str, user: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\nx-user-id: {user}\r\nx-request-id: ws-{user}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_assigned_stamped_and_tunnelled_both_ways() {
    let (old, old_heads) = ws_echo("old").await;
    let (new, new_heads) = ws_echo("new").await;
    let dir = TestDir::new();
    let exp = "  - name: chat\n    routes: [/ws, \"/ws/*\"]\n    salt: chat-salt\n    variants:\n      - { name: control, upstream: old, weight: 50 }\n      - { name: treatment, upstream: new, weight: 50 }\n";
    let ups = [
        ("old", format!("http://{old}")),
        ("new", format!("http://{new}")),
    ];
    let cohort = Cohort::start(&dir, &config_urls(&ups, exp));

    let mut variants = Vec::new();
    for user in ["alice", "bob", "carol", "dave"] {
        let mut s = TcpStream::connect(cohort.addr).await.unwrap();
        s.write_all(ws_handshake("/ws", user).as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut b = [0u8; 4096];
                let n = s.read(&mut b).await.unwrap();
                assert!(n > 0, "closed during the handshake: {buf:?}");
                buf.extend_from_slice(&b[..n]);
            }
        })
        .await
        .expect("a handshake answer");
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        buf.drain(..end);
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains(&format!(
                "sec-websocket-accept: {}",
                WS_ACCEPT.to_lowercase()
            )),
            "{head}"
        );
        assert!(head.contains("upgrade: websocket"), "{head}");
        assert!(head.contains("connection: upgrade"), "{head}");
        let variant = head
            .lines()
            .find_map(|l| l.strip_prefix("x-cohort-variant: "))
            .unwrap_or_else(|| panic!("101 not stamped: {head}"))
            .to_string();
        let served_by = head
            .lines()
            .find_map(|l| l.strip_prefix("x-served-by: "))
            .unwrap()
            .to_string();
        let expected = if variant == "control" { "old" } else { "new" };
        assert_eq!(
            served_by, expected,
            "{user} stamped {variant} but served by {served_by}"
        );
        assert!(head.contains("x-cohort-epoch: "), "{head}");

        // Frames both ways, through the tunnel.
        for text in ["hello", "from the other side"] {
            s.write_all(&frame(1, text.as_bytes(), Some([1, 2, 3, 4])))
                .await
                .unwrap();
            let (op, payload) =
                tokio::time::timeout(Duration::from_secs(10), read_frame(&mut s, &mut buf))
                    .await
                    .expect("an echo")
                    .expect("the tunnel is open");
            assert_eq!((op, payload.as_slice()), (1, text.as_bytes()));
        }
        s.write_all(&frame(8, b"", Some([9, 9, 9, 9])))
            .await
            .unwrap();
        let closed = read_frame(&mut s, &mut buf).await;
        assert_eq!(closed.map(|c| c.0), Some(8));
        variants.push((user, variant));

        // A plain request for the same unit gets the same variant.
        let again = TestClient::new()
            .send(
                cohort.addr,
                "GET",
                "/ws/plain",
                &[("x-user-id", Some(user))],
                "",
            )
            .await;
        assert_eq!(again.variant(), variants.last().unwrap().1, "{user} moved");
    }
    // The upstream got the upgrade with the stamps.
    let heads: Vec<String> = old_heads
        .lock()
        .unwrap()
        .iter()
        .chain(new_heads.lock().unwrap().iter())
        .cloned()
        .collect();
    let upgrades: Vec<&String> = heads
        .iter()
        .filter(|h| h.contains("upgrade: websocket"))
        .collect();
    assert_eq!(upgrades.len(), 4, "{heads:?}");
    for h in &upgrades {
        assert!(h.contains("connection: upgrade"), "{h}");
        assert!(h.contains("x-cohort-variant: "), "{h}");
    }

    // One access-log line per tunnel, written when it closed: 101, with
    // the bytes each way.
    let log = log_when(&dir, |l| {
        l.iter().filter(|l| l["status"] == 101).count() >= variants.len()
    })
    .await;
    for (user, variant) in &variants {
        let lines: Vec<&serde_json::Value> = log
            .iter()
            .filter(|l| l["request_id"] == format!("ws-{user}"))
            .collect();
        assert_eq!(lines.len(), 1, "{user}: {log:?}");
        let l = lines[0];
        assert_eq!(l["status"], 101, "{l}");
        assert_eq!(l["protocol"], "http/1.1", "{l}");
        assert_eq!(l["variant"], variant.as_str(), "{l}");
        assert!(l["bytes_in"].as_u64().unwrap() > 0, "{l}");
        assert!(l["bytes_out"].as_u64().unwrap() > 0, "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_websocket_and_an_h2c_upgrade_are_answered_plainly() {
    let (ws, _) = ws_echo("old").await;
    let plain = Backend::spawn("plain").await;
    let dir = TestDir::new();
    let exp = "  - name: chat\n    routes: [/ws, \"/ws/*\"]\n    salt: chat-salt\n    variants:\n      - { name: control, upstream: old, weight: 100 }\n  - name: ranker\n    routes: [/predict]\n    salt: s\n    variants:\n      - { name: control, upstream: plain, weight: 100 }\n";
    let ups = [("old", format!("http://{ws}")), ("plain", plain.url())];
    let cohort = Cohort::start(&dir, &config_urls(&ups, exp));
    let refused = raw_exchange(cohort.addr, ws_handshake("/ws/refuse", "eve").as_bytes(), 1).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("x-cohort-variant: control"), "{refused}");
    let h2c = "GET /predict HTTP/1.1\r\nhost: t\r\nx-user-id: eve\r\nconnection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
    let r = raw_exchange(cohort.addr, h2c.as_bytes(), 1).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let seen = plain.last_headers();
    assert!(seen.get("upgrade").is_none(), "{seen:?}");
}
