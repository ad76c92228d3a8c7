//! Request parsing: any bytes, any head limit. Never panics; a lean head
//! lies inside its input, and the head written upstream parses back to
//! the same method, target and body.
#![no_main]

use cohort::proxy::h1::{self, Hop, Parsed, Request, RequestHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (limit, raw) = match data.split_first() {
        Some((l, rest)) => (64 + usize::from(*l) * 256, rest),
        None => return,
    };
    let mut head = RequestHead::default();
    if h1::parse_request(raw, &mut head, limit) != Parsed::Lean {
        return;
    }
    assert!(head.head_len <= raw.len() && head.head_len <= limit);
    for f in &head.fields {
        assert!(f.name.end <= head.head_len && f.value.end <= head.head_len);
    }
    if raw.len() < head.head_len + head.body_len {
        return;
    }
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
    h1::write_upstream_head(&mut out, &req, &hop);
    out.extend_from_slice(req.body());
    let mut again = RequestHead::default();
    assert_eq!(
        h1::parse_request(&out, &mut again, usize::MAX),
        Parsed::Lean
    );
    let back = Request {
        bytes: &out,
        head: &again,
    };
    assert_eq!(back.method(), req.method());
    assert_eq!(back.target(), req.target());
    assert_eq!(back.body(), req.body());
});
