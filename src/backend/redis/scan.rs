//! Prefix scans (`Request::ScanPage`): one `SCAN MATCH` page, then the
//! page's values (one `MGET`) or headers (one pipeline of `GETRANGE`s) to
//! drop the entries past their deadline that no sweeper claimed yet.
//!
//! On a cluster each shard is scanned on the node that owns its hash tag's
//! slot, one shard after the other (the cursor is `<shard>:<SCAN cursor>`).
//! On a single server one `SCAN` pass covers every shard of the namespace
//! (pattern `ld:{<ns>:*}:v:<prefix>*`, cursor `a:<SCAN cursor>`): a pass per
//! shard would walk the server's whole keyspace once per shard.
//!
//! As with `SCAN`, each entry stored for the whole scan is yielded at least
//! once; entries written, removed or rehashed meanwhile may be yielded twice
//! or not at all. A page may be empty while the scan goes on.

use fred::bytes::Bytes;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::{ClusterHash, CustomCommand, Value as RedisValue};

use super::{Found, Shared, layout};
use crate::Value;
use crate::error::{Error, Result};
use crate::request::Response;

/// `s` with Redis glob characters (`*?[]\`) escaped, to match itself only.
pub(super) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Where a Redis scan stands: which shard (`None`: the single pass over
/// every shard of a single server) and its `SCAN` cursor.
fn parse_cursor(cursor: Option<&str>, shards: usize) -> Result<(Option<usize>, String)> {
    let bad = || Error::backend_msg("redis", format!("invalid scan cursor {cursor:?}"));
    let Some(cursor) = cursor else { return Ok((None, "0".into())) };
    let (shard, at) = cursor.split_once(':').ok_or_else(bad)?;
    if at.is_empty() || !at.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let shard = match shard {
        "a" => None,
        s => Some(s.parse::<usize>().ok().filter(|&s| s < shards).ok_or_else(bad)?),
    };
    Ok((shard, at.to_owned()))
}

impl<V: Value> Shared<V> {
    /// One page of a prefix scan (see the [module docs](self)).
    pub(super) async fn scan_page(
        &self,
        prefix: String,
        cursor: Option<String>,
        limit: usize,
        values: bool,
    ) -> Result<Response<V>> {
        let shards = self.layout.shards.len();
        let (shard, at) = match parse_cursor(cursor.as_deref(), shards)? {
            // The first page of a cluster scan starts at shard 0.
            (None, at) if self.clustered => (Some(0), at),
            found => found,
        };
        let escaped = escape_glob(&prefix);
        let (pattern, slot) = match shard {
            Some(s) => {
                let shard = &self.layout.shards[s];
                (format!("{}{escaped}*", shard.value_prefix), ClusterHash::Custom(shard.slot))
            }
            None => (
                format!("{}*}}:v:{escaped}*", self.layout.scan_pattern.trim_end_matches('*')),
                ClusterHash::Random,
            ),
        };
        // `COUNT` at most [`PAGE`]: a larger one holds the server longer per call.
        let count = limit.clamp(1, super::PAGE as usize) as i64;
        let args: Vec<RedisValue> =
            vec![at.into(), "MATCH".into(), pattern.into(), "COUNT".into(), count.into()];
        let client = self.pool.next();
        let reply: RedisValue = client
            .custom(CustomCommand::new_static("SCAN", slot, false), args)
            .await
            .map_err(|e| self.backend_error("scan", e))?;
        let (next_at, found) =
            scan_reply(reply).ok_or_else(|| Error::backend_msg("redis", "unexpected reply to SCAN"))?;
        // Value keys of this namespace whose user key has the prefix (a `*`
        // in the pattern may also match other namespaces' or other keys' text).
        let found: Vec<(String, String)> = found
            .into_iter()
            .filter_map(|full| {
                let (_, key) = self.layout.parse_value_key(&full)?;
                key.starts_with(&prefix).then(|| (key.to_owned(), full.clone()))
            })
            .collect();
        let entries = if found.is_empty() {
            Vec::new()
        } else if values {
            let names: Vec<String> = found.iter().map(|(_, full)| full.clone()).collect();
            let stored: Vec<Option<Bytes>> =
                client.mget(names).await.map_err(|e| self.backend_error("mget", e))?;
            let mut entries = Vec::with_capacity(found.len());
            for ((key, _), stored) in found.into_iter().zip(stored) {
                // A value that expired or went between SCAN and MGET is not listed.
                if let Some((_, body)) = self.live(&key, stored)? {
                    let value = self.config.codec.decode(&key, &body)?;
                    entries.push((key, Some(value)));
                }
            }
            entries
        } else {
            // The header is at most the first 8 bytes (`~`, or the deadline's digits).
            let pipe = client.pipeline();
            for (_, full) in &found {
                let () = pipe
                    .getrange(full.as_str(), 0, layout::DEADLINE_DIGITS - 1)
                    .await
                    .map_err(|e| self.backend_error("getrange", e))?;
            }
            let heads: Vec<Option<Bytes>> =
                pipe.all().await.map_err(|e| self.backend_error("getrange", e))?;
            found
                .into_iter()
                .zip(heads)
                // `GETRANGE` answers "" for a missing key (a stored value is never empty).
                .filter(|(_, head)| match head.as_ref().filter(|h| !h.is_empty()) {
                    Some(head) => !matches!(self.found(Some(head.clone())), Found::Missing),
                    None => false,
                })
                .map(|((key, _), _)| (key, None))
                .collect()
        };
        let next = match (shard, next_at.as_str()) {
            (Some(s), "0") if s + 1 < shards => Some(format!("{}:0", s + 1)),
            (_, "0") => None,
            (Some(s), at) => Some(format!("{s}:{at}")),
            (None, at) => Some(format!("a:{at}")),
        };
        Ok(Response::ScanPage { entries, next })
    }
}

/// A `SCAN` reply: the next cursor and the page's key names.
pub(super) fn scan_reply(reply: RedisValue) -> Option<(String, Vec<String>)> {
    let RedisValue::Array(mut parts) = reply else { return None };
    if parts.len() != 2 {
        return None;
    }
    let RedisValue::Array(keys) = parts.pop()? else { return None };
    let cursor = parts.pop()?.as_string()?;
    Some((cursor, keys.into_iter().filter_map(|k| k.as_string()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("user:1"), "user:1");
        assert_eq!(escape_glob(r"a*b?c[d]e\f%_"), r"a\*b\?c\[d\]e\\f%_");
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_errors() {
        assert_eq!(parse_cursor(None, 4).unwrap(), (None, "0".to_string()));
        assert_eq!(parse_cursor(Some("a:17"), 4).unwrap(), (None, "17".to_string()));
        assert_eq!(parse_cursor(Some("3:0"), 4).unwrap(), (Some(3), "0".to_string()));
        for bad in ["", "4:0", "x:1", "1:", "1:-2", "17"] {
            assert!(parse_cursor(Some(bad), 4).is_err(), "{bad}");
        }
    }
}
