//! HTTP/1.1 message heads for the lean path ([`super::lean`]): which
//! requests it may serve, how a head is rewritten for the next hop, and
//! where a response body ends. Pure functions over bytes, unit-tested here;
//! the sockets are in `lean`.
//!
//! The lean path takes only the plain case — HTTP/1.1, origin-form target,
//! a `Content-Length` body small enough to buffer, no `Expect`, `Upgrade`
//! or `Transfer-Encoding` — and [`parse_request`] says [`Parsed::Hand`] for
//! anything else, before a byte is consumed, so hyper serves the rest of
//! that connection with its full HTTP/1 machinery (and its error answers).

use std::mem::MaybeUninit;
use std::ops::Range;

use http::HeaderName;

use super::forward::{HeaderLookup, Stamps};

/// The most a request or response head may take.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers a head may carry on the lean path.
pub const MAX_HEADERS: usize = 100;
/// The biggest request body the lean path buffers; larger ones stream
/// through hyper.
pub const MAX_LEAN_BODY: usize = 256 * 1024;

/// One header of a head, as offsets into the bytes it was parsed from.
#[derive(Clone, Debug)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// A parsed request head, as offsets into the connection's buffer.
#[derive(Default, Debug)]
pub struct RequestHead {
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub fields: Vec<Field>,
    pub head_len: usize,
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
}

/// Parses the request head at the front of `buf` into `head`.
pub fn parse_request(buf: &[u8], head: &mut RequestHead) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        Ok(httparse::Status::Partial) => return Parsed::Hand("head too large"),
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
            hosts += 1;
        }
        head.fields.push(Field {
            name: offsets(buf, name),
            value: offsets(buf, h.value),
        });
    }
    if hosts > 1 {
        return Parsed::Hand("several hosts");
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

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn parse_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, &d| n * 10 + (d - b'0') as usize))
}

/// A request head together with the bytes it indexes.
pub struct Request<'a> {
    pub bytes: &'a [u8],
    pub head: &'a RequestHead,
}

impl Request<'_> {
    pub fn method(&self) -> &[u8] {
        &self.bytes[self.head.method.clone()]
    }
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
    pub fn body(&self) -> &[u8] {
        let start = self.head.head_len;
        &self.bytes[start..start + self.head.body_len]
    }
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.head
            .fields
            .iter()
            .map(|f| (&self.bytes[f.name.clone()], &self.bytes[f.value.clone()]))
    }
}

impl HeaderLookup for Request<'_> {
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str().as_bytes();
        self.fields().find(|(n, _)| eq(n, name)).map(|(_, v)| v)
    }
}

/// The header names the proxy treats specially.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Name {
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    Host,
    Date,
    /// Other headers that concern one hop only (RFC 9110 §7.6.1).
    HopByHop,
    /// `x-cohort-*`: only the proxy sets these.
    Stamp,
    XForwardedFor,
    XForwardedHost,
    XForwardedProto,
    XRequestId,
    Other,
}

/// Classifies a header name with one comparison in the usual case: the
/// length picks the candidates (this runs for every header of every
/// request and response).
fn classify(name: &[u8]) -> Name {
    let is = |n: &[u8]| eq(name, n);
    match name.len() {
        2 if is(b"te") => Name::HopByHop,
        4 if is(b"host") => Name::Host,
        4 if is(b"date") => Name::Date,
        6 if is(b"expect") => Name::Expect,
        7 if is(b"upgrade") => Name::Upgrade,
        7 if is(b"trailer") => Name::HopByHop,
        10 if is(b"connection") => Name::Connection,
        10 if is(b"keep-alive") => Name::HopByHop,
        12 if is(b"x-request-id") => Name::XRequestId,
        14 if is(b"content-length") => Name::ContentLength,
        15 if is(b"x-forwarded-for") => Name::XForwardedFor,
        16 if is(b"x-forwarded-host") => Name::XForwardedHost,
        16 if is(b"proxy-connection") => Name::HopByHop,
        17 if is(b"x-forwarded-proto") => Name::XForwardedProto,
        17 if is(b"transfer-encoding") => Name::TransferEncoding,
        18 | 19 if is(b"proxy-authenticate") || is(b"proxy-authorization") => Name::HopByHop,
        n if n > 9 && eq(&name[..9], b"x-cohort-") => Name::Stamp,
        _ => Name::Other,
    }
}

fn hop_by_hop(name: Name) -> bool {
    matches!(
        name,
        Name::HopByHop | Name::Connection | Name::TransferEncoding | Name::Upgrade
    )
}

/// What the proxy adds to a request on its way upstream.
pub struct Hop<'a> {
    pub authority: &'a str,
    pub stamps: Option<&'a Stamps>,
    pub request_id: &'a [u8],
    pub peer_ip: &'a [u8],
}

/// Writes `req`'s head for the upstream into `out`, rewritten as the
/// hyper path rewrites it: hop-by-hop and client `x-cohort-*` headers
/// dropped, `host` the upstream's, `x-forwarded-*` and the stamps set.
pub fn write_upstream_head(out: &mut Vec<u8>, req: &Request<'_>, hop: &Hop<'_>) {
    out.extend_from_slice(req.method());
    out.push(b' ');
    out.extend_from_slice(req.target());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(hop.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut forwarded_for: Option<&[u8]> = None;
    let mut has_length = false;
    for (name, value) in req.fields() {
        match classify(name) {
            Name::Host => header(out, b"x-forwarded-host", value),
            Name::XForwardedFor => forwarded_for = forwarded_for.or(Some(value)),
            Name::ContentLength => has_length = true,
            Name::Stamp | Name::XForwardedHost | Name::XForwardedProto | Name::XRequestId => {}
            kind if hop_by_hop(kind) => {}
            _ => header(out, name, value),
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

fn stamps(out: &mut Vec<u8>, s: &Stamps) {
    header(out, b"x-cohort-experiment", s.experiment.as_bytes());
    header(out, b"x-cohort-variant", s.variant.as_bytes());
    header(out, b"x-cohort-epoch", s.epoch.as_bytes());
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Framing {
    /// No body (a HEAD answer, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head, as offsets into the upstream read buffer.
#[derive(Default, Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: Range<usize>,
    pub fields: Vec<Field>,
    pub head_len: usize,
    pub framing: Option<Framing>,
    /// The upstream will close the connection after this response.
    pub close: bool,
    /// Its Connection header names other headers (to be dropped).
    pub lists_headers: bool,
}

/// A response head the upstream sent that the proxy cannot pass on.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BadResponse {
    #[error("malformed response head")]
    Malformed,
    #[error("response head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("conflicting content-length")]
    Length,
    #[error("a protocol switch the proxy never asked for")]
    Switch,
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
        });
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
    stamps_: Option<&Stamps>,
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
            .filter(|f| classify(&bytes[f.name.clone()]) == Name::Connection)
            .flat_map(|f| bytes[f.value.clone()].split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect(),
    };
    for f in &resp.fields {
        let (name, value) = (&bytes[f.name.clone()], &bytes[f.value.clone()]);
        let keep = match classify(name) {
            // A HEAD or 304 answer keeps the length of the body it stands for.
            Name::ContentLength => framing == Framing::Empty,
            Name::Stamp | Name::XRequestId => false,
            Name::Date => {
                dated = true;
                true
            }
            kind => !hop_by_hop(kind),
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
    stamps_: Option<&Stamps>,
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

/// Wraps `data` as one chunk of a chunked body.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Follows a chunked body as it passes through unchanged, to find where it
/// ends (so the upstream connection can be reused).
#[derive(Debug, Default)]
pub struct ChunkedScan {
    state: Chunk,
    data: u64,
    /// Where, in the bytes of the last `feed`, the trailer section began.
    trailers_at: Option<usize>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Chunk {
    /// Reading the hex size; the count of digits so far.
    #[default]
    Size,
    SizeDigits(u64, u8),
    /// Whitespace after the size, before `;` or the line end.
    SizeSpace(u64),
    /// A chunk extension, up to the line end.
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// The chunked framing was broken.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct BadChunk;

impl ChunkedScan {
    /// Consumes `data`; returns how many of its bytes belong to the body
    /// once the body has ended, else `None` (all of `data` belongs to it).
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, BadChunk> {
        self.trailers_at = None;
        let mut i = 0;
        while i < data.len() {
            if let Chunk::Data(left) = self.state {
                let take = left.min((data.len() - i) as u64);
                i += take as usize;
                self.data += take;
                self.state = if take == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - take)
                };
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match (self.state, b) {
                (Chunk::Size, b) => Chunk::SizeDigits(hex(b).ok_or(BadChunk)?, 1),
                (Chunk::SizeDigits(n, d), b) if hex(b).is_some() => {
                    if d >= 15 {
                        return Err(BadChunk);
                    }
                    Chunk::SizeDigits(n * 16 + hex(b).unwrap_or(0), d + 1)
                }
                (Chunk::SizeDigits(n, _) | Chunk::SizeSpace(n), b' ' | b'\t') => {
                    Chunk::SizeSpace(n)
                }
                (Chunk::SizeDigits(n, _) | Chunk::SizeSpace(n), b';') => Chunk::Extension(n),
                (Chunk::SizeDigits(n, _) | Chunk::SizeSpace(n), b'\r') => Chunk::SizeLf(n),
                (Chunk::Extension(n), b'\r') => Chunk::SizeLf(n),
                (Chunk::Extension(n), b) if b == b'\t' || b >= b' ' && b != 0x7f => {
                    Chunk::Extension(n)
                }
                (Chunk::SizeLf(0), b'\n') => {
                    self.trailers_at = Some(i);
                    Chunk::TrailerStart
                }
                (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size,
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::TrailerStart, b'\n') => return Err(BadChunk),
                (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::Trailer, b) if b != b'\n' => Chunk::Trailer,
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::EndLf, b'\n') => Chunk::Done,
                _ => return Err(BadChunk),
            };
            if self.state == Chunk::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

impl ChunkedScan {
    /// Payload bytes seen so far, framing excluded.
    pub fn data_bytes(&self) -> u64 {
        self.data
    }

    /// How many of the `fed` bytes of the last `feed` came before the
    /// trailer section: all if it has not begun, none if it had already.
    pub fn before_trailers(&self, fed: usize, was_in_trailers: bool) -> usize {
        match (was_in_trailers, self.trailers_at) {
            (true, _) => 0,
            (false, Some(at)) => at,
            (false, None) => fed,
        }
    }

    /// Whether the last chunk has been read (trailers, if any, follow).
    pub fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            Chunk::TrailerStart | Chunk::Trailer | Chunk::TrailerLf | Chunk::EndLf | Chunk::Done
        )
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(raw: &str) -> (Parsed, RequestHead) {
        let mut head = RequestHead::default();
        (parse_request(raw.as_bytes(), &mut head), head)
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
        assert_eq!(req.header(&http::header::HOST), Some(&b"a"[..]));

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
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "several hosts",
            ),
            ("GET /predict#x HTTP/1.1\r\n\r\n", "fragment in target"),
            (
                "POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
                "large body",
            ),
            ("GET /\x01 HTTP/1.1\r\n\r\n", "malformed head"),
        ] {
            assert_eq!(parse(raw).0, Parsed::Hand(why), "{raw:?}");
        }
        let huge = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&huge).0, Parsed::Hand("head too large"));
        // Equal repeated lengths are one length.
        let (p, h) = parse("POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab");
        assert_eq!((p, h.body_len), (Parsed::Lean, 2));
    }

    #[test]
    fn header_names_are_classified_whatever_their_case() {
        for (name, kind) in [
            ("TE", Name::HopByHop),
            ("Host", Name::Host),
            ("DATE", Name::Date),
            ("Transfer-Encoding", Name::TransferEncoding),
            ("Proxy-Authorization", Name::HopByHop),
            ("proxy-authenticate", Name::HopByHop),
            ("Proxy-Connection", Name::HopByHop),
            ("X-Cohort-Epoch", Name::Stamp),
            ("x-cohort-", Name::Other),
            ("X-Forwarded-Proto", Name::XForwardedProto),
            ("content-lengthy", Name::Other),
            ("x-user-id", Name::Other),
        ] {
            assert_eq!(classify(name.as_bytes()), kind, "{name}");
        }
    }

    fn stamps() -> Stamps {
        Stamps {
            experiment: HeaderValue::from_static("ranker"),
            variant: HeaderValue::from_static("new"),
            epoch: HeaderValue::from_static("2"),
        }
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
            stamps: Some(&s),
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
            Some(&s),
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
        let raw =
            "HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 10:00:00 GMT\r\ncontent-length: 0\r\n\r\n";
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
        let body =
            b"5\r\nhello\r\n1A ;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nNEXT";
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
        // The trailer section starts right after the last chunk's line.
        let mut s = ChunkedScan::default();
        assert_eq!(s.feed(&body[..end]), Ok(Some(end)));
        let last = end - "x-t: 1\r\n\r\n".len();
        assert_eq!(s.before_trailers(end, false), last);
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
}
