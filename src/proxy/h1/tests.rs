use super::*;

fn parse(raw: &str) -> (Parsed, RequestHead) {
    let mut head = RequestHead::default();
    (parse_request(raw.as_bytes(), &mut head, MAX_HEAD), head)
}

#[test]
fn plain_requests_are_lean_and_the_rest_goes_to_hyper() {
    let raw = "POST /predict?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc";
    let (p, h) = parse(raw);
    assert_eq!(p, Parsed::Lean);
    assert_eq!((h.head_len, h.body_len, h.close), (raw.len() - 3, 3, false));
    let req = Request {
        bytes: raw.as_bytes(),
        head: &h,
    };
    assert_eq!((req.path(), req.body()), ("/predict", &b"abc"[..]));
    assert_eq!(req.values(b"HOST").collect::<Vec<_>>(), [&b"a"[..]]);

    assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\n").0, Parsed::Partial);
    assert!(parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").1.close);
    for (raw, why) in [
        ("GET / HTTP/1.0\r\n\r\n", "not HTTP/1.1"),
        (
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "not an origin-form target",
        ),
        ("CONNECT a:1 HTTP/1.1\r\n\r\n", "not an origin-form target"),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "transfer-encoding",
        ),
        (
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "expect or upgrade",
        ),
        (
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "expect or upgrade",
        ),
        (
            "GET / HTTP/1.1\r\nConnection: x-secret\r\n\r\n",
            "connection options",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "bad content-length",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "bad content-length",
        ),
        ("GET /predict#x HTTP/1.1\r\n\r\n", "fragment in target"),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999\r\n\r\n",
            "large body",
        ),
        ("GET /\x01 HTTP/1.1\r\n\r\n", "malformed head"),
    ] {
        assert_eq!(parse(raw).0, Parsed::Hand(why), "{raw:?}");
    }
    let huge = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD));
    assert_eq!(parse(&huge).0, Parsed::Reject(Reject::HeadTooLarge));
    // Whole but over the limit, or partial and at it: both refused.
    let mut head = RequestHead::default();
    let whole = "GET / HTTP/1.1\r\nHost: a\r\nx: 0123456789\r\n\r\n";
    assert_eq!(
        parse_request(whole.as_bytes(), &mut head, whole.len()),
        Parsed::Lean
    );
    assert_eq!(
        parse_request(whole.as_bytes(), &mut head, whole.len() - 1),
        Parsed::Reject(Reject::HeadTooLarge)
    );
    assert_eq!(
        parse_request(&whole.as_bytes()[..20], &mut head, 20),
        Parsed::Reject(Reject::HeadTooLarge)
    );
    for raw in [
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n",
    ] {
        assert_eq!(parse(raw).0, Parsed::Reject(Reject::Host), "{raw:?}");
    }
    // Equal repeated lengths are one length.
    let (p, h) =
        parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab");
    assert_eq!((p, h.body_len), (Parsed::Lean, 2));
}

fn stamps() -> StampBytes<'static> {
    [b"ranker", b"new", b"2"]
}

#[test]
fn the_upstream_head_is_rewritten_like_the_hyper_path() {
    let raw = "POST /predict HTTP/1.1\r\nHost: front\r\nX-Cohort-Variant: old\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nX-Forwarded-Host: evil\r\nX-Request-Id: theirs\r\nx-user-id: u1\r\nContent-Length: 2\r\n\r\n{}";
    let (p, h) = parse(raw);
    assert_eq!(p, Parsed::Lean);
    let req = Request {
        bytes: raw.as_bytes(),
        head: &h,
    };
    let s = stamps();
    let mut out = Vec::new();
    let hop = Hop {
        authority: "127.0.0.1:9001",
        stamps: Some(s),
        request_id: b"rid-1",
        peer_ip: b"10.0.0.9",
    };
    write_upstream_head(&mut out, &req, &hop);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /predict HTTP/1.1\r\nhost: 127.0.0.1:9001\r\nx-forwarded-host: front\r\n\
             x-user-id: u1\r\nx-forwarded-for: 1.1.1.1, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-cohort-experiment: ranker\r\nx-cohort-variant: new\r\nx-cohort-epoch: 2\r\n\
             x-request-id: rid-1\r\ncontent-length: 2\r\n\r\n"
    );
}

fn response(raw: &str, head_request: bool) -> Result<ResponseHead, BadResponse> {
    let mut head = ResponseHead::default();
    match parse_response(raw.as_bytes(), head_request, &mut head)? {
        true => Ok(head),
        false => Err(BadResponse::Malformed),
    }
}

#[test]
fn response_framing_follows_rfc_9112() {
    let f = |raw: &str, head| response(raw, head).map(|h| (h.framing.unwrap(), h.close));
    use Framing::*;
    assert_eq!(
        f("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
        Ok((Length(5), false))
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
        Ok((Empty, false))
    );
    assert_eq!(
        f("HTTP/1.1 204 No Content\r\n\r\n", false),
        Ok((Empty, false))
    );
    assert_eq!(
        f("HTTP/1.1 304 Not Modified\r\n\r\n", false),
        Ok((Empty, false))
    );
    assert_eq!(
        f("HTTP/1.1 100 Continue\r\n\r\n", false),
        Ok((Empty, false))
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            false
        ),
        Err(BadResponse::Ambiguous)
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false
        ),
        Ok((Chunked, false))
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
        Ok((UntilClose, true))
    );
    assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n", false), Ok((UntilClose, true)));
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false
        ),
        Ok((Length(0), true))
    );
    assert_eq!(
        f("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        Ok((Length(0), true))
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false
        ),
        Err(BadResponse::Length)
    );
    assert_eq!(
        f("HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
        Err(BadResponse::Switch)
    );
    assert_eq!(
        f("HTTP/1.1 2x0 OK\r\n\r\n", false),
        Err(BadResponse::Malformed)
    );
    assert_eq!(
        f("HTTP/1.1 099 Odd\r\n\r\n", false),
        Err(BadResponse::Malformed)
    );
    // No reason phrase, or one httparse will not hand back as text.
    let h = response("HTTP/1.1 200\r\ncontent-length: 0\r\n\r\n", false).unwrap();
    assert_eq!((h.status, h.reason.clone()), (200, 0..0));
    let h = response(
        "HTTP/1.1 200 \u{c7}a va\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(h.reason, 0..0);
    let mut head = ResponseHead::default();
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\n", false, &mut head),
        Ok(false)
    );
}

const DATE: [u8; 29] = *b"Tue, 01 Dec 2026 11:49:43 GMT";

#[test]
fn the_client_head_carries_the_stamps_and_not_the_upstreams_hop_headers() {
    let raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nX-Cohort-Variant: spoofed\r\nX-Request-Id: up\r\nContent-Length: 2\r\n\r\n{}";
    let head = response(raw, false).unwrap();
    let s = stamps();
    let mut out = Vec::new();
    write_client_head(
        &mut out,
        raw.as_bytes(),
        &head,
        Some(s),
        b"rid",
        || DATE,
        false,
    );
    assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: Tue, 01 Dec 2026 11:49:43 GMT\r\nx-cohort-experiment: ranker\r\n\
             x-cohort-variant: new\r\nx-cohort-epoch: 2\r\nx-request-id: rid\r\ncontent-length: 2\r\n\r\n"
                .replace("content-type", "Content-Type")
        );
    // A HEAD answer keeps its length; a close-delimited body is re-framed.
    let raw = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n";
    let mut out = Vec::new();
    write_client_head(
        &mut out,
        raw.as_bytes(),
        &response(raw, true).unwrap(),
        None,
        b"r",
        || DATE,
        true,
    );
    assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\ndate: Tue, 01 Dec 2026 11:49:43 GMT\r\nx-request-id: r\r\nconnection: close\r\n\r\n"
        );
    // The upstream's own date is kept, not doubled.
    let raw = "HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 10:00:00 GMT\r\ncontent-length: 0\r\n\r\n";
    let mut out = Vec::new();
    let head = response(raw, false).unwrap();
    write_client_head(&mut out, raw.as_bytes(), &head, None, b"r", || DATE, false);
    assert_eq!(String::from_utf8(out).unwrap().matches("ate: ").count(), 1);
    let raw = "HTTP/1.1 599 Odd\r\n\r\n";
    let mut out = Vec::new();
    write_client_head(
        &mut out,
        raw.as_bytes(),
        &response(raw, false).unwrap(),
        None,
        b"r",
        || DATE,
        false,
    );
    assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 599 Odd\r\ndate: Tue, 01 Dec 2026 11:49:43 GMT\r\nx-request-id: r\r\ntransfer-encoding: chunked\r\n\r\n"
        );
}

#[test]
fn a_chunked_body_ends_where_its_last_chunk_and_trailers_end() {
    let body = b"5\r\nhello\r\n1A ;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nNEXT";
    let end = body.len() - 4;
    let mut whole = ChunkedScan::default();
    assert_eq!(whole.feed(body), Ok(Some(end)));
    assert_eq!(whole.data_bytes(), 5 + 26);
    // Any split of the same bytes finds the same end.
    for cut in 0..end {
        let mut s = ChunkedScan::default();
        assert_eq!(s.feed(&body[..cut]), Ok(None), "cut {cut}");
        assert_eq!(s.feed(&body[cut..]), Ok(Some(end - cut)), "cut {cut}");
    }
    // The payload is handed out run by run, framing and trailers left out.
    let mut payload = Vec::new();
    let mut s = ChunkedScan::default();
    assert_eq!(
        s.decode(body, &mut |run| payload.extend_from_slice(run)),
        Ok(Some(end))
    );
    assert_eq!(payload, b"helloabcdefghijklmnopqrstuvwxyz");
    for bad in [
        &b"x\r\n"[..],
        b"5\r\nhelloXX",
        b"0\r\n\n",
        b"fffffffffffffffff\r\n",
        b"5 5\r\nhello\r\n",
        b"5;a\x01\r\nhello\r\n",
    ] {
        assert_eq!(ChunkedScan::default().feed(bad), Err(BadChunk), "{bad:?}");
    }
}
