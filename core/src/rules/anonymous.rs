//! Anonymous users: a cookie that becomes an id like any other, minted for a request whose decision
//! needs it and that has none, and set on the response so the next request brings it back and
//! lands in the same bucket.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::schema::RuleSetError;
use super::Source;

/// A minted id's random bits.
const ID_BITS: u32 = 128;
/// A minted id as text: lowercase hex.
pub const ID_LEN: usize = ID_BITS as usize / 4;
/// The longest `max_age`: ten years, in seconds.
pub const MAX_AGE_LIMIT: u64 = 10 * 365 * 24 * 3600;
/// `max_age` when the rule set names none: 30 days.
pub const DEFAULT_MAX_AGE: u64 = 30 * 24 * 3600;
/// A cookie domain is at most this long (a DNS name's limit).
const MAX_DOMAIN: usize = 253;
/// A `Set-Cookie` value this module writes is at most this long.
pub const MAX_SET_COOKIE: usize = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnonymousSpec {
    cookie: String,
    max_age: Option<u64>,
    #[serde(default)]
    secure: bool,
    domain: Option<String>,
}

#[derive(Debug)]
pub struct Anonymous {
    pub cookie: String,
    /// The cookie as a source, as rules name it (`cookie:gray_uid`).
    pub source: Source,
    /// The cookie's index in `RuleSet::inputs`: `None` when no rule reads it, so none is minted.
    pub input: Option<usize>,
    /// Seconds the client keeps the cookie.
    pub max_age: u64,
    /// What follows `name=id` in the `Set-Cookie` value: the attributes.
    attributes: String,
}

impl Anonymous {
    /// The `Set-Cookie` value that hands `id` to the client, written to `out` (at least
    /// [`MAX_SET_COOKIE`] bytes); its length.
    pub fn set_cookie(&self, id: &MintedId, out: &mut [u8]) -> usize {
        let mut len = 0;
        for part in [
            self.cookie.as_bytes(),
            b"=",
            id.as_bytes(),
            self.attributes.as_bytes(),
        ] {
            out[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        }
        len
    }
}

pub(super) fn compile(spec: AnonymousSpec) -> Result<Anonymous, RuleSetError> {
    let err = |message: String| RuleSetError(format!("anonymous.{message}"));
    let source = Source::parse(&format!("cookie:{}", spec.cookie))
        .map_err(|e| err(format!("cookie: {e}")))?;
    let max_age = spec.max_age.unwrap_or(DEFAULT_MAX_AGE);
    if !(1..=MAX_AGE_LIMIT).contains(&max_age) {
        return Err(err(format!(
            "max_age: {max_age} is not a number of seconds from 1 to {MAX_AGE_LIMIT} (ten years)"
        )));
    }
    let mut attributes = format!("; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax");
    if spec.secure {
        attributes.push_str("; Secure");
    }
    if let Some(domain) = &spec.domain {
        let valid = !domain.is_empty()
            && domain.len() <= MAX_DOMAIN
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
        if !valid {
            return Err(err(format!(
                "domain: \"{}\" is not a domain name",
                domain.escape_debug()
            )));
        }
        attributes.push_str("; Domain=");
        attributes.push_str(domain);
    }
    Ok(Anonymous {
        cookie: spec.cookie,
        source,
        input: None,
        max_age,
        attributes,
    })
}

/// An id minted for a request: [`ID_BITS`] random bits as lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintedId([u8; ID_LEN]);

impl MintedId {
    pub fn from_bits(bits: u128) -> MintedId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; ID_LEN];
        for (i, digit) in text.iter_mut().enumerate() {
            *digit = HEX[((bits >> (4 * (ID_LEN - 1 - i))) & 0xf) as usize];
        }
        MintedId(text)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Mints ids: ChaCha8 (unpredictable from the ids it gave out), seeded by the caller from the OS,
/// once per process, so no two workers mint the same ids.
pub struct IdGenerator(ChaCha8Rng);

impl IdGenerator {
    pub fn from_seed(seed: [u8; 32]) -> IdGenerator {
        IdGenerator(ChaCha8Rng::from_seed(seed))
    }

    pub fn mint(&mut self) -> MintedId {
        let high = u128::from(self.0.next_u64());
        MintedId::from_bits(high << 64 | u128::from(self.0.next_u64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_128_bits_of_lowercase_hex() {
        assert_eq!(
            MintedId::from_bits(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210).as_bytes(),
            b"0123456789abcdeffedcba9876543210"
        );
        let mut ids = IdGenerator::from_seed([7; 32]);
        let (a, b) = (ids.mint(), ids.mint());
        assert_ne!(a, b);
        assert!(a
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn the_set_cookie_value_has_the_attributes_asked_for() {
        let spec = |json: &str| compile(serde_json::from_str(json).unwrap());
        let id = MintedId::from_bits(1);
        let written = |a: &Anonymous| {
            let mut out = [0u8; MAX_SET_COOKIE];
            let len = a.set_cookie(&id, &mut out);
            String::from_utf8(out[..len].to_vec()).unwrap()
        };
        let plain = spec(r#"{"cookie": "gray_uid", "max_age": 2592000}"#).unwrap();
        assert_eq!(
            written(&plain),
            "gray_uid=00000000000000000000000000000001; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax"
        );
        let long_domain = format!("{}.example", "d".repeat(244));
        let full = spec(&format!(
            r#"{{"cookie": "{}", "max_age": {MAX_AGE_LIMIT}, "secure": true, "domain": "{long_domain}"}}"#,
            "c".repeat(64)
        ))
        .unwrap();
        let text = written(&full);
        assert!(text.ends_with(&format!("; Secure; Domain={long_domain}")));
        assert!(text.len() <= MAX_SET_COOKIE);
    }

    #[test]
    fn bad_fields_are_named() {
        let error = |json: &str| {
            compile(serde_json::from_str(json).unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(error(r#"{"cookie": "a b"}"#).starts_with("anonymous.cookie: "));
        assert!(error(r#"{"cookie": "uid", "max_age": 0}"#).starts_with("anonymous.max_age: 0 "));
        assert!(error(&format!(
            r#"{{"cookie": "uid", "max_age": {}}}"#,
            MAX_AGE_LIMIT + 1
        ))
        .starts_with("anonymous.max_age: "));
        assert!(error(r#"{"cookie": "uid", "domain": "a;b"}"#).starts_with("anonymous.domain: "));
    }
}
