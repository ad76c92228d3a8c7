//! A targeted scanner for one access-log line: it reads the fields the
//! report needs, borrowing strings from the line (copying only a string
//! with escapes), and steps over the rest without building anything. A
//! general JSON parser does far more work per line than `cohort report`'s
//! budget (1M lines/s on one core) allows.

use std::borrow::Cow;

/// The fields of one line that the report reads. Absent and null are the
/// same (`None`).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Line<'a> {
    pub(crate) ts: Option<Cow<'a, str>>,
    pub(crate) status: u64,
    pub(crate) experiment: Option<Cow<'a, str>>,
    pub(crate) unit: Option<Cow<'a, str>>,
    pub(crate) variant: Option<Cow<'a, str>>,
    /// `None` when the field is missing (a line without its stamps).
    pub(crate) epoch: Option<u32>,
    pub(crate) first_exposure: bool,
    pub(crate) share: Option<f64>,
    pub(crate) reason: Option<Cow<'a, str>>,
    /// The cause code, `None` on success.
    pub(crate) error: Option<Cow<'a, str>>,
    /// `total_ms` in microseconds.
    pub(crate) total_us: Option<u64>,
}

/// Why a line was not read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

/// Reads `line` (one JSON object, surrounding whitespace allowed).
pub(crate) fn scan(line: &[u8]) -> Result<Line<'_>, Malformed> {
    let mut s = Scanner { b: line, i: 0 };
    let mut out = Line::default();
    s.ws();
    s.expect(b'{')?;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
        return s.end(out);
    }
    loop {
        s.ws();
        let key = s.key()?;
        s.ws();
        s.expect(b':')?;
        s.ws();
        match key.as_ref() {
            b"ts" => out.ts = s.opt_string()?,
            b"status" => out.status = s.opt_uint()?.unwrap_or(0),
            b"experiment" => out.experiment = s.opt_string()?,
            b"unit" => out.unit = s.opt_string()?,
            b"variant" => out.variant = s.opt_string()?,
            b"epoch" => {
                out.epoch = Some(
                    s.opt_uint()?
                        .map_or(0, |e| u32::try_from(e).unwrap_or(u32::MAX)),
                )
            }
            b"first_exposure" => out.first_exposure = s.bool()?,
            b"share" => out.share = s.opt_float()?,
            b"reason" => out.reason = s.opt_string()?,
            b"error" => out.error = s.opt_string()?,
            b"total_ms" => out.total_us = s.opt_millis()?,
            _ => s.skip_value()?,
        }
        s.ws();
        match s.next() {
            Some(b',') => continue,
            Some(b'}') => return s.end(out),
            _ => return Err(Malformed),
        }
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), Malformed> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn end<T>(&mut self, v: T) -> Result<T, Malformed> {
        self.ws();
        if self.i == self.b.len() {
            Ok(v)
        } else {
            Err(Malformed)
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Malformed> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    /// `null`, or `f` of the value.
    fn nullable<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Malformed>,
    ) -> Result<Option<T>, Malformed> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            Ok(None)
        } else {
            f(self).map(Some)
        }
    }

    fn opt_string(&mut self) -> Result<Option<Cow<'a, str>>, Malformed> {
        self.nullable(Self::string)
    }

    fn opt_uint(&mut self) -> Result<Option<u64>, Malformed> {
        self.nullable(Self::uint)
    }

    fn opt_float(&mut self) -> Result<Option<f64>, Malformed> {
        self.nullable(|s| {
            let n = s.number()?;
            n.parse::<f64>().map_err(|_| Malformed)
        })
    }

    fn opt_millis(&mut self) -> Result<Option<u64>, Malformed> {
        self.nullable(Self::millis)
    }

    fn bool(&mut self) -> Result<bool, Malformed> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            Some(b'n') => self.literal(b"null").map(|()| false),
            _ => Err(Malformed),
        }
    }

    fn uint(&mut self) -> Result<u64, Malformed> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .ok_or(Malformed)?;
            self.i += 1;
        }
        if self.i == start || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return Err(Malformed);
        }
        Ok(v)
    }

    /// A number's text, as JSON spells it.
    fn number(&mut self) -> Result<&'a str, Malformed> {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.i += 1;
        }
        if self.i == start {
            return Err(Malformed);
        }
        std::str::from_utf8(&self.b[start..self.i]).map_err(|_| Malformed)
    }

    /// Milliseconds with up to µs precision (`12.345`) as microseconds;
    /// any other spelling of a number goes through f64.
    fn millis(&mut self) -> Result<u64, Malformed> {
        let start = self.i;
        let text = self.number()?;
        let fast = (|| {
            let (int, frac) = text.split_once('.').unwrap_or((text, ""));
            if int.is_empty() || frac.len() > 3 {
                return None;
            }
            let digits = |t: &str| t.bytes().all(|c| c.is_ascii_digit());
            if !digits(int) || !digits(frac) {
                return None;
            }
            let mut us: u64 = int.parse::<u64>().ok()?.checked_mul(1000)?;
            let mut scale = 100;
            for c in frac.bytes() {
                us += u64::from(c - b'0') * scale;
                scale /= 10;
            }
            Some(us)
        })();
        match fast {
            Some(us) => Ok(us),
            None => {
                let ms: f64 = self.b[start..self.i]
                    .iter()
                    .map(|&c| c as char)
                    .collect::<String>()
                    .parse()
                    .map_err(|_| Malformed)?;
                if ms.is_finite() && ms >= 0.0 {
                    Ok((ms * 1000.0).round() as u64)
                } else {
                    Err(Malformed)
                }
            }
        }
    }

    /// A member's name as bytes: borrowed, unless it holds escapes.
    fn key(&mut self) -> Result<Cow<'a, [u8]>, Malformed> {
        let start = self.i + 1;
        self.skip_string()?;
        let raw = &self.b[start..self.i - 1];
        if !raw.contains(&b'\\') {
            return Ok(Cow::Borrowed(raw));
        }
        self.i = start - 1;
        Ok(Cow::Owned(self.string()?.into_owned().into_bytes()))
    }

    /// Steps over a string without decoding it: only the quotes and
    /// escapes matter (the line is checked as far as the report reads it).
    fn skip_string(&mut self) -> Result<(), Malformed> {
        self.expect(b'"')?;
        loop {
            let at = memchr::memchr2(b'"', b'\\', &self.b[self.i..]).ok_or(Malformed)?;
            self.i += at + 1;
            if self.b[self.i - 1] == b'"' {
                return Ok(());
            }
            // An escape: step over the escaped byte.
            self.next().ok_or(Malformed)?;
        }
    }

    /// A string, borrowed unless it holds escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, Malformed> {
        self.expect(b'"')?;
        let start = self.i;
        let at = memchr::memchr2(b'"', b'\\', &self.b[start..]).ok_or(Malformed)?;
        self.i = start + at + 1;
        if self.b[self.i - 1] == b'"' {
            let raw = &self.b[start..self.i - 1];
            if raw.iter().any(|&c| c < 0x20) {
                return Err(Malformed);
            }
            return std::str::from_utf8(raw)
                .map(Cow::Borrowed)
                .map_err(|_| Malformed);
        }
        // Escapes: decode the whole string into an owned one.
        let mut out: Vec<u8> = self.b[start..self.i - 1].to_vec();
        self.i -= 1;
        loop {
            match self.next() {
                Some(b'"') => {
                    return String::from_utf8(out)
                        .map(Cow::Owned)
                        .map_err(|_| Malformed)
                }
                Some(b'\\') => {
                    let c = match self.next().ok_or(Malformed)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) {
                                self.literal(b"\\u")?;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(Malformed);
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or(Malformed)?
                        }
                        _ => return Err(Malformed),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                Some(0..=0x1f) | None => return Err(Malformed),
                Some(c) => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let h = self.b.get(self.i..self.i + 4).ok_or(Malformed)?;
        let h = std::str::from_utf8(h).map_err(|_| Malformed)?;
        let v = u32::from_str_radix(h, 16).map_err(|_| Malformed)?;
        self.i += 4;
        Ok(v)
    }

    /// Steps over any JSON value (fields the report does not read).
    fn skip_value(&mut self) -> Result<(), Malformed> {
        match self.peek().ok_or(Malformed)? {
            b'"' => self.skip_string(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek().ok_or(Malformed)? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => self.number().map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_proxy_line() {
        let l = br#"{"ts":"2026-12-01T10:12:21.828Z","schema":1,"request_id":"cf7cb443-3","method":"GET","path":"/predict","status":503,"experiment":"ranker-v2","unit":"al\"ice","variant":"control","epoch":1,"current_epoch":1,"first_exposure":true,"share":0.25,"in_experiment":true,"forced":false,"paused":true,"reason":"new","bucket":7889,"upstream":"127.0.0.1:18101","upstream_ms":0.794,"total_ms":12.5,"bytes_in":0,"bytes_out":65,"config_version":"6d5a48f3280d","error":null,"extra":{"a":[1,"}"]}}"#;
        let line = scan(l).unwrap();
        assert_eq!(line.ts.as_deref(), Some("2026-12-01T10:12:21.828Z"));
        assert_eq!(line.status, 503);
        assert_eq!(line.experiment.as_deref(), Some("ranker-v2"));
        assert_eq!(line.unit.as_deref(), Some("al\"ice"));
        assert_eq!(line.variant.as_deref(), Some("control"));
        assert_eq!(line.epoch, Some(1));
        assert!(line.first_exposure);
        assert_eq!(line.share, Some(0.25));
        assert_eq!(line.reason.as_deref(), Some("new"));
        assert_eq!(line.error, None);
        assert_eq!(line.total_us, Some(12_500));
    }

    #[test]
    fn nulls_and_absent_fields_are_none_and_millis_take_any_spelling() {
        let line =
            scan(br#" {"experiment":null,"unit":"\u00e9\ud83d\ude00","total_ms":1.5e1} "#).unwrap();
        assert_eq!(line.experiment, None);
        assert_eq!(line.epoch, None);
        assert_eq!(line.unit.as_deref(), Some("é😀"));
        assert_eq!(line.total_us, Some(15_000));
        assert_eq!(scan(b"{}").unwrap(), Line::default());
    }

    #[test]
    fn broken_lines_are_malformed() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"ts\":\"x}",
            b"{\"epoch\":1.5}",
            b"{\"a\":1} x",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{\"unit\":\"\\q\"}",
            b"{\"total_ms\":}",
        ] {
            assert_eq!(
                scan(bad),
                Err(Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
