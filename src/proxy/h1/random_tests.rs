//! Fixed-seed randomized versions of the fuzz targets in `fuzz/` (request
//! parsing, response parsing, the chunked decoder), run with the unit
//! tests: many generated and mutated inputs, asserting that nothing
//! panics and that the parsers' invariants hold — what is parsed lies
//! inside the input, and what the proxy writes parses back to the same
//! message. A failure prints the seed and the input.

use super::*;

/// xorshift64*: small, fast, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const ROUNDS: u64 = 20_000;

/// Bytes a hostile peer likes: delimiters, whitespace, digits, hex.
const NASTY: &[u8] = b"\r\n :;,\t0123456789abcdefxX-_/?#%\x00\x7f\xff";

/// Flips, inserts or deletes a few bytes.
fn mutate(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.below(4) {
        let at = if b.is_empty() { 0 } else { rng.below(b.len()) };
        match rng.below(3) {
            0 if !b.is_empty() => b[at] = *rng.pick(NASTY),
            1 => b.insert(at, *rng.pick(NASTY)),
            _ if !b.is_empty() => {
                b.remove(at);
            }
            _ => {}
        }
    }
    b
}

fn request(rng: &mut Rng) -> Vec<u8> {
    let method = *rng.pick(&["GET", "POST", "HEAD", "PUT", "DELETE", "CONNECT", "G T"]);
    let target = *rng.pick(&["/", "/predict", "/r/a?x=1", "//p", "/%70", "*", "http://a/"]);
    let mut h = format!("{method} {target} HTTP/1.1\r\n");
    if !rng.chance(5) {
        h.push_str("Host: front\r\n");
    }
    let body = "x".repeat(rng.below(40));
    for _ in 0..rng.below(4) {
        let (n, v) = *rng.pick(&[
            ("Host", "a"),
            ("host", "b:80"),
            ("Content-Length", "3"),
            ("content-length", "0"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("Connection", "keep-alive, x-hop"),
            ("x-user-id", "u1"),
            ("X-Cohort-Variant", "spoof"),
            ("Transfer_Encoding", "chunked"),
            ("x-forwarded-for", "1.2.3.4"),
            ("Expect", "100-continue"),
        ]);
        h.push_str(&format!("{n}: {v}\r\n"));
    }
    if rng.chance(2) {
        h.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    h.push_str("\r\n");
    h.push_str(&body);
    h.into_bytes()
}

#[test]
fn request_parsing_never_panics_and_round_trips_through_the_rewrite() {
    let mut rng = Rng(0x5eed_0001);
    let mut lean = 0;
    for round in 0..ROUNDS {
        let mut raw = request(&mut rng);
        if rng.chance(2) {
            raw = mutate(&mut rng, raw);
        }
        let cut = if rng.chance(4) {
            rng.below(raw.len() + 1)
        } else {
            raw.len()
        };
        let raw = &raw[..cut];
        let mut head = RequestHead::default();
        let max = if rng.chance(8) { 32 } else { MAX_HEAD };
        let parsed = parse_request(raw, &mut head, max);
        if parsed != Parsed::Lean {
            continue;
        }
        lean += 1;
        let ctx = format!("round {round}: {:?}", String::from_utf8_lossy(raw));
        // Everything parsed lies inside the input.
        assert!(head.head_len <= raw.len() && head.head_len <= max, "{ctx}");
        assert!(head.body_len <= MAX_LEAN_BODY, "{ctx}");
        for f in &head.fields {
            assert!(
                f.name.end <= head.head_len && f.value.end <= head.head_len,
                "{ctx}"
            );
        }
        if raw.len() < head.head_len + head.body_len {
            continue;
        }
        // The head written upstream parses back to the same request.
        let req = Request {
            bytes: raw,
            head: &head,
        };
        let mut out = Vec::new();
        let hop = Hop {
            authority: "127.0.0.1:9",
            stamps: Some([b"x", b"v", b"1"]),
            request_id: b"rid",
            peer_ip: b"10.0.0.1",
        };
        write_upstream_head(&mut out, &req, &hop);
        out.extend_from_slice(req.body());
        let mut again = RequestHead::default();
        assert_eq!(
            parse_request(&out, &mut again, usize::MAX),
            Parsed::Lean,
            "{ctx}"
        );
        let back = Request {
            bytes: &out,
            head: &again,
        };
        assert_eq!(back.method(), req.method(), "{ctx}");
        assert_eq!(back.target(), req.target(), "{ctx}");
        assert_eq!(back.body(), req.body(), "{ctx}");
        assert_eq!(
            back.values(b"x-cohort-variant").collect::<Vec<_>>(),
            [b"v"],
            "{ctx}"
        );
        assert_eq!(back.values(b"transfer_encoding").count(), 0, "{ctx}");
    }
    assert!(
        lean > ROUNDS / 10,
        "the generator reaches the lean path ({lean})"
    );
}

fn response(rng: &mut Rng) -> Vec<u8> {
    let status = *rng.pick(&[
        "200 OK",
        "204 No Content",
        "304 Not Modified",
        "100 Continue",
        "404 Nope",
        "599 Odd",
        "101 Switching",
    ]);
    let mut h = format!("HTTP/1.{} {status}\r\n", rng.below(2));
    let body = "y".repeat(rng.below(30));
    for _ in 0..rng.below(6) {
        let (n, v) = *rng.pick(&[
            ("Content-Type", "text/plain"),
            ("Transfer-Encoding", "chunked"),
            ("Transfer-Encoding", "gzip"),
            ("Content-Length", "5, 5"),
            ("Connection", "close"),
            ("Connection", "x-hop"),
            ("x-hop", "1"),
            ("X-Request-Id", "up"),
            ("Date", "Mon, 30 Nov 2026 10:00:00 GMT"),
        ]);
        h.push_str(&format!("{n}: {v}\r\n"));
    }
    if rng.chance(2) {
        h.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    h.push_str("\r\n");
    h.push_str(&body);
    h.into_bytes()
}

#[test]
fn response_parsing_never_panics_and_the_client_head_parses_back() {
    let mut rng = Rng(0x5eed_0002);
    let mut whole = 0;
    for round in 0..ROUNDS {
        let mut raw = response(&mut rng);
        if rng.chance(2) {
            raw = mutate(&mut rng, raw);
        }
        let head_request = rng.chance(5);
        let mut head = ResponseHead::default();
        let Ok(true) = parse_response(&raw, head_request, &mut head) else {
            continue;
        };
        whole += 1;
        let ctx = format!("round {round}: {:?}", String::from_utf8_lossy(&raw));
        assert!(head.head_len <= raw.len(), "{ctx}");
        assert!(head.reason.end <= head.head_len, "{ctx}");
        let framing = head.framing.expect("a whole head has a framing");
        if (100..200).contains(&head.status) {
            continue;
        }
        let mut out = Vec::new();
        write_client_head(
            &mut out,
            &raw,
            &head,
            None,
            b"rid",
            || *b"Tue, 01 Dec 2026 11:49:43 GMT",
            false,
        );
        let mut again = ResponseHead::default();
        assert_eq!(
            parse_response(&out, head_request, &mut again),
            Ok(true),
            "{ctx}"
        );
        assert_eq!(again.status, head.status, "{ctx}");
        let expect = match framing {
            Framing::UntilClose => Framing::Chunked,
            f => f,
        };
        assert_eq!(again.framing, Some(expect), "{ctx}");
    }
    assert!(
        whole > ROUNDS / 10,
        "the generator reaches whole heads ({whole})"
    );
}

#[test]
fn the_chunked_decoder_finds_the_payload_however_the_bytes_are_split() {
    let mut rng = Rng(0x5eed_0003);
    for round in 0..ROUNDS {
        // A body of random chunks, size lines in random case and with
        // random extensions, then trailers, then bytes of the next message.
        let mut payload = Vec::new();
        let mut wire = Vec::new();
        for _ in 0..rng.below(5) {
            let n = 1 + rng.below(20);
            let data: Vec<u8> = (0..n).map(|_| *rng.pick(NASTY)).collect();
            let size = if rng.chance(2) {
                format!("{n:x}")
            } else {
                format!("{n:X}")
            };
            wire.extend_from_slice(size.as_bytes());
            if rng.chance(3) {
                wire.extend_from_slice(b" ;ext=\"v\"");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&data);
            wire.extend_from_slice(b"\r\n");
            payload.extend_from_slice(&data);
        }
        wire.extend_from_slice(b"0\r\n");
        if rng.chance(2) {
            wire.extend_from_slice(b"x-t: 1\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        let end = wire.len();
        wire.extend_from_slice(b"NEXT");
        let ctx = format!("round {round}: {:?}", String::from_utf8_lossy(&wire));

        // Fed in random pieces: the same payload and the same end.
        let mut scan = ChunkedScan::default();
        let mut got = Vec::new();
        let mut at = 0;
        let found = loop {
            let piece = (1 + rng.below(16)).min(wire.len() - at);
            let fed = &wire[at..at + piece];
            let r = scan.decode(fed, &mut |run| got.extend_from_slice(run));
            match r.unwrap_or_else(|e| panic!("{e}: {ctx}")) {
                Some(used) => {
                    assert!(used <= fed.len(), "read past its input: {ctx}");
                    break at + used;
                }
                None => at += piece,
            }
            assert!(at < wire.len(), "never ended: {ctx}");
        };
        assert_eq!((found, &got), (end, &payload), "{ctx}");
        assert_eq!(scan.data_bytes(), payload.len() as u64, "{ctx}");

        // Re-emitted canonically, it decodes to the same payload.
        let mut canonical = Vec::new();
        write_chunk(&mut canonical, &payload);
        canonical.extend_from_slice(LAST_CHUNK);
        let mut again = Vec::new();
        let r = ChunkedScan::default().decode(&canonical, &mut |run| again.extend_from_slice(run));
        assert_eq!(r, Ok(Some(canonical.len())), "{ctx}");
        assert_eq!(again, payload, "{ctx}");

        // Mutated, it may fail, never panic, and never reads past its input.
        let bad = mutate(&mut rng, wire[..end].to_vec());
        if let Ok(Some(used)) = ChunkedScan::default().feed(&bad) {
            assert!(used <= bad.len(), "{ctx}");
        }
    }
}
