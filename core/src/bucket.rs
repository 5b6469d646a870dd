//! The sticky percentage: which keys (user ids, client addresses) a percentage takes in. The
//! function is published (README, with test vectors) so a backend or a script can compute it:
//!
//! ```text
//! bucket    = murmur3_x86_32(seed + ":" + key, 0)
//! threshold = floor(hundredths * 2^32 / 10000)      (hundredths = percent * 100, 0..=10000)
//! in        = bucket < threshold
//! ```
//!
//! The threshold only grows with the percentage, so raising it keeps everyone who was in, and
//! lowering it drops the last ones in first; only a new seed reshuffles.

use std::hash::Hasher;

use mur3::Hasher32;

/// 100%: every key is in.
pub const ALL: u32 = 10_000;

/// The bucket of `key` under `seed`.
///
/// ```
/// assert_eq!(gray_core::bucket::bucket("release-42", b"u1001"), gray_core::bucket::bucket("release-42", b"u1001"));
/// ```
pub fn bucket(seed: &str, key: &[u8]) -> u32 {
    let mut hasher = Hasher32::with_seed(0);
    hasher.write(seed.as_bytes());
    hasher.write(b":");
    hasher.write(key);
    hasher.finish32()
}

/// The threshold for `hundredths` of a percent (clamped to 100%); `u64` so that 100% is 2^32.
pub fn threshold(hundredths: u32) -> u64 {
    u64::from(hundredths.min(ALL)) * (1u64 << 32) / u64::from(ALL)
}

pub fn is_in(bucket: u32, threshold: u64) -> bool {
    u64::from(bucket) < threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn murmur(input: &[u8], seed: u32) -> u32 {
        mur3::murmurhash3_x86_32(input, seed)
    }

    #[test]
    fn murmur3_x86_32_matches_published_vectors() {
        // From the reference implementation's verification set (SMHasher) and common test suites.
        assert_eq!(murmur(b"", 0), 0);
        assert_eq!(murmur(b"", 1), 0x514E_28B7);
        assert_eq!(murmur(b"", 0xffff_ffff), 0x81F1_6F39);
        assert_eq!(murmur(b"\0\0\0\0", 0), 0x2362_F9DE);
        assert_eq!(murmur(b"aaaa", 0x9747_b28c), 0x5A97_808A);
        assert_eq!(murmur(b"Hello, world!", 0x9747_b28c), 0x2488_4CBA);
        assert_eq!(
            murmur(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c),
            0x2FA8_26CD
        );
    }

    #[test]
    fn the_readme_vectors() {
        let vectors = [
            ("release-42", "u1001", 798_355_464),
            ("release-42", "u1002", 3_033_800_762),
            ("release-42", "10.1.2.3", 985_562_199),
            ("s", "42", 1_591_947_571),
        ];
        for (seed, key, expected) in vectors {
            assert_eq!(bucket(seed, key.as_bytes()), expected, "{seed}:{key}");
        }
        assert_eq!(threshold(2000), 858_993_459);
        assert!(is_in(798_355_464, threshold(2000)) && !is_in(798_355_464, threshold(500)));
    }

    #[test]
    fn the_key_is_seed_colon_key() {
        assert_eq!(
            bucket("release-42", b"u1001"),
            murmur(b"release-42:u1001", 0)
        );
        assert_ne!(
            bucket("release-42", b"u1001"),
            bucket("release-43", b"u1001")
        );
    }

    #[test]
    fn thresholds_at_the_ends_are_exact() {
        assert_eq!(threshold(0), 0);
        assert_eq!(threshold(ALL), 1 << 32);
        assert_eq!(threshold(500), 214_748_364);
        assert!(!is_in(0, threshold(0)));
        assert!(is_in(u32::MAX, threshold(ALL)));
    }

    fn keys() -> impl Iterator<Item = Vec<u8>> {
        (0..100_000).map(|i| format!("user-{i}").into_bytes())
    }

    #[test]
    fn the_share_is_within_half_a_point_of_the_percentage() {
        for hundredths in [100, 500, 1000, 2500, 5000, 9000] {
            let t = threshold(hundredths);
            let n = keys().filter(|k| is_in(bucket("seed-1", k), t)).count();
            let share = n as f64 / 1000.0;
            let want = f64::from(hundredths) / 100.0;
            assert!((share - want).abs() <= 0.5, "{want}%: {share}%");
        }
    }

    #[test]
    fn raising_keeps_everyone_who_was_in() {
        let (five, ten) = (threshold(500), threshold(1000));
        for key in keys() {
            let b = bucket("seed-1", &key);
            assert!(!is_in(b, five) || is_in(b, ten));
        }
    }
}
