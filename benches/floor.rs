//! The cheapest HTTP/1.1 keep-alive proxy that still makes a proxy's
//! syscalls: a measuring stick, not a product. Per request it reads the
//! client's request, writes it unchanged to one upstream connection, reads
//! the response and writes it back: no routing, hashing, header rewriting or
//! logging, one task per connection on one thread, like cohort's lean path.
//! What it costs per request on a given machine is the floor any user-space
//! TCP proxy (cohort and nginx included) starts from; `benches/cpu.sh floor`
//! measures it beside them.
//!
//!   cargo bench --bench floor -- LISTEN UPSTREAM
//!
//! It assumes what the benchmark sends: requests with a Content-Length body
//! (or none) and responses with a Content-Length, one at a time.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let listen = args
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8092".into());
    let upstream = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await.expect("bind");
        eprintln!("floor proxy listening on {listen}, upstream {upstream}");
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let _ = relay(client, &upstream).await;
            });
        }
    });
}

async fn relay(mut client: TcpStream, upstream: &str) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = read_message(&mut client, &mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        up.write_all(&buf[..n]).await?;
        let m = read_message(&mut up, &mut buf).await?;
        if m == 0 {
            return Ok(());
        }
        client.write_all(&buf[..m]).await?;
    }
}

/// Reads one whole message (head plus Content-Length body) into `buf`;
/// 0 at a clean end of stream.
async fn read_message(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(0);
        }
        have += n;
        if let Some(len) = whole_message(&buf[..have]) {
            return Ok(len);
        }
        if have == buf.len() {
            return Err(std::io::Error::other("message larger than the buffer"));
        }
    }
}

/// The length of the message at the start of `got`, once all of it is there.
fn whole_message(got: &[u8]) -> Option<usize> {
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&got[..head_end]).ok()?;
    let body: usize = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    (got.len() >= head_end + body).then_some(head_end + body)
}
