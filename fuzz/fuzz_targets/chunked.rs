//! The chunked decoder: any bytes, fed whole and split in two. Never
//! panics, never reads past its input, and both feedings agree on the
//! payload and on where the body ends; the payload re-emitted canonically
//! decodes to itself.
#![no_main]

use cohort::proxy::h1::{write_chunk, ChunkedScan, LAST_CHUNK};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (split, raw) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s), rest),
        None => return,
    };
    let mut whole = Vec::new();
    let one = ChunkedScan::default().decode(raw, &mut |r| whole.extend_from_slice(r));
    if let Ok(Some(end)) = one {
        assert!(end <= raw.len());
    }
    let cut = split.min(raw.len());
    let mut scan = ChunkedScan::default();
    let mut parts = Vec::new();
    let two = match scan.decode(&raw[..cut], &mut |r| parts.extend_from_slice(r)) {
        Ok(Some(end)) => Ok(Some(end)),
        Ok(None) => scan
            .decode(&raw[cut..], &mut |r| parts.extend_from_slice(r))
            .map(|e| e.map(|e| cut + e)),
        Err(e) => Err(e),
    };
    assert_eq!(one, two);
    if one.is_ok() {
        assert_eq!(whole, parts);
    }
    if let Ok(Some(_)) = one {
        let mut canonical = Vec::new();
        write_chunk(&mut canonical, &whole);
        canonical.extend_from_slice(LAST_CHUNK);
        let mut again = Vec::new();
        let r = ChunkedScan::default().decode(&canonical, &mut |r| again.extend_from_slice(r));
        assert_eq!(r, Ok(Some(canonical.len())));
        assert_eq!(again, whole);
    }
});
