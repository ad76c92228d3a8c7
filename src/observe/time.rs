//! RFC 3339 timestamps without a date-time dependency: the access log needs
//! exactly one format (UTC, milliseconds) and the civil-date conversion is a
//! few lines of well-known arithmetic.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-12-01T09:03:25.123Z`
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let ms = d.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Appends [`rfc3339_millis`] of `t` to `out`, formatting the date and time
/// of day once per second per thread: the access log asks for every request.
pub(crate) fn write_rfc3339_millis(t: SystemTime, out: &mut Vec<u8>) {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, ms) = (d.as_secs(), d.subsec_millis());
    let (at, mut second) = LAST.try_with(Cell::get).unwrap_or((u64::MAX, [0; 19]));
    if at != secs {
        let full = rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_secs(secs));
        second.copy_from_slice(&full.as_bytes()[..19]);
        let _ = LAST.try_with(|last| last.set((secs, second)));
    }
    out.extend_from_slice(&second);
    out.push(b'.');
    out.extend_from_slice(&three_digits(ms));
    out.push(b'Z');
}

/// `n` (below 1000) as three decimal digits, zero-padded.
pub(crate) fn three_digits(n: u32) -> [u8; 3] {
    [
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

/// The IMF-fixdate of now (`Tue, 01 Dec 2026 11:49:43 GMT`, always 29
/// bytes) for a `date` header, formatted once per second per thread.
pub(crate) fn cached_http_date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    LAST.with(|last| {
        let (at, date) = last.get();
        if at == secs {
            return date;
        }
        let mut fresh = [0u8; 29];
        let text = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
        fresh.copy_from_slice(&text.as_bytes()[..29]);
        last.set((secs, fresh));
        fresh
    })
}

pub(crate) fn now_rfc3339() -> String {
    rfc3339_millis(SystemTime::now())
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_cached_form_equals_the_plain_one() {
        for ms in [
            0u64,
            7,
            999,
            1000,
            86_399_999,
            1_795_000_000_123,
            1_795_000_000_999,
            1_795_000_001_000,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            let mut out = Vec::new();
            write_rfc3339_millis(t, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), rfc3339_millis(t), "{ms}");
        }
    }

    #[test]
    fn the_http_date_is_now_in_imf_fixdate() {
        let date = cached_http_date();
        let parsed = httpdate::parse_http_date(std::str::from_utf8(&date).unwrap()).unwrap();
        let skew = SystemTime::now().duration_since(parsed).unwrap();
        assert!(skew < Duration::from_secs(2), "{skew:?}");
        assert!(date.ends_with(b" GMT"));
    }

    #[test]
    fn formats_known_instants() {
        let at =
            |s: u64, ms: u64| rfc3339_millis(UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_795_000_000, 999), "2026-11-18T11:06:40.999Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000Z");
    }
}
