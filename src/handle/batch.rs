//! Batches: [`get_many`](LiveDict::get_many), [`set_many`](LiveDict::set_many)
//! and [`delete_many`](LiveDict::delete_many), one request each through the stack.

use std::time::Duration;

use crate::Value;
use crate::error::{Error, Result};
use crate::handle::dict::LiveDict;
use crate::request::{Request, Response, validate_key, validate_ttl};

/// Every key checked ([`validate_key`]) and copied, before anything is sent.
fn owned_keys<K: AsRef<str>>(keys: &[K]) -> Result<Vec<String>> {
    keys.iter()
        .map(|k| {
            let k = k.as_ref();
            validate_key(k).map(|()| k.to_owned())
        })
        .collect()
}

impl<V: Value> LiveDict<V> {
    /// The live values of `keys`: one answer per key, in the order asked
    /// (`None` for a missing or expired key; a key given twice is answered twice).
    ///
    /// One request through the stack, each key read as [`get`](Self::get)
    /// reads it (one `Get` event per hit). Cost: on memory one read lock per
    /// shard touched; on SQLite one read transaction; on Redis one round
    /// trip of pipelined `MGET`s (one per shard touched on a cluster). A bad key
    /// anywhere is [`Error::InvalidKey`] and nothing is read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// let d = livedict::LiveDict::<u32>::open("memory://").await?;
    /// d.set("a", 1).await?;
    /// d.set("c", 3).await?;
    /// assert_eq!(d.get_many(&["a", "b", "c"]).await?, [Some(1), None, Some(3)]);
    /// # Ok(()) }
    /// ```
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        let keys = owned_keys(keys)?;
        let n = keys.len();
        if n == 0 {
            return self.check_open().map(|()| Vec::new());
        }
        match self.call(Request::GetMany { keys }).await? {
            Response::Values(values) if values.len() == n => Ok(values),
            _ => Err(Response::<V>::mismatch("get_many")),
        }
    }

    /// Stores every entry, with `ttl` (`None`: no expiry, dropping any
    /// earlier deadline; the builder's default TTL does not apply), replacing
    /// earlier values; one `Set` event per entry, in order.
    ///
    /// Atomic per key, not across keys (like `MSET` across cluster slots): a
    /// reader may see some entries of a batch written and others not yet. A
    /// key given twice ends with its last value. A key locked by another
    /// holder ([`lock`](Self::lock)) makes the batch wait for it, as a single
    /// write does; the batch holds no lock while it waits. A bad key anywhere
    /// is [`Error::InvalidKey`], a bad TTL [`Error::InvalidTtl`], a value that
    /// does not encode [`Error::Encode`]: in each case nothing is written.
    ///
    /// Cost: on memory one write lock per shard touched; on SQLite one
    /// transaction (it joins the writer's group commit); on Redis one script
    /// call (one per shard touched, concurrently, on a cluster).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use std::time::Duration;
    /// let d = livedict::LiveDict::<u32>::open("memory://").await?;
    /// d.set_many(vec![("a", 1), ("b", 2)], Some(Duration::from_secs(60))).await?;
    /// assert!(d.ttl("a").await?.is_some());
    /// d.set_many(vec![("a", 10)], None).await?;
    /// assert_eq!(d.ttl("a").await?, None); // no deadline any more
    /// assert_eq!(d.get_many(&["a", "b"]).await?, [Some(10), Some(2)]);
    /// # Ok(()) }
    /// ```
    pub async fn set_many<K: AsRef<str>>(&self, entries: Vec<(K, V)>, ttl: Option<Duration>) -> Result<()> {
        if let Some(ttl) = ttl {
            validate_ttl(ttl)?;
        }
        let entries = entries
            .into_iter()
            .map(|(k, v)| {
                let k = k.as_ref();
                validate_key(k).map(|()| (k.to_owned(), v))
            })
            .collect::<Result<Vec<_>>>()?;
        if entries.is_empty() {
            return self.check_open();
        }
        match self.call(Request::SetMany { entries, ttl }).await? {
            Response::Done => Ok(()),
            _ => Err(Response::<V>::mismatch("set_many")),
        }
    }

    /// Removes every key of `keys`; returns how many live entries were
    /// removed (a key given twice is removed once). One `Delete` event per
    /// removed key, in order.
    ///
    /// Atomic per key, not across keys; waits for keys locked by another
    /// holder as [`set_many`](Self::set_many) does. A bad key anywhere is
    /// [`Error::InvalidKey`] and nothing is removed. Cost: as `set_many`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// let d = livedict::LiveDict::<u32>::open("memory://").await?;
    /// d.set_many(vec![("a", 1), ("b", 2)], None).await?;
    /// assert_eq!(d.delete_many(&["a", "b", "missing"]).await?, 2);
    /// assert!(d.is_empty().await?);
    /// # Ok(()) }
    /// ```
    pub async fn delete_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<usize> {
        let keys = owned_keys(keys)?;
        let n = keys.len();
        if n == 0 {
            return self.check_open().map(|()| 0);
        }
        match self.call(Request::DeleteMany { keys }).await? {
            Response::DeletedMany(removed) if removed.len() == n => {
                Ok(removed.iter().filter(|(removed, _)| *removed).count())
            }
            _ => Err(Response::<V>::mismatch("delete_many")),
        }
    }

    /// An empty batch sends nothing, but still fails on a closed store.
    fn check_open(&self) -> Result<()> {
        if self.is_closed() { Err(Error::Closed) } else { Ok(()) }
    }
}
