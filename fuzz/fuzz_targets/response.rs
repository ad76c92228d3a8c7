//! Response parsing: any bytes, as an answer to a HEAD or not. Never
//! panics; a whole head lies inside its input, and the head written to
//! the client parses back with the same status and framing.
#![no_main]

use cohort::proxy::h1::{self, Framing, ResponseHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head_request, raw) = match data.split_first() {
        Some((b, rest)) => (b & 1 == 1, rest),
        None => return,
    };
    let mut head = ResponseHead::default();
    let Ok(true) = h1::parse_response(raw, head_request, &mut head) else {
        return;
    };
    assert!(head.head_len <= raw.len() && head.reason.end <= head.head_len);
    let framing = head.framing.expect("a whole head has a framing");
    if (100..200).contains(&head.status) {
        return;
    }
    let mut out = Vec::new();
    h1::write_client_head(
        &mut out,
        raw,
        &head,
        None,
        b"rid",
        || *b"Tue, 01 Dec 2026 11:49:43 GMT",
        false,
    );
    let mut again = ResponseHead::default();
    let reparsed = h1::parse_response(&out, head_request, &mut again);
    // The proxy adds up to four headers (date, request id, framing,
    // connection): a head at the parser's own limits may not fit twice.
    let at_limits = head.fields.len() + 4 > h1::MAX_HEADERS || out.len() >= h1::MAX_HEAD;
    if reparsed == Err(h1::BadResponse::TooLarge) && at_limits {
        return;
    }
    assert_eq!(reparsed, Ok(true));
    assert_eq!(again.status, head.status);
    let expect = match framing {
        Framing::UntilClose => Framing::Chunked,
        f => f,
    };
    assert_eq!(again.framing, Some(expect));
});
