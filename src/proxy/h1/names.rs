//! Header names and values the proxy treats specially, as pure byte rules:
//! which headers concern one hop only, which the proxy owns, which a
//! request drops on its way upstream, and which Host and Transfer-Encoding
//! values it accepts. The single definition of that policy: the lean
//! path's writers ([`super`]) and hyper's path (through
//! [`crate::proxy::core`]) both apply it.

/// The header names the proxy treats specially.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Name {
    /// `content-length`.
    ContentLength,
    /// `transfer-encoding`.
    TransferEncoding,
    /// `connection`.
    Connection,
    /// `upgrade`.
    Upgrade,
    /// `expect`.
    Expect,
    /// `host`.
    Host,
    /// `date`.
    Date,
    /// Other headers that concern one hop only (RFC 9110 §7.6.1).
    HopByHop,
    /// `x-cohort-*`: only the proxy sets these.
    Stamp,
    /// `x-forwarded-for`.
    XForwardedFor,
    /// `x-forwarded-host`.
    XForwardedHost,
    /// `x-forwarded-proto`.
    XForwardedProto,
    /// `x-request-id`.
    XRequestId,
    /// Any other header: passed on unchanged.
    Other,
}

pub(crate) fn eq(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Classifies a header name with one comparison in the usual case: the
/// length picks the candidates (this runs for every header of every
/// request and response).
pub fn classify(name: &[u8]) -> Name {
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

impl Name {
    /// Connection-level headers are meaningful for one hop only (RFC 9110
    /// §7.6.1): never forwarded in either direction.
    pub fn hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::HopByHop | Name::Connection | Name::TransferEncoding | Name::Upgrade
        )
    }
}

/// Whether `name` is a hop-by-hop header.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    classify(name).hop_by_hop()
}

/// Whether `name` is an `x-cohort-*` stamp.
pub fn is_stamp(name: &[u8]) -> bool {
    classify(name) == Name::Stamp
}

/// What becomes of a client's request header on its way upstream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Forward {
    /// Passed on as it is.
    Keep,
    /// Not passed on (hop-by-hop, a stamp, or a look-alike of one).
    Drop,
    /// `host`: the upstream's replaces it; the client's goes on as
    /// `x-forwarded-host`.
    Host,
    /// `x-forwarded-for`: the client's IP is appended.
    ForwardedFor,
    /// `content-length`: re-stated by the proxy from the body it sends.
    Length,
}

/// The request rewrite's rule for one header name. Dropped: hop-by-hop
/// headers, every header the proxy itself sets (stamps, `x-forwarded-*`,
/// `x-request-id`), and underscore look-alikes of those ([`lookalike`]).
pub fn forward_rule(name: &[u8]) -> Forward {
    forward_rule_of(classify(name), name)
}

/// [`forward_rule`] for a name already classified as `kind`.
pub fn forward_rule_of(kind: Name, name: &[u8]) -> Forward {
    match kind {
        Name::Host => Forward::Host,
        Name::XForwardedFor => Forward::ForwardedFor,
        Name::ContentLength => Forward::Length,
        Name::Stamp | Name::XForwardedHost | Name::XForwardedProto | Name::XRequestId => {
            Forward::Drop
        }
        kind if kind.hop_by_hop() => Forward::Drop,
        Name::Other if lookalike(name) => Forward::Drop,
        _ => Forward::Keep,
    }
}

/// Whether `name` holds `_` and, read with `-` for `_`, names a header the
/// proxy treats specially (`Transfer_Encoding`, `Content_Length`,
/// `X_Cohort_Variant`, `X_Forwarded_For`...). CGI-style backends fold `_`
/// and `-` together, so such a header could frame or stamp the request a
/// second way behind the proxy's back: it is dropped, as NGINX drops every
/// underscored name by default. Other underscored names (`x_user_id`)
/// pass unchanged — they are valid tokens and may be a unit header.
pub fn lookalike(name: &[u8]) -> bool {
    if !name.contains(&b'_') {
        return false;
    }
    let mut buf = [0u8; 32];
    let Some(b) = buf.get_mut(..name.len()) else {
        // Longer than any special name but a stamp.
        return dashed_prefix(name);
    };
    for (d, &s) in b.iter_mut().zip(name) {
        *d = if s == b'_' { b'-' } else { s };
    }
    classify(b) != Name::Other
}

/// A long name starting with an underscored `x-cohort-`.
fn dashed_prefix(name: &[u8]) -> bool {
    name.len() > 9
        && name[..9]
            .iter()
            .zip(b"x-cohort-")
            .all(|(&a, &b)| a.eq_ignore_ascii_case(&b) || (a == b'_' && b == b'-'))
}

/// Whether a Host value is `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC
/// 3986 §3.2.2): no whitespace, `/`, `?`, `#` or `@`, brackets only
/// around an IP literal, and a port of digits only (`t:abc` is refused).
/// Empty is allowed (a target without authority).
pub fn valid_host(v: &[u8]) -> bool {
    if v.first() != Some(&b'[') {
        // The usual name or IPv4 address, in one pass: name bytes up to
        // the first `:`, digits after it, no second `:`.
        let mut in_port = false;
        return v.iter().all(|&b| match b {
            b':' => !std::mem::replace(&mut in_port, true),
            _ if in_port => b.is_ascii_digit(),
            _ => HOST_BYTE[usize::from(b)],
        });
    }
    let (host, rest) = match v.first() {
        Some(b'[') => match v.iter().position(|&b| b == b']') {
            Some(end) => v.split_at(end + 1),
            None => return false,
        },
        _ => v.split_at(v.iter().position(|&b| b == b':').unwrap_or(v.len())),
    };
    let port = match rest.split_first() {
        None => &[][..],
        Some((b':', port)) => port,
        Some(_) => return false,
    };
    let literal = host.first() == Some(&b'[');
    port.iter().all(u8::is_ascii_digit)
        && host.iter().enumerate().all(|(i, &b)| {
            HOST_BYTE[usize::from(b)]
                // An IP literal: `[` first, `]` last, `:` between.
                || (literal && (b == b':' || (b == b'[' && i == 0) || (b == b']' && i == host.len() - 1)))
        })
}

/// The bytes a reg-name or IP address may hold (RFC 3986 §3.2.2:
/// unreserved, sub-delims and `%` of a pct-encoding), as a table: a Host
/// is checked on every request.
static HOST_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    t
};

/// Whether a Transfer-Encoding value names only codings the proxy
/// understands: `chunked`. Any other (`gzip, chunked`) is answered 501
/// (RFC 9112 §6.1) instead of being silently dropped on the way upstream.
pub fn codings_supported(v: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .all(|c| c.is_empty() || eq(c, b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn underscore_lookalikes_of_special_headers_are_dropped_and_others_kept() {
        for name in [
            "Transfer_Encoding",
            "content_length",
            "X_Cohort_Variant",
            "x_forwarded_for",
            "x_request_id",
            "Host_".trim_end_matches('_'),
        ] {
            let expect = if name.contains('_') {
                Forward::Drop
            } else {
                Forward::Host
            };
            assert_eq!(forward_rule(name.as_bytes()), expect, "{name}");
        }
        for name in [
            "x_user_id",
            "my_header",
            "a_very_long_name_that_is_over_32_bytes",
        ] {
            assert_eq!(forward_rule(name.as_bytes()), Forward::Keep, "{name}");
        }
        assert_eq!(
            forward_rule(b"x_cohort_a_very_long_stamp_name_over_32"),
            Forward::Drop
        );
    }

    #[test]
    fn host_values_and_codings_follow_rfc_9112() {
        for ok in [
            "a",
            "a.b:80",
            "[::1]:8080",
            "[::1]",
            "",
            "xn--bcher-kva.example",
            "a:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "a b/c", "a/b", "a@b", "a?b", "a#b", "a\tb", "t:abc", "t:80:1", "t:8o", "[::1",
            "[::1]x", "a]b", "a[b", "::1",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
        assert!(codings_supported(b"chunked"));
        assert!(codings_supported(b"Chunked"));
        assert!(!codings_supported(b"gzip, chunked"));
        assert!(!codings_supported(b"identity"));
    }
}
