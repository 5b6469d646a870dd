//! Reading the record of changes grayctl keeps beside a key ([`gray_core::delta`]): the number of
//! its latest change, and the deltas since a change, for the gateway that applies them instead
//! of reading a SET again.

use gray_core::delta::{self, Delta, KEPT};
use gray_core::keys;

use crate::connection::{self, Connection, Reply};

/// The latest change number recorded for `key` (`None`: none, or not a number) and the SET's
/// number of members (SCARD), in one round trip.
pub fn latest(con: &mut Connection, key: &str) -> Result<(Option<u64>, u64), connection::Error> {
    let replies = con.pipeline(
        &[
            redis::cmd("HGET")
                .arg(keys::changes(key))
                .arg(delta::VERSION_FIELD)
                .clone(),
            redis::cmd("SCARD").arg(key).clone(),
        ],
        64,
    )?;
    let change = match replies.first() {
        Some(Reply::Bulk(Some(text))) => {
            std::str::from_utf8(text).ok().and_then(|t| t.parse().ok())
        }
        _ => None,
    };
    match replies.get(1) {
        Some(&Reply::Int(n)) => Ok((change, u64::try_from(n).unwrap_or(0))),
        other => Err(connection::Error::Protocol(format!(
            "expected a size from SCARD {key}, got {other:?}"
        ))),
    }
}

/// The deltas of changes `after + 1 ..= upto` of `key`, in order; `None` when one is missing or
/// unreadable, or there are more than [`KEPT`]: the key is read whole.
pub fn since(
    con: &mut Connection,
    key: &str,
    after: u64,
    upto: u64,
) -> Result<Option<Vec<Delta>>, connection::Error> {
    if upto <= after || upto - after > KEPT {
        return Ok((upto == after).then(Vec::new));
    }
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(keys::changes(key));
    for change in after + 1..=upto {
        cmd.arg(delta::field(change));
    }
    let replies = match con.query(&cmd, delta::MAX_BYTES) {
        Ok(Reply::Array(Some(replies))) => replies,
        Ok(other) => {
            return Err(connection::Error::Protocol(format!(
                "expected deltas, got {other:?}"
            )))
        }
        // A delta over the size grayctl records is not one of ours: read the key whole.
        Err(connection::Error::TooLong(_)) => {
            con.abandon();
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    Ok(replies
        .iter()
        .map(|reply| match reply {
            Reply::Bulk(Some(json)) => Delta::parse(json).ok(),
            _ => None,
        })
        .collect())
}
