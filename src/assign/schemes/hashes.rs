//! The non-cryptographic (and one legacy) hash functions the vendors'
//! bucketing uses, written from their published definitions:
//! - FNV-1a 32-bit (Fowler/Noll/Vo, offset basis 2166136261, prime 16777619);
//! - MurmurHash2 32-bit (Austin Appleby; NGINX's `ngx_murmur_hash2` is it
//!   with seed 0);
//! - MurmurHash3 x86_32 (Austin Appleby's SMHasher);
//! - SHA-1 (FIPS 180-4), for LaunchDarkly only: SHA-256 comes from `sha2`.
//!
//! Each is pinned by the published test values of its definition.

/// FNV-1a 32-bit over a sequence of code units: each unit is XORed in whole
/// (GrowthBook's SDKs feed UTF-16 code units, not bytes).
pub fn fnv1a32(units: impl IntoIterator<Item = u32>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for u in units {
        h ^= u;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// MurmurHash2, 32-bit, little-endian blocks.
pub fn murmur2(data: &[u8], seed: u32) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h = seed ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() >= 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// MurmurHash3 x86_32.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix = |mut k: u32| {
        k = k.wrapping_mul(C1);
        k = k.rotate_left(15);
        k.wrapping_mul(C2)
    };
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h ^= mix(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        h = h.rotate_left(13);
        h = h.wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        h ^= mix(k);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// SHA-1 digest of `data`.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5a82_7999),
                20..=39 => (b ^ c ^ d, 0x6ed9_eba1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                _ => (b ^ c ^ d, 0xca62_c1d6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// FIPS 180-2 appendix A examples ("abc", the two-block message) and
    /// the empty string.
    #[test]
    fn sha1_matches_the_fips_examples() {
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(&sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    }

    /// The FNV reference test vectors (Landon Curt Noll's `test_fnv.c`:
    /// FNV-1a 32 of "", "a", "foobar").
    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        let f = |s: &str| fnv1a32(s.bytes().map(u32::from));
        assert_eq!(f(""), 0x811c_9dc5);
        assert_eq!(f("a"), 0xe40c_292c);
        assert_eq!(f("foobar"), 0xbf9c_f968);
    }

    /// SMHasher's verification value: hash keys {0}, {0,1}, ..., {0..254}
    /// (key i of length i, seed 256 - i), then hash the concatenated
    /// little-endian results with seed 0.
    fn smhasher_verification(f: fn(&[u8], u32) -> u32) -> u32 {
        let key: Vec<u8> = (0..=255u8).collect();
        let mut hashes = Vec::with_capacity(1024);
        for i in 0..256usize {
            hashes.extend_from_slice(&f(&key[..i], 256 - i as u32).to_le_bytes());
        }
        f(&hashes, 0)
    }

    #[test]
    fn murmur_hashes_match_smhasher_verification_values() {
        assert_eq!(smhasher_verification(murmur2), 0x27864c1e);
        assert_eq!(smhasher_verification(murmur3_32), 0xb0f57ee3);
    }
}
