//! HTTP/1.1 as pure bytes: which requests the lean path
//! ([`super::lean`]) may serve, how a head is rewritten for the next hop,
//! and where a response body ends. Pure functions over bytes, unit-tested
//! here and fuzzed (`fuzz/`); the sockets are in `lean`. Imports nothing
//! from the rest of the proxy: the header policy ([`names`]) and the
//! chunked coding ([`chunked`]) are defined here and applied by
//! [`super::core`] for hyper's path too.
//!
//! The lean path takes only the plain case — HTTP/1.1, origin-form target,
//! a `Content-Length` body small enough to buffer, no `Expect`, `Upgrade`
//! or `Transfer-Encoding` — and [`parse_request`] says [`Parsed::Hand`] for
//! anything else, before a byte is consumed, so hyper serves the rest of
//! that connection with its full HTTP/1 machinery. A head no path may
//! serve — over the request head limit, or without exactly one valid Host
//! — is [`Parsed::Reject`]ed, and the lean path answers it as hyper's path
//! answers the same request.

use std::mem::MaybeUninit;
use std::ops::Range;

pub mod chunked;
pub mod names;

pub use chunked::{write_chunk, BadChunk, ChunkedScan, LAST_CHUNK};
use names::{classify, eq, Forward, Name};

/// The most a response head may take (a request head's limit is
/// `runtime.max_request_head`, passed to [`parse_request`]).
pub const MAX_HEAD: usize = 64 * 1024;

/// The three stamp values (experiment, variant, epoch), as bytes.
pub type StampBytes<'a> = [&'a [u8]; 3];
/// The most headers a head may carry on the lean path.
pub const MAX_HEADERS: usize = 100;
/// The biggest request body the lean path buffers; larger ones stream
/// through hyper.
pub const MAX_LEAN_BODY: usize = 256 * 1024;

/// One header of a head, as offsets into the bytes it was parsed from.
#[derive(Clone, Debug)]
pub struct Field {
    /// The header name's bytes.
    pub name: Range<usize>,
    /// The value's bytes, without surrounding whitespace.
    pub value: Range<usize>,
    /// What the name is to the proxy, worked out once when the head is
    /// parsed: the writers reuse it instead of classifying again.
    pub kind: Name,
}

/// A parsed request head, as offsets into the connection's buffer.
#[derive(Default, Debug)]
pub struct RequestHead {
    /// The method token's bytes.
    pub method: Range<usize>,
    /// The request target's bytes (origin form: path and query).
    pub target: Range<usize>,
    /// Every header, in order.
    pub fields: Vec<Field>,
    /// Bytes from the request line through the blank line.
    pub head_len: usize,
    /// Bytes of body that follow the head (`Content-Length`; 0 if none).
    pub body_len: usize,
    /// The client asked to close after this exchange.
    pub close: bool,
}

/// What [`parse_request`] found at the front of the buffer.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A lean request; its head is in the `RequestHead`.
    Lean,
    /// Not all of the head has arrived yet.
    Partial,
    /// Not for the lean path (why, for the debug log): hyper takes the
    /// connection from here, its bytes untouched.
    Hand(&'static str),
    /// A request no path may serve: the lean path answers it itself, as
    /// hyper's path answers the same request, and closes.
    Reject(Reject),
}

/// Why a request head is refused outright.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reject {
    /// Over the request head limit (431).
    HeadTooLarge,
    /// No Host, several, or one that is not `host[:port]` (400, RFC 9112
    /// §3.2).
    Host,
}

/// Parses the request head at the front of `buf` into `head`; a head of
/// `max_head` bytes or more is refused.
pub fn parse_request(buf: &[u8], head: &mut RequestHead, max_head: usize) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Complete(_)) => return Parsed::Reject(Reject::HeadTooLarge),
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Parsed::Partial,
        Ok(httparse::Status::Partial) => return Parsed::Reject(Reject::HeadTooLarge),
        Err(_) => return Parsed::Hand("malformed head"),
    };
    if req.version != Some(1) {
        return Parsed::Hand("not HTTP/1.1");
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Hand("malformed head");
    };
    if method == "CONNECT" || !target.starts_with('/') {
        return Parsed::Hand("not an origin-form target");
    }
    // `http::Uri` drops a fragment, which hyper's path then neither routes
    // on nor forwards; the lean path leaves such targets to it.
    if target.contains('#') {
        return Parsed::Hand("fragment in target");
    }
    head.fields.clear();
    head.method = offsets(buf, method.as_bytes());
    head.target = offsets(buf, target.as_bytes());
    head.head_len = head_len;
    head.close = false;
    let mut length: Option<usize> = None;
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let kind = classify(name);
        if kind == Name::ContentLength {
            match parse_length(h.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return Parsed::Hand("bad content-length"),
            }
        } else if kind == Name::TransferEncoding {
            return Parsed::Hand("transfer-encoding");
        } else if kind == Name::Expect || kind == Name::Upgrade {
            return Parsed::Hand("expect or upgrade");
        } else if kind == Name::Connection {
            // Only the plain tokens: a header named in Connection would
            // have to be dropped, which hyper's path does.
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    return Parsed::Hand("connection options");
                }
            }
        } else if kind == Name::Host {
            // Counted as two when invalid: refused after the loop, with
            // every field parsed (the answer carries the request id).
            hosts += if names::valid_host(h.value) { 1 } else { 2 };
        }
        head.fields.push(Field {
            name: offsets(buf, name),
            value: offsets(buf, h.value),
            kind,
        });
    }
    if hosts != 1 {
        return Parsed::Reject(Reject::Host);
    }
    head.body_len = length.unwrap_or(0);
    if head.body_len > MAX_LEAN_BODY {
        return Parsed::Hand("large body");
    }
    Parsed::Lean
}

/// Where `part`, a slice httparse returned, lies in `buf`. httparse hands
/// back a static `""` rather than a slice of `buf` for some empty parts
/// (a missing or non-ASCII reason phrase), so those map to an empty range.
fn offsets(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if !part.is_empty() && end <= buf.len() => start..end,
        _ => 0..0,
    }
}

/// A response's length from its Content-Length values: none, or one
/// number however often repeated; anything else (`5, 6`, `+5`, `5, 5` in
/// one field) is refused. The rule both paths hold responses to.
pub fn response_length<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<u64>, BadResponse> {
    let mut length = None;
    for v in values {
        match parse_length(v).map(|n| n as u64) {
            Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
            _ => return Err(BadResponse::Length),
        }
    }
    Ok(length)
}

/// The lean path's own answer to a request it cannot read whole (bad
/// framing), as hyper's path sends it; the connection closes.
pub const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// The lean path's answer to a request whose head or body stalled past
/// its timeout, as hyper's path sends it; the connection closes.
pub const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

fn parse_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, &d| n * 10 + (d - b'0') as usize))
}

/// A request head together with the bytes it indexes.
pub struct Request<'a> {
    /// The buffer the head was parsed from (head and buffered body).
    pub bytes: &'a [u8],
    /// Offsets into `bytes`.
    pub head: &'a RequestHead,
}

impl Request<'_> {
    /// The method token, e.g. `POST`.
    pub fn method(&self) -> &[u8] {
        &self.bytes[self.head.method.clone()]
    }
    /// The request target as sent: path and query.
    pub fn target(&self) -> &[u8] {
        &self.bytes[self.head.target.clone()]
    }
    /// The path, without the query.
    pub fn path(&self) -> &str {
        let t = self.target();
        let end = t.iter().position(|&b| b == b'?').unwrap_or(t.len());
        // httparse admits only visible ASCII in a target.
        std::str::from_utf8(&t[..end]).unwrap_or("/")
    }
    /// The buffered body (`body_len` bytes after the head).
    pub fn body(&self) -> &[u8] {
        let start = self.head.head_len;
        &self.bytes[start..start + self.head.body_len]
    }
    /// Each header as (name, value), in order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.head
            .fields
            .iter()
            .map(|f| (&self.bytes[f.name.clone()], &self.bytes[f.value.clone()]))
    }

    /// The values of header `name` (any case), in order.
    pub fn values<'s, 'n>(
        &'s self,
        name: &'n [u8],
    ) -> impl Iterator<Item = &'s [u8]> + use<'s, 'n> {
        self.fields()
            .filter(move |(n, _)| n.len() == name.len() && eq(n, name))
            .map(|(_, v)| v)
    }
}

/// What the proxy adds to a request on its way upstream.
pub struct Hop<'a> {
    /// The upstream's `host:port`: the new `Host`.
    pub authority: &'a str,
    /// The `x-cohort-*` stamps, on an experiment route.
    pub stamps: Option<StampBytes<'a>>,
    /// The `x-request-id` to send (the client's, or a new one).
    pub request_id: &'a [u8],
    /// The client's IP, appended to `x-forwarded-for`.
    pub peer_ip: &'a [u8],
}

/// Writes `req`'s head for the upstream into `out`, rewritten by
/// [`names::forward_rule`] as hyper's path rewrites it: hop-by-hop, the
/// proxy's own and their underscore look-alike headers dropped, `host` the
/// upstream's, `x-forwarded-*` and the stamps set.
pub fn write_upstream_head(out: &mut Vec<u8>, req: &Request<'_>, hop: &Hop<'_>) {
    out.extend_from_slice(req.method());
    out.push(b' ');
    out.extend_from_slice(req.target());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(hop.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut forwarded_for: Option<&[u8]> = None;
    let mut has_length = false;
    for f in &req.head.fields {
        let (name, value) = (&req.bytes[f.name.clone()], &req.bytes[f.value.clone()]);
        match names::forward_rule_of(f.kind, name) {
            Forward::Host => header(out, b"x-forwarded-host", value),
            Forward::ForwardedFor => forwarded_for = forwarded_for.or(Some(value)),
            Forward::Length => has_length = true,
            Forward::Drop => {}
            Forward::Keep => header(out, name, value),
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = forwarded_for {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(hop.peer_ip);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    if let Some(s) = hop.stamps {
        stamps(out, s);
    }
    header(out, b"x-request-id", hop.request_id);
    if has_length || !req.body().is_empty() {
        content_length(out, req.body().len() as u64);
    }
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn stamps(out: &mut Vec<u8>, [experiment, variant, epoch]: StampBytes<'_>) {
    header(out, b"x-cohort-experiment", experiment);
    header(out, b"x-cohort-variant", variant);
    header(out, b"x-cohort-epoch", epoch);
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Framing {
    /// No body (a HEAD answer, 204, 304).
    Empty,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head, as offsets into the upstream read buffer.
#[derive(Default, Debug)]
pub struct ResponseHead {
    /// The status code (100..=999).
    pub status: u16,
    /// The reason phrase's bytes (may be empty).
    pub reason: Range<usize>,
    /// Every header, in order.
    pub fields: Vec<Field>,
    /// Bytes from the status line through the blank line.
    pub head_len: usize,
    /// How the body is delimited; `None` for an interim (1xx) response.
    pub framing: Option<Framing>,
    /// The upstream will close the connection after this response.
    pub close: bool,
    /// Its Connection header names other headers (to be dropped).
    pub lists_headers: bool,
}

/// A response head the upstream sent that the proxy cannot pass on.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BadResponse {
    /// Not a valid HTTP/1.1 status line and headers.
    #[error("malformed response head")]
    Malformed,
    /// Longer than the parser's limit.
    #[error("response head over {MAX_HEAD} bytes")]
    TooLarge,
    /// Several or invalid `Content-Length` values (even equal ones).
    #[error("conflicting content-length")]
    Length,
    /// A 101 to a request that asked for no upgrade.
    #[error("a protocol switch the proxy never asked for")]
    Switch,
    /// `Content-Length` and `Transfer-Encoding` together (RFC 9112 §6.3:
    /// a smuggling shape; the connection is never reused).
    #[error("both content-length and transfer-encoding")]
    Ambiguous,
}

/// Parses the response head at the front of `buf`; `Ok(false)` means not
/// all of it has arrived. `head_request` says whether it answers a HEAD.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    head: &mut ResponseHead,
) -> Result<bool, BadResponse> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(false),
        Ok(httparse::Status::Partial) => return Err(BadResponse::TooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse::TooLarge),
        Err(_) => return Err(BadResponse::Malformed),
    };
    let status = resp.code.ok_or(BadResponse::Malformed)?;
    if status < 100 {
        return Err(BadResponse::Malformed);
    }
    if status == 101 {
        return Err(BadResponse::Switch);
    }
    head.fields.clear();
    head.status = status;
    head.reason = offsets(buf, resp.reason.unwrap_or("").as_bytes());
    head.head_len = head_len;
    head.close = resp.version != Some(1);
    head.lists_headers = false;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let kind = classify(name);
        if kind == Name::ContentLength {
            match parse_length(h.value).map(|n| n as u64) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return Err(BadResponse::Length),
            }
        } else if kind == Name::TransferEncoding {
            // Chunked only when it is the last coding applied.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if kind == Name::Connection {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    head.lists_headers = true;
                }
            }
        }
        head.fields.push(Field {
            name: offsets(buf, name),
            value: offsets(buf, h.value),
            kind,
        });
    }
    // Either framing could be meant: rather than pick one (RFC 9112 §6.3
    // lets a recipient read it as chunked), refuse it on both paths, so a
    // pooled connection never carries a response of uncertain length.
    if chunked.is_some() && length.is_some() {
        return Err(BadResponse::Ambiguous);
    }
    let informational = (100..200).contains(&status);
    head.framing = Some(
        if informational || head_request || status == 204 || status == 304 {
            Framing::Empty
        } else {
            match (chunked, length) {
                (Some(true), _) => Framing::Chunked,
                (Some(false), _) => Framing::UntilClose,
                (None, Some(n)) => Framing::Length(n),
                (None, None) => Framing::UntilClose,
            }
        },
    );
    if head.framing == Some(Framing::UntilClose) {
        head.close = true;
    }
    Ok(true)
}

/// Writes the client's response head for the upstream's `resp` (parsed
/// from `bytes`): hop-by-hop, `x-cohort-*` and `x-request-id` headers are
/// replaced by the proxy's own, and the body is framed by length when the
/// upstream gave one, else chunked.
pub fn write_client_head(
    out: &mut Vec<u8>,
    bytes: &[u8],
    resp: &ResponseHead,
    stamps_: Option<StampBytes<'_>>,
    request_id: &[u8],
    date: impl FnOnce() -> [u8; 29],
    close: bool,
) {
    let framing = resp.framing.unwrap_or(Framing::Empty);
    let mut dated = false;
    status_line(out, resp.status, &bytes[resp.reason.clone()]);
    // Names the upstream listed in Connection concern its hop only.
    let listed: Vec<&[u8]> = match resp.lists_headers {
        false => Vec::new(),
        true => resp
            .fields
            .iter()
            .filter(|f| f.kind == Name::Connection)
            .flat_map(|f| bytes[f.value.clone()].split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect(),
    };
    for f in &resp.fields {
        let (name, value) = (&bytes[f.name.clone()], &bytes[f.value.clone()]);
        let keep = match f.kind {
            // A HEAD or 304 answer keeps the length of the body it stands for.
            Name::ContentLength => framing == Framing::Empty,
            Name::Stamp | Name::XRequestId => false,
            Name::Date => {
                dated = true;
                true
            }
            kind => !kind.hop_by_hop(),
        };
        if keep && !listed.iter().any(|l| eq(l, name)) {
            header(out, name, value);
        }
    }
    // A response needs a date (RFC 9110 §6.6.1); hyper's path adds one too.
    if !dated {
        header(out, b"date", &date());
    }
    if let Some(s) = stamps_ {
        stamps(out, s);
    }
    header(out, b"x-request-id", request_id);
    match framing {
        Framing::Length(n) => content_length(out, n),
        Framing::Chunked | Framing::UntilClose => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
        Framing::Empty => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    let canonical = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    out.extend_from_slice(canonical.map_or(reason, str::as_bytes));
    out.extend_from_slice(b"\r\n");
}

/// Writes a whole response the proxy makes itself (an error, as JSON).
pub fn write_own_response(
    out: &mut Vec<u8>,
    status: http::StatusCode,
    body: &[u8],
    stamps_: Option<StampBytes<'_>>,
    request_id: &[u8],
    date: &[u8],
    close: bool,
) {
    status_line(out, status.as_u16(), b"");
    out.extend_from_slice(b"content-type: application/json\r\n");
    if let Some(s) = stamps_ {
        stamps(out, s);
    }
    header(out, b"x-request-id", request_id);
    content_length(out, body.len() as u64);
    header(out, b"date", date);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod random_tests;
