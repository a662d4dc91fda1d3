//! [`Routers`]: the tasks that drive a fred client's connections, kept so
//! that closing the client ends them for sure.
//!
//! fred runs each client (each connection of a pool) on a routing task, which
//! livedict's reconnect policy keeps reconnecting with backoff for as long as
//! the server is down (no attempt limit: a store outlives an outage).
//! `quit()` ends that task by broadcasting a close notification and queueing
//! `QUIT`. While the server is down, the task sees the notification only if
//! it is parked in the backoff sleep between two attempts at the moment the
//! notification is sent: if it is connecting instead (or its sleep ends at
//! that moment), the notification is lost, the next attempt overwrites the
//! client's `Disconnecting` state, and the `QUIT` waits in a queue the
//! reconnection loop never reads — so the task retries every 2 s for as long
//! as the process lives (fred 10.1: `reconnect_with_policy` and
//! `wait_with_interrupt`). Dropping a store whose server had died then left
//! such a task behind about once in 20 drops, more often on a loaded machine.
//!
//! So every client livedict creates is connected through [`Routers`], which
//! keeps the handles of its routing tasks; [`Routers::close`] sends `QUIT`,
//! waits for the tasks to end, both within [`CLOSE_WAIT`], and aborts those
//! still running (fred allows aborting them once the client is no longer
//! used). Dropping a [`Routers`] aborts its tasks too.

use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::types::ConnectHandle;
use futures::future::join_all;

/// How long closing a client may take (its `QUIT`, then its routing tasks
/// ending) before the tasks still running are aborted.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The routing tasks of one fred client, or of every client of a pool.
/// Dropping it aborts them; see the [module docs](self).
#[derive(Debug, Default)]
pub(super) struct Routers(Vec<ConnectHandle>);

impl Routers {
    /// Connects `client` (fred's `init`), keeping its routing task.
    pub(super) async fn init<C: ClientLike>(client: &C) -> Result<Routers, fred::error::Error> {
        Ok(Routers(vec![client.init().await?]))
    }

    /// Connects every client of `pool`, keeping their routing tasks. On an
    /// error, the tasks of the clients that did connect are aborted.
    pub(super) async fn init_pool(pool: &Pool) -> Result<Routers, fred::error::Error> {
        let mut routers = Routers::default();
        let mut failed = None;
        for connected in join_all(pool.clients().iter().map(|c| c.init())).await {
            match connected {
                Ok(task) => routers.0.push(task),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            None => Ok(routers),
            Some(e) => Err(e),
        }
    }

    /// Whether no routing task is kept (none was started, or they were handed to [`close`](Self::close)).
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Closes `client` (whose tasks these are): `QUIT`, then waits for the
    /// routing tasks to end, both within [`CLOSE_WAIT`] in total; aborts the
    /// tasks still running then (a server that is down may never answer).
    pub(super) async fn close<C: ClientLike>(mut self, client: &C) {
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        let _ = tokio::time::timeout_at(deadline, client.quit()).await;
        let _ = tokio::time::timeout_at(deadline, join_all(self.0.iter_mut())).await;
        let left = self.0.iter().filter(|task| !task.is_finished()).count();
        if left > 0 {
            tracing::debug!(
                tasks = left,
                "a redis client did not stop within {CLOSE_WAIT:?} of QUIT; aborting it"
            );
        }
        // Dropping `self` aborts what is left.
    }
}

impl Drop for Routers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Quits a client whose connection failed (no routing task kept), within [`CLOSE_WAIT`].
pub(super) async fn quit_failed<C: ClientLike>(client: &C) {
    let _ = tokio::time::timeout(CLOSE_WAIT, client.quit()).await;
}
