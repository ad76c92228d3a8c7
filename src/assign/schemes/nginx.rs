//! NGINX `split_clients`, as `ngx_http_split_clients_module.c` computes it:
//! - the string (here `key` with `${unit}` replaced by the unit) is hashed
//!   with `ngx_murmur_hash2` (MurmurHash2, seed 0);
//! - each line's percentage is parsed to hundredths (`ngx_atofp(.., 2)`),
//!   and its threshold is the running sum of `percent × 0xffffffff / 10000`
//!   computed **per line** with integer division (so thresholds are not
//!   `sum × 0xffffffff / 10000`);
//! - a hash goes to the first line with `hash < threshold`; a `*` line
//!   takes everything left; with no `*` and less than 100 % the rest gets
//!   no value.

/// The placeholder in `key` that the unit id replaces.
pub const UNIT: &str = "${unit}";

/// The string NGINX would hash for `unit`.
pub fn subject(key: &str, unit: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + unit.len());
    let mut rest = key;
    while let Some(i) = rest.find(UNIT) {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        out.extend_from_slice(unit);
        rest = &rest[i + UNIT.len()..];
    }
    out.extend_from_slice(rest.as_bytes());
    out
}

/// NGINX's hash of the split string.
pub fn hash(s: &[u8]) -> u32 {
    super::hashes::murmur2(s, 0)
}

/// A `split_clients` line: `Some(hundredths of a percent)` or `None` for `*`.
pub type Line = Option<u32>;

/// The thresholds NGINX computes for `lines` (0 for `*`), or `None` when the
/// percentages sum past 100 % (NGINX's "percent total is greater than 100%").
pub fn thresholds(lines: &[Line]) -> Option<Vec<u32>> {
    let mut sum: u32 = 0;
    let mut last: u32 = 0;
    let mut out = Vec::with_capacity(lines.len());
    for l in lines {
        sum = match l {
            Some(p) => sum + p,
            None => 10_000,
        };
        if sum > 10_000 {
            return None;
        }
        match l {
            Some(p) => {
                last = last.wrapping_add((u64::from(*p) * 0xffff_ffff / 10_000) as u32);
                out.push(last);
            }
            None => out.push(0),
        }
    }
    Some(out)
}

/// The line a hash selects.
pub fn choose(hash: u32, thresholds: &[u32]) -> Option<usize> {
    thresholds.iter().position(|&t| hash < t || t == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module's documentation (nginx.org ngx_http_split_clients_module):
    /// for `0.5% .one; 2.0% .two; * ""` hash values 0..=21474835 give .one,
    /// 21474836..=107374180 .two, 107374181..=4294967295 "".
    #[test]
    fn thresholds_match_the_documented_example() {
        let t = thresholds(&[Some(50), Some(200), None]).unwrap();
        assert_eq!(t, vec![21_474_836, 107_374_181, 0]);
        assert_eq!(choose(21_474_835, &t), Some(0));
        assert_eq!(choose(21_474_836, &t), Some(1));
        assert_eq!(choose(107_374_180, &t), Some(1));
        assert_eq!(choose(107_374_181, &t), Some(2));
        assert_eq!(choose(u32::MAX, &t), Some(2));
        assert!(thresholds(&[Some(6000), Some(5000)]).is_none());
    }

    /// nginx/nginx-tests `split_clients.t`: `split_clients $connection
    /// $variant { 51.2% .one; 10% .two; * .three; }` over 20 requests, each
    /// on a new connection (numbers 1..=20), expects "first: 12, second: 2,
    /// third: 6".
    #[test]
    fn distribution_matches_nginx_tests() {
        let t = thresholds(&[Some(5120), Some(1000), None]).unwrap();
        let mut counts = [0; 3];
        for c in 1..=20 {
            counts[choose(hash(c.to_string().as_bytes()), &t).unwrap()] += 1;
        }
        assert_eq!(counts, [12, 2, 6]);
    }

    #[test]
    fn subject_replaces_every_placeholder() {
        assert_eq!(subject("${unit}AAA", b"1.2.3.4"), b"1.2.3.4AAA");
        assert_eq!(subject("a${unit}b${unit}", b"x"), b"axbx");
        assert_eq!(subject("fixed", b"x"), b"fixed");
    }
}
