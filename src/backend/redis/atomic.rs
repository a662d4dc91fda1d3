//! `compare_and_set` and `incr` as one script call (`WRITE_IF`), instead of
//! lock, read, write, unlock (four round trips).
//!
//! The script compares codec bytes. Equal bytes mean equal values; unequal
//! bytes of values that are equal all the same (a map whose encoding is not
//! canonical, say) are confirmed with the type's `PartialEq` here and retried
//! with the stored bytes. `incr` adds in the script when the stored value is
//! a JSON integer of at most 15 digits (exact in Lua's doubles); otherwise
//! the backend answers [`Response::Unsupported`] and the handle takes the
//! key's lock, as on the other backends.

use std::time::Duration;

use fred::bytes::Bytes;
use fred::types::Value as RedisValue;

use super::{Shared, Status, ms};
use crate::Value;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::request::{Gcra, Response};

/// Retries of a comparison that failed on bytes but held by `PartialEq`.
const EQUAL_RETRIES: usize = 3;

impl<V: Value> Shared<V> {
    /// `ARGV` of `WRITE_IF` after mode, argument, range and new bytes.
    fn write_if_args(
        &self,
        key: &str,
        mode: &'static str,
        arg: RedisValue,
        range: (i64, i64),
        new: RedisValue,
        ttl: Option<Duration>,
    ) -> Vec<RedisValue> {
        vec![
            mode.into(),
            arg,
            range.0.into(),
            range.1.into(),
            new,
            ttl.map_or_else(|| "".into(), |t| ms(t).into()),
            self.mode_arg(),
            self.layout.wake.as_str().into(),
            (self.layout.shard_of(key) as i64).into(),
            key.into(),
        ]
    }

    /// [`Request::CompareAndSet`](crate::Request::CompareAndSet) in one script call.
    pub(super) async fn compare_and_set(
        &self,
        key: String,
        expected: Option<V>,
        new: V,
        ttl: Option<Duration>,
        eq: fn(&V, &V) -> bool,
    ) -> Result<Response<V>> {
        let codec = self.config.codec;
        // The new value is checked like every write (`verify_codec`); the expected one is only compared.
        let new_bytes = Bytes::from(self.config.encoder().encode(&key, &new)?);
        let mut expected_bytes =
            expected.as_ref().map(|v| codec.encode(&key, v)).transpose()?.map(Bytes::from);
        for _ in 0..EQUAL_RETRIES {
            let (mode, arg) = match &expected_bytes {
                None => ("absent", RedisValue::from("")),
                Some(b) => ("eq", b.clone().into()),
            };
            let args = self.write_if_args(&key, mode, arg, (0, 0), new_bytes.clone().into(), ttl);
            let (status, current) = self.write("compare_and_set", &self.scripts.write_if, &key, args).await?;
            match (status, current, &expected) {
                (Status::Ok, _, _) => return Ok(Response::Written(Some(new))),
                // Different bytes, maybe the same value: ask the type.
                (Status::No, Some(current), Some(expected)) => {
                    if !eq(&codec.decode(&key, &current)?, expected) {
                        return Ok(Response::Written(None));
                    }
                    expected_bytes = Some(current);
                }
                (Status::No, _, _) => return Ok(Response::Written(None)),
                _ => return Err(Error::backend_msg("redis", "unexpected status for compare_and_set")),
            }
        }
        // The value keeps changing between equal values: take the lock instead.
        Ok(Response::Unsupported)
    }

    /// [`Request::Incr`](crate::Request::Incr) in one script call.
    pub(super) async fn incr(
        &self,
        key: String,
        delta: i64,
        ttl: Option<Duration>,
        range: (i64, i64),
        value_of: fn(i64) -> Option<V>,
    ) -> Result<Response<V>> {
        // Only JSON stores an integer as its decimal digits.
        if self.config.codec != Codec::Json {
            return Ok(Response::Unsupported);
        }
        let args = self.write_if_args(&key, "incr", delta.into(), range, "".into(), ttl);
        let (status, stored) = self.write("incr", &self.scripts.write_if, &key, args).await?;
        match status {
            Status::Ok => {
                let n: i64 = stored
                    .as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Error::backend_msg("redis", "unexpected reply to incr"))?;
                let value = value_of(n).ok_or(Error::Overflow { key, delta })?;
                Ok(Response::Written(Some(value)))
            }
            Status::Range => Err(Error::Overflow { key, delta }),
            Status::Slow => Ok(Response::Unsupported),
            _ => Err(Error::backend_msg("redis", "unexpected status for incr")),
        }
    }

    /// [`Request::Throttle`](crate::Request::Throttle) in one script call
    /// (`WRITE_IF` mode `gcra`, on the server's clock).
    pub(super) async fn throttle(
        &self,
        key: String,
        gcra: Gcra,
        cost: u32,
        value_of: fn(u64) -> Option<V>,
    ) -> Result<Response<V>> {
        // The script reads and writes the arrival time as decimal digits.
        if self.config.codec != Codec::Json {
            return Err(Error::InvalidConfig(
                "rate limiting on redis needs the json codec (the script stores the arrival time as digits)"
                    .into(),
            ));
        }
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let range = (to_i64(gcra.tolerance_us()), i64::from(cost));
        let args =
            self.write_if_args(&key, "gcra", to_i64(gcra.interval_us()).into(), range, "".into(), None);
        let (status, answer) = self.write("throttle", &self.scripts.write_if, &key, args).await?;
        let written = match status {
            Status::Ok => true,
            Status::No => false,
            Status::Slow => return Err(crate::gcra::not_a_tat(&key)),
            _ => return Err(Error::backend_msg("redis", "unexpected status for throttle")),
        };
        let bad = || Error::backend_msg("redis", "unexpected reply to throttle");
        let answer = answer.as_deref().and_then(|b| std::str::from_utf8(b).ok()).ok_or_else(bad)?;
        let (now, tat) = answer.split_once(' ').ok_or_else(bad)?;
        let now: u64 = now.parse().map_err(|_| bad())?;
        let tat: Option<u64> = if tat == "-" { None } else { Some(tat.parse().map_err(|_| bad())?) };
        // The same step as the script's, on the same numbers.
        let (verdict, new) = gcra.step(now, tat, cost);
        let stored = match (written, new) {
            (true, Some(new)) => value_of(new),
            (false, None) => None,
            _ => return Err(Error::backend_msg("redis", "throttle: the script and the client disagree")),
        };
        Ok(Response::Throttled { verdict, stored })
    }
}
