//! The lock layer: per-key locks in this process, enforced for writers.

mod future;
mod layer;
mod table;

use std::sync::Arc;
use std::task::{Context, Poll};

pub use future::LockFuture;
pub use layer::LockLayer;

use crate::error::Error;
use crate::request::{Request, Response};
use crate::stats::Counters;
use table::LockTable;

/// Grants per-key locks and makes writes to a key locked by another holder
/// wait until it is released; reads never wait.
///
/// A batch write (`SetMany`, `DeleteMany`) waits, one key after another, for
/// every key of it that another holder has, then goes to the backend at once;
/// it never takes a lock, so it holds none while it waits.
///
/// `Lock` requests wait here (FIFO) up to their timeout, then go to the
/// backend, which for SQLite and Redis takes the cross-process lock. Writes
/// carrying the holder's token pass. The table holds only keys that are locked
/// or waited for.
#[derive(Clone)]
pub struct Lock<S> {
    inner: S,
    shared: Arc<LockShared>,
}

/// What every service built by one [`LockLayer`] shares (one `Arc`, so a
/// per-request clone of the stack costs one reference count here).
#[derive(Default)]
pub(super) struct LockShared {
    pub(super) table: LockTable,
    pub(super) counters: Arc<Counters>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Lock<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock").field("inner", &self.inner).field("locked", &self.shared.table.len()).finish()
    }
}

impl<S> Lock<S> {
    fn new(inner: S, shared: Arc<LockShared>) -> Self {
        Lock { inner, shared }
    }

    /// Keys currently held or waited for (0 when no lock is in use).
    pub fn locked_keys(&self) -> usize {
        self.shared.table.len()
    }
}

impl<S, V> tower::Service<Request<V>> for Lock<S>
where
    S: tower::Service<Request<V>, Response = Response<V>, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    V: Send + 'static,
{
    type Response = Response<V>;
    type Error = Error;
    type Future = LockFuture<S::Future, V>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<V>) -> Self::Future {
        match &req {
            Request::Lock { key, token, .. } if self.shared.table.try_acquire(key, token) => {
                let held = future::Held::new(&self.shared, key, token);
                return LockFuture::acquired(self.inner.call(req), held);
            }
            Request::Unlock { key, token } => {
                let held = future::Held::new(&self.shared, key, token);
                return LockFuture::unlocking(self.inner.call(req), held);
            }
            _ => {}
        }
        let needs_table = match &req {
            Request::Lock { .. } | Request::Unlock { .. } => true,
            _ => match req.batch_write_keys() {
                // A batch carries no token: it waits for every key another holder has.
                Some(mut keys) => keys.any(|key| !self.shared.table.may_write(key, None)),
                None => {
                    req.write_target().is_some_and(|(key, token)| !self.shared.table.may_write(key, token))
                }
            },
        };
        if !needs_table {
            // Fast path: no lock involved (measured: the common case costs one atomic load).
            return LockFuture::ready(self.inner.call(req));
        }
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        LockFuture::slow(future::locked_call(inner, Arc::clone(&self.shared), req))
    }
}
