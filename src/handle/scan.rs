//! [`LiveDict::scan`] and [`LiveDict::scan_keys`]: the live entries under a
//! prefix, streamed one page at a time (each page one
//! [`Request::ScanPage`] through the stack).

use futures::{Stream, StreamExt, TryStreamExt, stream};

use super::dict::LiveDict;
use crate::Value;
use crate::error::Result;
use crate::request::{Request, Response, validate_key};

/// Entries asked for per page: what one page holds in memory at most
/// (SQLite answers pages of up to 1,000 rows, and Redis one `SCAN` with
/// `COUNT` 1,000, so theirs hold fewer).
///
/// Large enough that a scan of the memory store, which reads every entry
/// once per page (its map is unordered), makes few passes: 100 for 1M
/// entries (measured at 100k entries with 1,000-entry pages: 46k entries/s
/// on a loaded 2-CPU machine); small next to the data (about 1.5 MB with
/// 100-byte values).
pub const SCAN_PAGE: usize = 10_000;

/// Where a scan stands between two pages.
enum Next {
    /// The first page is still to be read.
    Start,
    /// The page after this cursor.
    After(String),
    /// The scan is over (or failed).
    Done,
}

impl<V: Value> LiveDict<V> {
    /// The live entries whose key starts with `prefix` (`""`: all), streamed
    /// in pages of [`SCAN_PAGE`] entries: at most one page is held in memory,
    /// whatever the store's size.
    ///
    /// Each entry that is live for the whole scan is yielded at least once:
    /// exactly once and in key order (bytewise) on memory and SQLite, at
    /// least once and in no particular order on Redis (as with `SCAN`).
    /// Entries written, removed or expiring during the scan may or may not
    /// be yielded; an entry past its deadline never is. A scan is not an
    /// access (it does not keep an idle entry alive) and fires no events.
    ///
    /// Cost per page: memory reads every entry of the store once, one shard
    /// lock at a time (so a whole scan is O(n²/page), see the README);
    /// SQLite one range query on the key index; Redis one `SCAN MATCH` and
    /// one `MGET` (`GETRANGE` of the headers for [`scan_keys`](Self::scan_keys)).
    ///
    /// A prefix longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) is
    /// [`Error::InvalidKey`](crate::Error::InvalidKey), as the first and only
    /// item; an error reading a page is the last item.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use futures::TryStreamExt;
    /// use livedict::LiveDict;
    /// let d: LiveDict<u32> = LiveDict::open("memory://").await?;
    /// d.set("user:2", 20).await?;
    /// d.set("user:1", 10).await?;
    /// d.set("order:1", 5).await?;
    /// let users: Vec<(String, u32)> = d.scan("user:").try_collect().await?;
    /// assert_eq!(users, [("user:1".to_string(), 10), ("user:2".to_string(), 20)]);
    /// # Ok(()) }
    /// ```
    pub fn scan(&self, prefix: &str) -> impl Stream<Item = Result<(String, V)>> + Send + 'static {
        self.scan_pages(prefix, true)
            .try_filter_map(|(key, value)| async move { Ok(value.map(|v| (key, v))) })
    }

    /// The live keys that start with `prefix` (`""`: all), streamed in pages:
    /// [`scan`](Self::scan) without reading the values.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use futures::TryStreamExt;
    /// use livedict::LiveDict;
    /// let d: LiveDict<u32> = LiveDict::open("memory://").await?;
    /// d.set("a:1", 1).await?;
    /// d.set("b:1", 2).await?;
    /// let keys: Vec<String> = d.scan_keys("").try_collect().await?;
    /// assert_eq!(keys, ["a:1", "b:1"]);
    /// # Ok(()) }
    /// ```
    pub fn scan_keys(&self, prefix: &str) -> impl Stream<Item = Result<String>> + Send + 'static {
        self.scan_pages(prefix, false).map_ok(|(key, _)| key)
    }

    /// The entries of a scan, one page read at a time.
    fn scan_pages(
        &self,
        prefix: &str,
        values: bool,
    ) -> impl Stream<Item = Result<(String, Option<V>)>> + Send + 'static {
        let checked = if prefix.is_empty() { Ok(()) } else { validate_key(prefix) };
        let prefix = prefix.to_owned();
        let dict = self.clone();
        let first = match checked {
            Ok(()) => Next::Start,
            Err(e) => return stream::once(async { Err(e) }).left_stream(),
        };
        stream::try_unfold((dict, prefix, first), move |(dict, prefix, next)| async move {
            let cursor = match next {
                Next::Start => None,
                Next::After(cursor) => Some(cursor),
                Next::Done => return Ok(None),
            };
            let req = Request::ScanPage { prefix: prefix.clone(), cursor, limit: SCAN_PAGE, values };
            let (entries, next) = match dict.call(req).await? {
                Response::ScanPage { entries, next } => (entries, next),
                _ => return Err(Response::<V>::mismatch("scan")),
            };
            let next = next.map_or(Next::Done, Next::After);
            Ok(Some((stream::iter(entries.into_iter().map(Ok)), (dict, prefix, next))))
        })
        .try_flatten()
        .right_stream()
    }
}
