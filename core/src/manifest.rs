//! The manifest of the host's shared copy (the module's `src/store/`): which block of the shared
//! memory holds each value of a generation, and each block's checksum. Its bytes are what the
//! holder writes and every other worker reads, so they are checked whole before anything in them
//! is believed: an xxh3 checksum of the JSON, then the JSON, then the generation it names.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// How an item's bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemForm {
    /// The value as read (a SET's members joined by newlines).
    Text,
    /// A whitelist: its figures, then its address set, as flat records.
    Whitelist,
    /// A set of ids: its counts, its ids and its table of slots, as flat records.
    Ids,
}

/// An item as the manifest lists it: a key's value and where its bytes lie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub key: String,
    /// "missing", "string" or "set".
    pub kind: String,
    pub version: u64,
    /// The value's size as read.
    pub bytes: usize,
    pub form: ItemForm,
    /// The block: its first chunk, its number of chunks, its id.
    pub first: usize,
    pub chunks: usize,
    pub block: u64,
    /// The bytes laid out in it, and their xxh3.
    pub len: usize,
    pub checksum: u64,
}

impl Item {
    /// What a reader remembers of a block it checked: its id and checksum.
    pub fn checked(&self) -> (u64, u64) {
        (self.block, self.checksum)
    }

    /// Whether its bytes fit its chunks of `chunk` bytes.
    pub fn fits(&self, chunk: usize) -> bool {
        self.chunks
            .checked_mul(chunk)
            .is_some_and(|room| self.len <= room)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub generation: u64,
    pub items: Vec<Item>,
}

impl Manifest {
    /// The manifest as written: its checksum (8 bytes, little-endian), then its JSON.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a manifest is plain data");
        let mut bytes = xxh3_64(&json).to_le_bytes().to_vec();
        bytes.extend_from_slice(&json);
        bytes
    }

    /// The manifest of generation `generation` in `bytes`; an error naming what does not hold.
    pub fn decode(bytes: &[u8], generation: u64) -> Result<Manifest, String> {
        let (sum, json) = bytes
            .split_at_checked(8)
            .ok_or("shorter than its checksum")?;
        let sum = u64::from_le_bytes(sum.try_into().map_err(|_| "shorter than its checksum")?);
        if sum != xxh3_64(json) {
            return Err("its checksum does not match".into());
        }
        let manifest: Manifest = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if manifest.generation != generation {
            return Err(format!(
                "generation {} where {generation} is in force",
                manifest.generation
            ));
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            generation: 7,
            items: vec![Item {
                key: "gray".into(),
                kind: "set".into(),
                version: 42,
                bytes: 13,
                form: ItemForm::Whitelist,
                first: 3,
                chunks: 1,
                block: 9,
                len: 100,
                checksum: 5,
            }],
        }
    }

    #[test]
    fn a_manifest_reads_back_and_a_torn_one_is_refused() {
        let bytes = manifest().encode();
        assert_eq!(Manifest::decode(&bytes, 7), Ok(manifest()));
        assert_eq!(
            Manifest::decode(&bytes, 8).unwrap_err(),
            "generation 7 where 8 is in force"
        );
        let mut torn = bytes.clone();
        torn[20] ^= 1;
        assert_eq!(
            Manifest::decode(&torn, 7).unwrap_err(),
            "its checksum does not match"
        );
        assert!(Manifest::decode(&bytes[..5], 7).is_err());
        assert!(manifest().items[0].fits(100));
        assert!(!manifest().items[0].fits(99));
    }
}
