//! Rate-limit checks ([`Request::Throttle`]) for
//! [`ratelimit::RateLimiter`](crate::ratelimit::RateLimiter): one request
//! through the stack, one atomic step in the backend (on the default memory
//! stack, the direct path when no layer has work: see `direct.rs`).

use crate::error::Result;
use crate::handle::dict::LiveDict;
use crate::request::{Gcra, Request, Response, Throttled, validate_key};

impl LiveDict<u64> {
    /// One GCRA check of cost `cost` on `key` (see [`Request::Throttle`]).
    pub(crate) async fn throttle(&self, key: &str, gcra: Gcra, cost: u32) -> Result<Throttled> {
        validate_key(key)?;
        Self::yield_point().await;
        let tat_of = |v: &u64| Some(*v);
        if let Some(direct) = self.direct()
            && let Some(verdict) = direct.throttle(&self.inner.dispatcher, key, gcra, cost, Some, tat_of)
        {
            return verdict;
        }
        let req = Request::Throttle { key: key.to_owned(), gcra, cost, value_of: Some, tat_of };
        match self.call_spent(req).await? {
            Response::Throttled { verdict, .. } => Ok(verdict),
            _ => Err(Response::<u64>::mismatch("throttle")),
        }
    }
}
