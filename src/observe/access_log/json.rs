//! Renders an [`AccessRecord`] as one JSON object (the log's line format,
//! documented with the schema in the docs).

use std::time::Duration;

use http::{Method, Uri};

use super::record::{AccessRecord, LoggedUnit, SCHEMA_VERSION};
use crate::error::Cause;
use crate::observe::time;

/// A member's key as written after the object's first member: `,"name":`,
/// one literal (one copy per member, not four).
macro_rules! k {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

impl AccessRecord {
    /// Appends the record as one JSON object (no newline). Written by hand
    /// rather than through serde: the log renders a line per request, and
    /// the fields are few and fixed. Header values that are not UTF-8 are
    /// logged lossily (U+FFFD), like every other string here.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // The first member opens the object; every later key is one
        // literal with its comma, quotes and colon (`k!`).
        let mut o = JsonObject::start(out);
        o.out.extend_from_slice(b"{\"ts\":\"");
        time::write_rfc3339_millis(self.at, o.out);
        o.out.push(b'"');
        o.uint(k!("schema"), u64::from(SCHEMA_VERSION));
        o.bytes(k!("request_id"), self.request_id.as_bytes());
        o.opt_str(k!("method"), self.method.as_ref().map(Method::as_str));
        o.opt_str(k!("path"), self.path.as_ref().map(Uri::path));
        o.str(k!("protocol"), self.protocol);
        o.uint(k!("status"), u64::from(self.status));
        o.opt_str(k!("experiment"), self.experiment);
        match &self.unit {
            Some(LoggedUnit::Raw(v)) => o.bytes(k!("unit"), v.as_bytes()),
            Some(LoggedUnit::Hashed(h)) => o.str(k!("unit"), h),
            None => o.null(k!("unit")),
        }
        o.opt_str(k!("variant"), self.variant);
        o.uint(k!("epoch"), u64::from(self.epoch));
        o.uint(k!("current_epoch"), u64::from(self.current_epoch));
        o.bool(k!("first_exposure"), self.first_exposure);
        match self.share {
            Some(s) => o.float(k!("share"), s),
            None => o.null(k!("share")),
        }
        o.bool(k!("in_experiment"), self.in_experiment);
        o.bool(k!("forced"), self.forced);
        o.bool(k!("paused"), self.paused);
        if self.store_degraded {
            // Only on degraded lines: every other line keeps its shape.
            o.bool(k!("store_degraded"), true);
        }
        o.opt_str(k!("reason"), self.reason);
        match self.bucket {
            Some(b) => o.uint(k!("bucket"), u64::from(b)),
            None => o.null(k!("bucket")),
        }
        o.opt_str(k!("upstream"), self.upstream);
        if self.fallback {
            o.bool(k!("fallback"), true);
        }
        match self.upstream_time {
            Some(d) => o.millis(k!("upstream_ms"), d),
            None => o.null(k!("upstream_ms")),
        }
        o.millis(k!("total_ms"), self.total_time);
        o.uint(k!("bytes_in"), self.bytes_in);
        o.uint(k!("bytes_out"), self.bytes_out);
        o.str(k!("config_version"), self.config_version);
        o.opt_str(k!("error"), self.error.map(Cause::as_str));
        o.end();
    }
}

/// Bytes reserved before a line is written: more than most lines take.
const LINE_HINT: usize = 640;

/// Writes one flat JSON object's members in order; its first member is
/// written by the caller ([`AccessRecord::write_json`]'s `ts`), every
/// later one through these methods with a [`k!`] key.
struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> JsonObject<'a> {
    fn start(out: &'a mut Vec<u8>) -> JsonObject<'a> {
        // One growth for the whole line (a typical one is ~450 bytes), not
        // one per member.
        out.reserve(LINE_HINT);
        JsonObject { out }
    }

    #[inline]
    fn key(&mut self, k: &str) {
        self.out.extend_from_slice(k.as_bytes());
    }

    #[inline]
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        escaped(self.out, v);
    }

    /// A header value: printable ASCII without `"` or `\\` (nearly every
    /// id) is copied as it is after one scan; anything else is escaped
    /// after a lossy UTF-8 read.
    #[inline]
    fn bytes(&mut self, k: &str, v: &[u8]) {
        self.key(k);
        if plain(v, true) {
            self.out.push(b'"');
            self.out.extend_from_slice(v);
            self.out.push(b'"');
        } else {
            escaped(self.out, &String::from_utf8_lossy(v));
        }
    }

    #[inline]
    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    #[inline]
    fn null(&mut self, k: &str) {
        self.key(k);
        self.out.extend_from_slice(b"null");
    }

    #[inline]
    fn uint(&mut self, k: &str, v: u64) {
        self.key(k);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    /// A finite float as Rust's shortest round-trip decimal (`0.5`, `1`).
    fn float(&mut self, k: &str, v: f64) {
        use std::io::Write;
        self.key(k);
        if v.is_finite() {
            write!(self.out, "{v}").expect("writing to a Vec");
        } else {
            self.out.extend_from_slice(b"null");
        }
    }

    #[inline]
    fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
    }

    /// `d` in milliseconds with microsecond precision, as the shortest
    /// decimal with at least one fraction digit (`0.075`, `2.0`): what
    /// serde_json prints for the f64 `micros / 1000.0`.
    #[inline]
    fn millis(&mut self, k: &str, d: Duration) {
        self.key(k);
        let micros = d.as_micros();
        let mut int = itoa::Buffer::new();
        self.out
            .extend_from_slice(int.format(micros / 1000).as_bytes());
        let frac = (micros % 1000) as u32;
        let keep = match frac {
            f if f % 100 == 0 => 1,
            f if f % 10 == 0 => 2,
            _ => 3,
        };
        self.out.push(b'.');
        self.out
            .extend_from_slice(&time::three_digits(frac)[..keep]);
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

/// Whether `v` holds no byte a JSON string must escape (a control
/// character, `"`, `\\`) and, with `ascii`, none over 0x7f. Eight bytes
/// at a time (the has-less-than and has-zero-byte word tests of Sean
/// Anderson's "Bit Twiddling Hacks", exact as yes/no answers), since
/// every string of every access-log line goes through it.
fn plain(v: &[u8], ascii: bool) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let high = if ascii { HI } else { 0 };
    let mut words = v.chunks_exact(8);
    let mut dirty = 0;
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("eight bytes"));
        // A byte under 0x20 | a `"` | a `\\` | (with `ascii`) a high bit.
        dirty |= (x.wrapping_sub(LO * 0x20) & !x & HI)
            | zero_byte(x ^ (LO * u64::from(b'"')))
            | zero_byte(x ^ (LO * u64::from(b'\\')))
            | (x & high);
    }
    dirty == 0
        && words
            .remainder()
            .iter()
            .all(|&b| b >= 0x20 && b != b'"' && b != b'\\' && !(ascii && b > 0x7f))
}

/// `s` as a JSON string: quotes, backslashes and control characters
/// escaped, everything else (non-ASCII included) copied as is.
fn escaped(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Nearly every value (names, ids, paths) needs no escape: one scan,
    // then one copy.
    if plain(bytes, false) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut clean = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        clean = i + 1;
    }
    out.extend_from_slice(&bytes[clean..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::access_log::sample_record as record;
    use http::HeaderValue;
    use serde_json::{json, Value};

    use std::time::SystemTime;

    fn line(r: &AccessRecord) -> String {
        let mut out = Vec::new();
        r.write_json(&mut out);
        String::from_utf8(out).expect("the line is UTF-8")
    }

    #[test]
    fn a_record_is_one_json_object_with_every_field_in_order() {
        let mut r = record();
        r.unit = Some(LoggedUnit::Raw(HeaderValue::from_static("user-7")));
        let text = line(&r);
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            v,
            json!({
                "ts": "2026-12-01T13:33:19.075Z", "schema": 1, "request_id": "req-1",
                "method": "POST", "path": "/predict", "protocol": "http/1.1", "status": 200,
                "experiment": "ranker", "unit": "user-7", "variant": "new",
                "epoch": 2, "current_epoch": 3, "first_exposure": true,
                "share": 0.5, "in_experiment": true, "forced": false, "paused": false,
                "reason": "sticky", "bucket": 4321, "upstream": "127.0.0.1:9002",
                "upstream_ms": 0.075, "total_ms": 2.0, "bytes_in": 64,
                "bytes_out": 1024, "config_version": "abc123", "error": null
            })
        );
        let keys: Vec<&str> = text
            .split("\":")
            .map(|k| k.rsplit('"').next().unwrap())
            .collect();
        assert_eq!(&keys[..3], ["ts", "schema", "request_id"]);
        assert!(text.ends_with("\"error\":null}"), "{text}");
    }

    /// docs/access-log.md's field table names exactly the keys a line
    /// holds, in both directions: a field added, renamed or dropped here
    /// without the table (or the other way round) fails.
    #[test]
    fn the_documented_field_table_matches_the_keys_written() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/access-log.md"))
                .expect("docs/access-log.md");
        let table = doc
            .split_once("| field | type | meaning |")
            .expect("the field table")
            .1;
        let documented: std::collections::BTreeSet<&str> = table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.strip_prefix("| `")?.split_once('`').map(|(name, _)| name))
            .collect();
        // Every optional field set, so the line holds every key there is.
        let mut r = record();
        r.store_degraded = true;
        r.fallback = true;
        let v: Value = serde_json::from_str(&line(&r)).expect("valid JSON");
        let written: std::collections::BTreeSet<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert!(!written.is_empty());
        assert_eq!(documented, written);
    }

    #[test]
    fn store_degraded_appears_only_on_degraded_lines() {
        let mut r = record();
        assert!(!line(&r).contains("store_degraded"));
        r.store_degraded = true;
        let v: Value = serde_json::from_str(&line(&r)).expect("valid JSON");
        assert_eq!(v["store_degraded"], true);
    }

    #[test]
    fn fallback_is_written_only_when_true_after_upstream() {
        let mut r = record();
        assert!(!line(&r).contains("fallback"));
        r.fallback = true;
        let text = line(&r);
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["fallback"], true);
        assert!(
            text.contains("\"upstream\":\"127.0.0.1:9002\",\"fallback\":true,"),
            "{text}"
        );
    }

    #[test]
    fn absent_fields_are_null() {
        let r = AccessRecord::new(
            SystemTime::UNIX_EPOCH,
            HeaderValue::from_static("r"),
            Method::GET,
            Uri::from_static("/"),
            "v",
        );
        let v: Value = serde_json::from_str(&line(&r)).expect("valid JSON");
        for k in [
            "experiment",
            "unit",
            "variant",
            "reason",
            "bucket",
            "share",
            "upstream",
            "upstream_ms",
            "error",
        ] {
            assert_eq!(v[k], Value::Null, "{k}");
        }
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn strings_are_escaped_and_bytes_that_are_not_utf8_are_replaced() {
        let mut r = record();
        let unit = HeaderValue::from_bytes(b"a\"b\\c\td\xffz").expect("obs-text is allowed");
        r.unit = Some(LoggedUnit::Raw(unit));
        r.experiment = Some("line\nbreak\r\u{1}\u{8}\u{c}é");
        let text = line(&r);
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["unit"], "a\"b\\c\td\u{fffd}z");
        assert_eq!(v["experiment"], "line\nbreak\r\u{1}\u{8}\u{c}é");
        assert!(
            text.contains(r#""experiment":"line\nbreak\r\u0001\b\fé""#),
            "{text}"
        );
    }

    #[test]
    fn header_values_copied_plain_read_as_the_lossy_escaped_value_would() {
        // Every byte at every place of a word and of the tail after the
        // last whole word: the fast path (plain ASCII copied as is) and the
        // escaping path agree on what is read.
        for b in 0..=255u8 {
            for at in 0..19 {
                let mut v = *b"abcdefghijklmnopqrs";
                v[at] = b;
                let mut out = Vec::new();
                JsonObject::start(&mut out).bytes(",\"v\":", &v);
                let text = String::from_utf8(out).expect("UTF-8");
                let read: Value =
                    serde_json::from_str(&format!("{{{}}}", &text[1..])).expect("valid JSON");
                assert_eq!(
                    read["v"],
                    String::from_utf8_lossy(&v).as_ref(),
                    "byte {b:#x} at {at}"
                );
                let naive = |ascii: bool| {
                    v.iter()
                        .all(|&c| c >= 0x20 && c != b'"' && c != b'\\' && !(ascii && c > 0x7f))
                };
                assert_eq!(plain(&v, true), naive(true), "byte {b:#x} at {at}");
                assert_eq!(plain(&v, false), naive(false), "byte {b:#x} at {at}");
            }
        }
    }

    #[test]
    fn milliseconds_print_as_serde_json_prints_the_same_f64() {
        for micros in [
            0u64,
            1,
            10,
            75,
            100,
            1500,
            2000,
            12_340,
            999_999,
            123_456_789,
        ] {
            let ms = micros as f64 / 1000.0;
            let mut out = Vec::new();
            JsonObject::start(&mut out).millis(",\"m\":", Duration::from_micros(micros));
            let text = String::from_utf8(out).unwrap();
            assert_eq!(
                text,
                format!(",\"m\":{}", serde_json::to_string(&ms).unwrap()),
                "{micros} µs"
            );
        }
    }
}
