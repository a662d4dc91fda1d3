//! The response future of [`Lock`](super::Lock): ready-made on the fast path, boxed when it must wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use pin_project::pin_project;
use tower::ServiceExt;

use super::LockShared;
use super::table::Want;
use crate::error::{Error, Result};
use crate::request::{LockToken, Request, Response};

/// Future of [`Lock`](super::Lock).
#[pin_project(project = LockFutureProj)]
pub enum LockFuture<F, V> {
    /// No lock involved: the inner future as is.
    Ready(#[pin] F),
    /// An uncontended lock taken in the table at once: the backend's lock,
    /// after which the table lock is given back if the backend failed.
    Acquired(#[pin] F, Option<Held>),
    /// An unlock: the backend's unlock, then the table lock is given back.
    Unlocking(#[pin] F, Option<Held>),
    /// Waiting for, taking or releasing a lock (cold path, boxed).
    Slow(BoxFuture<'static, Result<Response<V>>>),
}

/// A key held in the table, to give back.
pub struct Held {
    shared: Arc<LockShared>,
    key: String,
    token: LockToken,
}

impl Held {
    pub(super) fn new(shared: &Arc<LockShared>, key: &str, token: &LockToken) -> Self {
        Held { shared: Arc::clone(shared), key: key.to_owned(), token: token.clone() }
    }

    fn release(self) {
        self.shared.table.release(&self.key, &self.token);
    }
}

impl<F, V> LockFuture<F, V> {
    pub(super) fn ready(inner: F) -> Self {
        LockFuture::Ready(inner)
    }

    /// An uncontended lock + unlock boxes no future and runs no waiting
    /// state machine.
    pub(super) fn acquired(inner: F, held: Held) -> Self {
        LockFuture::Acquired(inner, Some(held))
    }

    pub(super) fn unlocking(inner: F, held: Held) -> Self {
        LockFuture::Unlocking(inner, Some(held))
    }

    pub(super) fn slow(fut: impl Future<Output = Result<Response<V>>> + Send + 'static) -> Self {
        LockFuture::Slow(Box::pin(fut))
    }
}

impl<F, V> Future for LockFuture<F, V>
where
    F: Future<Output = Result<Response<V>>>,
{
    type Output = Result<Response<V>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LockFutureProj::Ready(f) => f.poll(cx),
            LockFutureProj::Acquired(f, held) => {
                let out = std::task::ready!(f.poll(cx));
                if let (Err(e), Some(held)) = (&out, held.take()) {
                    if matches!(e, Error::LockTimeout { .. }) {
                        held.shared.counters.lock_timeouts.incr();
                    }
                    held.release();
                }
                Poll::Ready(out)
            }
            LockFutureProj::Unlocking(f, held) => {
                let out = std::task::ready!(f.poll(cx));
                if let Some(held) = held.take() {
                    held.release();
                }
                Poll::Ready(out)
            }
            LockFutureProj::Slow(f) => f.as_mut().poll(cx),
        }
    }
}

/// Handles `Lock`, `Unlock` and writes to a key held by someone else.
pub(super) async fn locked_call<S, V>(
    inner: S,
    shared: Arc<LockShared>,
    req: Request<V>,
) -> Result<Response<V>>
where
    S: tower::Service<Request<V>, Response = Response<V>, Error = Error>,
{
    let (table, counters) = (&shared.table, &shared.counters);
    match req {
        Request::Lock { key, timeout, token } => {
            let started = tokio::time::Instant::now();
            let deadline = started.checked_add(timeout);
            let (got, waited) = table.wait(&key, &token, Want::Acquire, deadline).await;
            if waited {
                counters.lock_waits.incr();
            }
            if !got {
                counters.lock_timeouts.incr();
                return Err(Error::LockTimeout { key });
            }
            let remaining = timeout.saturating_sub(started.elapsed());
            let backend =
                inner.oneshot(Request::Lock { key: key.clone(), timeout: remaining, token: token.clone() });
            match backend.await {
                Ok(resp) => Ok(resp),
                Err(e) => {
                    table.release(&key, &token);
                    if matches!(e, Error::LockTimeout { .. }) {
                        counters.lock_timeouts.incr();
                    }
                    Err(e)
                }
            }
        }
        Request::Unlock { key, token } => {
            let result = inner.oneshot(Request::Unlock { key: key.clone(), token: token.clone() }).await;
            table.release(&key, &token);
            result
        }
        batch @ (Request::SetMany { .. } | Request::DeleteMany { .. }) => {
            // Wait for each held key in turn (no lock taken, so none held
            // meanwhile), until a check of every key finds them all free;
            // the backend call follows in the same poll.
            loop {
                let held = batch.batch_write_keys().into_iter().flatten().find(|k| !table.may_write(k, None));
                let Some(key) = held.map(str::to_owned) else { break };
                counters.lock_waits.incr();
                table.wait(&key, &LockToken::new(), Want::Pass, None).await;
            }
            inner.oneshot(batch).await
        }
        write => {
            // A write to a key held by another holder: wait (no deadline here;
            // the TimeoutLayer above bounds it), then pass without taking the lock.
            if let Some((key, _)) = write.write_target() {
                let key = key.to_owned();
                counters.lock_waits.incr();
                table.wait(&key, &crate::request::LockToken::new(), Want::Pass, None).await;
            }
            inner.oneshot(write).await
        }
    }
}
