//! The [`Writer`]: one connection, one thread, group commit, and an inline
//! path for a lone caller that may block.
//!
//! Every write of this process goes through the one writer connection. A
//! write from a lone caller runs right there, on the caller's thread, in its
//! own transaction, when the connection is free and no batch is forming (see
//! [`Writer::write_inline`]): a blocking-facade thread always may; an async
//! task only where the commit cannot block for long (`synchronous=NORMAL`,
//! no fsync) and only if no other process holds the write lock (it never
//! waits for one). Every other write (the expiry driver, many callers at
//! once, and a caller that finds the writer busy) goes into one queue: the
//! writer thread takes whatever has queued up (up to [`MAX_BATCH`]), applies
//! it in one transaction and acknowledges each caller only after `COMMIT`,
//! so many concurrent writers share one commit (WAL, `synchronous=NORMAL`: a
//! committed batch survives a crash of the process). Either way a write is
//! acknowledged only after the transaction holding it committed.
//!
//! Checkpoints never run inside a commit on a caller's thread: the writer
//! connection records the WAL's size after each commit (a WAL hook, in place
//! of SQLite's automatic checkpoint), and past [`CHECKPOINT_PAGES`] the
//! writer thread (or a blocking caller) checkpoints, an async caller hands
//! the checkpoint to the writer thread. A checkpoint holds no write lock but
//! stalls every write queued behind it, so meanwhile the expiry driver claims
//! due rows on a connection of its own ([`Writer::claim_aside`]).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use super::schema::Sql;
use crate::error::{Error, Result};

/// Most writes committed in one transaction.
pub(super) const MAX_BATCH: usize = 512;

/// How long the writer thread keeps looking for the next job before it sleeps.
///
/// Measured (async set, 1 task, 2-vCPU VM): waking a sleeping writer thread
/// costs tens of µs, as much as the write; a caller that writes one key after
/// another queues its next write within a few µs of its acknowledgement.
const SPIN: Duration = Duration::from_micros(50);

/// WAL size (pages) past which the writer checkpoints after a commit, so that
/// the WAL starts over and stays bounded under sustained writes (most
/// checkpoints run on a connection of their own; see the backend's
/// `checkpointer`). Measured without it: the WAL grew to 90 MB in a 10-second
/// write burst.
pub(super) const CHECKPOINT_PAGES: i32 = 4000;

/// WAL size (pages) past which a checkpoint that left frames behind (the
/// expiry driver claimed on its own connection while it ran) is followed by
/// a second one that lets the WAL start over (see [`Core::checkpoint`]).
const CATCH_UP_PAGES: i32 = 4 * CHECKPOINT_PAGES;

thread_local! {
    /// The WAL's size in pages after the last commit on this thread, set by
    /// [`record_wal_pages`] (SQLite calls it inside `COMMIT`, on the
    /// committing thread) and read right after the commit.
    static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

/// The writer connection's WAL hook: records the WAL's size instead of
/// checkpointing inside the commit (which SQLite's automatic checkpoint would
/// do, on whatever thread committed).
fn record_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// Reports one removal (key, stored bytes) as an `Expire` or `Evict` event.
/// The writer calls it for the expirations and evictions a transaction took,
/// right after the commit and before any caller is acknowledged: on the
/// thread that committed, so a removal never depends on a caller still
/// waiting for its reply (a caller whose future was dropped cannot lose it).
pub(super) type Reporter = Arc<dyn Fn(Removal, &str, &[u8]) + Send + Sync>;

/// What took a row out of the table, for the [`Reporter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Removal {
    /// Past its deadline: an `Expire` event.
    Expired,
    /// Beyond the size bound (see [`enforce_bound`]): an `Evict` event.
    Evicted,
}

/// Due rows a batch of the writer thread claims in its own transaction
/// (`at_most_once`), besides the expiry driver's claims.
///
/// Measured (100,000 keys with deadlines over 1 s, set by 32 tasks, on a
/// loaded 2-vCPU VM, three A/B pairs): with only the driver claiming, each
/// claim waited for the batch ahead of it and then for the driver's next
/// turn, lateness p50 6.7-9.7 ms, p99 41-103 ms; with batches that are
/// committing anyway taking what is due, p50 2.2-3.9 ms, p99 26-44 ms.
const CLAIM_IN_BATCH: usize = 256;

/// How an inline write may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Inline {
    /// A blocking-facade thread: it may wait for the commit's fsync and for
    /// another process's write lock (up to the busy timeout).
    MayBlock,
    /// An async task: it never waits for another process's lock (that write
    /// goes to the queue instead), and runs only where a commit writes
    /// without an fsync (see [`Writer::spawn`]).
    Async,
}

/// One write, encoded and ready for SQL. Times are ms since the Unix epoch.
#[derive(Debug, Clone)]
pub(super) enum WriteOp {
    Set {
        key: String,
        value: Vec<u8>,
        expires_at: Option<i64>,
        owner: Option<String>,
    },
    Delete {
        key: String,
        owner: Option<String>,
    },
    Expire {
        key: String,
        expires_at: i64,
        owner: Option<String>,
    },
    Persist {
        key: String,
        owner: Option<String>,
    },
    Clear,
    TryLock {
        key: String,
        owner: String,
        lease_until: i64,
    },
    Renew {
        key: String,
        owner: String,
        lease_until: i64,
    },
    Unlock {
        key: String,
        owner: String,
    },
    /// The expiry driver's claim: delete up to `limit` rows due at `now`
    /// (under `at_least_once`: lease them, see [`Leased`]).
    ClaimDue {
        limit: usize,
    },
    /// Settles leased expirations (`at_least_once`): each `(id, attempt, ok)`
    /// is acknowledged (dropped) or, failed, made due again at once.
    Settle {
        receipts: Vec<(i64, u32, bool)>,
    },
    /// A batch (`set_many`, `delete_many`): plain `Set`s and `Delete`s applied
    /// one after another in one transaction, each checked on its own, exactly
    /// as if it came alone; answered with [`WriteOutcome::Many`].
    Many(Vec<WriteOp>),
    /// A read under `eviction_policy=least_recently_used`: moves `key` to the
    /// back of the eviction order (nothing if the store is not sized).
    MarkUsed {
        key: String,
    },
    /// Time-to-idle: an access moves the live entry's deadline to
    /// `expires_at` (capped by its own TTL's, see `IdleSql::touch`).
    /// Answers `Bool(true)` iff the entry is live.
    Touch {
        key: String,
        expires_at: i64,
    },
    /// A rate-limit check (`Request::Throttle`): reads the key's arrival
    /// time, decides, and stores the new one (expiring when the bucket is
    /// full again) in the batch's transaction; answered with
    /// [`WriteOutcome::Throttled`] or [`WriteOutcome::NotATat`].
    Throttle {
        key: String,
        gcra: crate::request::Gcra,
        cost: u32,
        tat: TatCodec,
    },
}

/// The arrival time stored bytes hold, if they hold one.
pub(super) type DecodeTat = Arc<dyn Fn(&[u8]) -> Option<u64> + Send + Sync>;

/// The bytes to store for an arrival time.
pub(super) type EncodeTat = Arc<dyn Fn(u64) -> Option<Vec<u8>> + Send + Sync>;

/// How a [`WriteOp::Throttle`] reads and writes an arrival time in the
/// store's codec (the writer knows neither the value type nor the codec).
#[derive(Clone)]
pub(super) struct TatCodec {
    pub(super) decode: DecodeTat,
    pub(super) encode: EncodeTat,
}

impl std::fmt::Debug for TatCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TatCodec")
    }
}

/// Microseconds since the Unix epoch (the arrival times of rate limits).
fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// An expiration leased to this process (`at_least_once`): delivery number
/// `attempt` of pending row `id`.
#[derive(Debug)]
pub(super) struct Leased {
    pub(super) id: i64,
    pub(super) key: String,
    pub(super) value: Vec<u8>,
    pub(super) attempt: u32,
}

/// What a write did.
#[derive(Debug)]
pub(super) enum WriteOutcome {
    Done,
    Bool(bool),
    /// `Delete`: the removed value if a live row was removed.
    Deleted(Option<Vec<u8>>),
    /// `TryLock`: the fencing token if acquired.
    Locked(Option<u64>),
    /// A plain write found the key locked by another owner; nothing was done.
    KeyLocked,
    /// A guarded write whose lock is no longer held (lease ran out); nothing was done.
    LockLost,
    /// Rows claimed by the expiry driver.
    Claimed(Vec<(String, Vec<u8>)>),
    /// Under `at_least_once`: the expirations leased by this claim, how many
    /// were dropped after their last attempt, and whether the claim hit its
    /// limit (more may be due).
    Leased {
        leased: Vec<Leased>,
        abandoned: usize,
        full: bool,
    },
    /// `Many`: one outcome per write, in order.
    Many(Vec<WriteOutcome>),
    /// `Throttle`: the verdict and, if it wrote, the new arrival time and
    /// the row's deadline (ms).
    Throttled {
        verdict: crate::request::Throttled,
        stored: Option<(u64, i64)>,
    },
    /// `Throttle`: the key's live value is not an arrival time; nothing was done.
    NotATat,
}

/// What a write did. The expirations it found on the way (an expired row a
/// write replaced or removed) are reported by the writer itself once their
/// transaction committed (see [`Reporter`]), so no expiry is ever lost.
#[derive(Debug)]
pub(super) struct Applied {
    pub(super) outcome: WriteOutcome,
    /// Under `at_least_once` the expirations a write found go to the pending
    /// table instead (due at once, for the expiry driver): whether any did.
    pub(super) held: bool,
}

/// A closure run on the writer connection outside any batch (reads of a
/// private in-memory database, whose one connection is the writer's).
type Call = Box<dyn FnOnce(&mut Connection) + Send>;

enum Job {
    Write { op: WriteOp, reply: oneshot::Sender<Result<Applied>> },
    Call(Call),
}

/// The queue into the writer thread.
struct Queue {
    jobs: VecDeque<Job>,
    /// The writer thread sleeps on [`Core::wake`] (so a new job must wake it).
    asleep: bool,
    /// Every [`Writer`] is gone: finish the queue and stop.
    closed: bool,
}

/// What the writer thread and the callers share.
struct Core {
    /// The connection; whoever holds the lock may write (the writer thread
    /// for a batch, or a caller for its inline write).
    conn: Mutex<Connection>,
    queue: Mutex<Queue>,
    /// Jobs in `queue`, readable without its lock (the writer's spin, the inline check).
    queued: AtomicUsize,
    wake: Condvar,
    /// The writer thread is taking or running a batch.
    batching: AtomicBool,
    /// Whether async callers may write inline (commits without an fsync).
    inline_async: bool,
    /// The connection's busy timeout (an async inline write sets 0 for its
    /// attempt and restores this).
    busy_timeout: Duration,
    /// A checkpoint job is queued for the writer thread.
    checkpoint_queued: AtomicBool,
    /// The WAL's size (pages) after which [`CHECKPOINT_PAGES`] more call for
    /// the next checkpoint: 0, unless the last one left frames behind (see
    /// [`Core::checkpoint`]).
    checkpoint_from: std::sync::atomic::AtomicI32,
    /// A checkpoint of the connection is running (see [`Writer::checkpointing`]).
    checkpointing: AtomicBool,
    /// The expiry driver's connection for claims during a checkpoint (see
    /// [`Writer::claim_aside`]); none for an in-memory database.
    aside: Option<Mutex<Connection>>,
    /// Claims committed on `aside`, ever.
    aside_claims: AtomicUsize,
    /// Reports the expirations a transaction took.
    report: Reporter,
    /// Async writes under way (see [`Writer::write_async`]).
    async_writes: AtomicUsize,
    sql: Arc<Sql>,
    label: Arc<str>,
}

/// The handle on the writer; the writer thread stops (after finishing its
/// queue) when it is dropped.
pub(super) struct Writer {
    core: Arc<Core>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        lock(&self.core.queue).closed = true;
        self.core.wake.notify_one();
    }
}

/// A poisoned lock only means a panic elsewhere; the data behind it is still consistent
/// (every batch is one transaction, rolled back if it did not commit).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Writer {
    /// Starts the writer thread on `conn`, whose WAL hook it takes over (a
    /// database file's connection; see the module docs on checkpoints).
    /// `aside`: a second connection to the file for [`Writer::claim_aside`],
    /// configured never to wait for the write lock and never to checkpoint.
    ///
    /// `inline_async`: async callers may write inline. Only where a commit
    /// cannot block for long: `synchronous=NORMAL` (a commit writes the WAL
    /// without an fsync) or a private in-memory database.
    pub(super) fn spawn(
        conn: Connection,
        aside: Option<Connection>,
        sql: Arc<Sql>,
        label: Arc<str>,
        inline_async: bool,
        busy_timeout: Duration,
        report: Reporter,
    ) -> std::io::Result<Self> {
        conn.wal_hook(Some(record_wal_pages));
        let core = Arc::new(Core {
            conn: Mutex::new(conn),
            queue: Mutex::new(Queue { jobs: VecDeque::new(), asleep: false, closed: false }),
            queued: AtomicUsize::new(0),
            wake: Condvar::new(),
            batching: AtomicBool::new(false),
            inline_async,
            busy_timeout,
            checkpoint_queued: AtomicBool::new(false),
            checkpoint_from: std::sync::atomic::AtomicI32::new(0),
            checkpointing: AtomicBool::new(false),
            aside: aside.map(Mutex::new),
            aside_claims: AtomicUsize::new(0),
            async_writes: AtomicUsize::new(0),
            report,
            sql,
            label,
        });
        let thread_core = Arc::clone(&core);
        std::thread::Builder::new().name("livedict-sqlite-writer".into()).spawn(move || run(&thread_core))?;
        Ok(Writer { core })
    }

    /// Queues `op` and waits until its batch committed.
    pub(super) async fn write(&self, op: WriteOp) -> Result<Applied> {
        let (reply, done) = oneshot::channel();
        self.push(Job::Write { op, reply })?;
        done.await.map_err(|_| Error::Closed)?
    }

    /// An async caller's write: inline (see [`Writer::write_inline`]) if it
    /// is the only async write under way, else queued for the group commit.
    ///
    /// Tasks on one Tokio worker run one after another, so many tasks writing
    /// inline would each commit alone and rarely find the writer busy
    /// (measured, set with 32 tasks: 46-52k/s with every write inline
    /// against 68k/s queued). Once two async writes overlap, the later one
    /// queues and stays under way until its batch commits, so the writes of
    /// many tasks keep sharing commits for as long as they keep coming.
    pub(super) async fn write_async(&self, op: WriteOp) -> Result<Applied> {
        struct UnderWay<'a>(&'a AtomicUsize);
        impl Drop for UnderWay<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let counter = &self.core.async_writes;
        let alone = counter.fetch_add(1, Ordering::AcqRel) == 0;
        let _under_way = UnderWay(counter);
        if alone && let Some(applied) = self.write_inline(&op, Inline::Async) {
            return applied;
        }
        self.write(op).await
    }

    /// Runs `op` in a transaction of its own on the calling thread, if the
    /// writer connection is free and no batch is forming; `None` (nothing
    /// done) otherwise, and then the caller queues it with [`Writer::write`].
    ///
    /// [`Inline::MayBlock`]: waits for the commit, and for another process's
    /// write lock up to the busy timeout. [`Inline::Async`]: only where the
    /// writer allows it (no fsync per commit), and never waits for another
    /// process's lock (`None` if one holds it): the write costs what SQLite
    /// takes to apply it and append it to the WAL, a few µs to tens of µs,
    /// like the point reads that already run on the calling task.
    ///
    /// Measured (1 caller, WAL, `synchronous=NORMAL`): the hand-off to the
    /// writer thread and back cost more than the write itself (blocking set:
    /// 8.9k/s queued, 36k/s inline; async set 13k/s queued).
    pub(super) fn write_inline(&self, op: &WriteOp, how: Inline) -> Option<Result<Applied>> {
        let core = &self.core;
        if how == Inline::Async && (!core.inline_async || matches!(op, WriteOp::Clear | WriteOp::Many(_))) {
            // Clear deletes every row and a batch writes many: no one-row
            // write, so they go to the writer thread (a batch joins its group commit).
            return None;
        }
        if core.queued.load(Ordering::Acquire) > 0 || core.batching.load(Ordering::Acquire) {
            return None;
        }
        let mut conn = core.conn.try_lock().ok()?;
        if how == Inline::Async && conn.busy_timeout(Duration::ZERO).is_err() {
            return None;
        }
        let result = commit(&mut conn, &core.sql, vec![op.clone()], false, &core.report);
        if how == Inline::Async {
            let _ = conn.busy_timeout(core.busy_timeout);
        }
        let (mut results, pages) = match result {
            Ok(done) => done,
            Err(e) if how == Inline::Async && is_busy(&e) => return None,
            Err(e) => {
                return Some(Err(Error::backend_msg(
                    "sqlite",
                    format!("commit to {} failed: {e}", core.label),
                )));
            }
        };
        if core.wants_checkpoint(pages) {
            match how {
                Inline::MayBlock => core.checkpoint(&conn, pages),
                Inline::Async => {
                    drop(conn);
                    self.queue_checkpoint(pages);
                }
            }
        }
        Some(match results.pop() {
            Some(result) => {
                result.map_err(|e| Error::backend("sqlite", format!("write to {}", core.label), e))
            }
            None => Err(Error::backend_msg("sqlite", format!("write to {}: no result", core.label))),
        })
    }

    /// Has the writer thread checkpoint (once, however many callers ask
    /// before it ran).
    fn queue_checkpoint(&self, pages: i32) {
        if self.core.checkpoint_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let core = Arc::clone(&self.core);
        let job = Job::Call(Box::new(move |c| {
            core.checkpoint_queued.store(false, Ordering::Release);
            core.checkpoint(c, pages);
        }));
        if self.push(job).is_err() {
            self.core.checkpoint_queued.store(false, Ordering::Release);
        }
    }

    /// Whether the writer connection is checkpointing: it holds no write
    /// lock then, but every write of this process queued behind it waits
    /// (8-10 ms for a checkpoint of [`CHECKPOINT_PAGES`] pages, mostly its
    /// fsync). The expiry driver claims on a connection of its own meanwhile
    /// (see the driver's `claim_aside`).
    pub(super) fn checkpointing(&self) -> bool {
        self.core.checkpointing.load(Ordering::Acquire)
    }

    /// Claims up to `limit` due rows on the `aside` connection, in a
    /// transaction of its own, if the writer connection is checkpointing
    /// right now; `None` (nothing done) if it is not, if there is no such
    /// connection, or if another connection holds the write lock (the claim
    /// never waits for it). Blocks for the claim's commit: call it from a
    /// blocking thread.
    ///
    /// A checkpoint holds no write lock but stalls every write queued behind
    /// it: measured (100,000 keys with deadlines over 1 s, set by 32 tasks),
    /// expiry lateness p99 29-47 ms with claims waiting for the writer's
    /// checkpoints, 4.5-10 ms with this.
    pub(super) fn claim_aside(&self, limit: usize) -> Option<rusqlite::Result<WriteOutcome>> {
        let core = &self.core;
        let mut conn = lock(core.aside.as_ref()?);
        // Checked under the connection's lock: the checkpoint's end waits for it (see `Core::checkpoint`).
        if !core.checkpointing.load(Ordering::Acquire) {
            return None;
        }
        match claim_in(&mut conn, &core.sql, limit) {
            Err(e) if is_busy(&e) => None,
            claimed => {
                core.aside_claims.fetch_add(1, Ordering::AcqRel);
                Some(claimed)
            }
        }
    }

    /// Queues `op` for the next group commit without waiting for it (a
    /// `least_recently_used` read's [`WriteOp::MarkUsed`]); a later write of
    /// this process is queued behind it. Nothing happens once the writer stopped.
    pub(super) fn write_detached(&self, op: WriteOp) {
        let (reply, _) = oneshot::channel();
        let _ = self.push(Job::Write { op, reply });
    }

    /// Runs `f` on the writer connection, between batches.
    pub(super) async fn call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut Connection) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (reply, done) = oneshot::channel();
        self.push(Job::Call(Box::new(move |c| {
            let _ = reply.send(f(c));
        })))?;
        done.await.map_err(|_| Error::Closed)
    }

    fn push(&self, job: Job) -> Result<()> {
        let core = &self.core;
        let mut q = lock(&core.queue);
        if q.closed {
            return Err(Error::Closed);
        }
        // The expiry driver's claims go first: the next batch takes them
        // whatever number of writes queued up (expiry lateness under load).
        if matches!(job, Job::Write { op: WriteOp::ClaimDue { .. }, .. }) {
            q.jobs.push_front(job);
        } else {
            q.jobs.push_back(job);
        }
        core.queued.store(q.jobs.len(), Ordering::Release);
        if q.asleep {
            q.asleep = false;
            core.wake.notify_one();
        }
        Ok(())
    }
}

impl Core {
    /// Whether a commit that left the WAL at `pages` pages should be followed
    /// by a checkpoint.
    fn wants_checkpoint(&self, pages: i32) -> bool {
        let from = self.checkpoint_from.load(Ordering::Acquire);
        // A smaller WAL than at the last checkpoint: it started over since.
        let from = if pages < from { 0 } else { from };
        pages >= from.saturating_add(CHECKPOINT_PAGES)
    }

    /// Checkpoints the writer connection (held by the caller; the WAL at
    /// `pages` pages), flagged as such while it runs (see [`Writer::claim_aside`]).
    fn checkpoint(&self, conn: &Connection, pages: i32) {
        let claims = self.aside_claims.load(Ordering::Acquire);
        self.checkpointing.store(true, Ordering::Release);
        checkpoint(conn);
        self.checkpointing.store(false, Ordering::Release);
        let mut from = 0;
        if let Some(aside) = &self.aside
            && self.aside_claims.load(Ordering::Acquire) != claims
        {
            // The expiry driver claimed on its own connection meanwhile, so the WAL
            // holds frames this checkpoint did not copy and will not start over at
            // the next write. Up to CATCH_UP_PAGES it grows on, and the next
            // checkpoint comes CHECKPOINT_PAGES later (measured: checkpointing after
            // every batch instead cost a third of the write rate); past it, a second
            // checkpoint copies the rest with the driver's claims held off (a claim
            // under way finishes first), and the WAL starts over.
            if pages >= CATCH_UP_PAGES {
                let _held = lock(aside);
                checkpoint(conn);
            } else {
                from = pages;
            }
        }
        self.checkpoint_from.store(from, Ordering::Release);
    }
}

/// Closes the queue when the writer thread ends, however it ends, so that
/// no caller waits for a reply that will never come (dropping a queued job
/// drops its reply sender: the caller gets [`Error::Closed`]).
struct Exit<'a>(&'a Core);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        let mut q = lock(&self.0.queue);
        q.closed = true;
        q.jobs.clear();
        self.0.queued.store(0, Ordering::Release);
        self.0.batching.store(false, Ordering::Release);
    }
}

/// The writer thread: waits for jobs, commits them in batches, until closed.
fn run(core: &Core) {
    let _exit = Exit(core);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let spin_until = Instant::now() + SPIN;
        while core.queued.load(Ordering::Acquire) == 0 && Instant::now() < spin_until {
            std::hint::spin_loop();
        }
        {
            let mut q = lock(&core.queue);
            while q.jobs.is_empty() {
                if q.closed {
                    return;
                }
                q.asleep = true;
                q = core.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            q.asleep = false;
        }
        // From here until the batch committed, callers queue instead of writing inline.
        core.batching.store(true, Ordering::Release);
        let mut conn = lock(&core.conn);
        {
            let mut q = lock(&core.queue);
            let n = q.jobs.len().min(MAX_BATCH);
            batch.extend(q.jobs.drain(..n));
            core.queued.store(q.jobs.len(), Ordering::Release);
        }
        let mut ops = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            match job {
                Job::Write { op, reply } => {
                    ops.push(op);
                    replies.push(reply);
                }
                Job::Call(f) => f(&mut conn),
            }
        }
        if !ops.is_empty() {
            let committed = commit(&mut conn, &core.sql, ops, true, &core.report);
            if let Ok((_, pages)) = committed
                && core.wants_checkpoint(pages)
            {
                core.checkpoint(&conn, pages);
            }
            drop(conn);
            core.batching.store(false, Ordering::Release);
            match committed {
                Ok((results, _)) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply
                            .send(result.map_err(|e| {
                                Error::backend("sqlite", format!("write to {}", core.label), e)
                            }));
                    }
                }
                Err(e) => {
                    let msg = format!("commit to {} failed: {e}", core.label);
                    for reply in replies {
                        let _ = reply.send(Err(Error::backend_msg("sqlite", msg.clone())));
                    }
                }
            }
        } else {
            drop(conn);
            core.batching.store(false, Ordering::Release);
        }
    }
}

/// Applies `ops` in one `IMMEDIATE` transaction and commits it; also the
/// WAL's size in pages after the commit (0 if unknown). The expirations the
/// transaction took (found by the writes, and with `claim` up to
/// [`CLAIM_IN_BATCH`] due rows) go to `report` once it committed.
fn commit(
    conn: &mut Connection,
    sql: &Sql,
    ops: Vec<WriteOp>,
    claim: bool,
    report: &Reporter,
) -> rusqlite::Result<(Vec<rusqlite::Result<Applied>>, i32)> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = super::now_ms();
    let mut seen = Seen::new(&tx, sql, now)?;
    let mut found = Vec::new();
    if claim && sql.claim_in_batch && seen.due && sql.pending.is_none() {
        found = take_due(&tx, sql, now, CLAIM_IN_BATCH)?;
        // Every row due at `now` is taken unless the limit stopped the claim.
        seen.due = found.len() == CLAIM_IN_BATCH;
    }
    let mut results: Vec<_> =
        ops.into_iter().map(|op| apply(&tx, sql, now, &mut seen, op, &mut found)).collect();
    let mut evicted = Vec::new();
    if let Some(bound) = &sql.bound
        && seen.seq.is_some()
        && enforce_bound(&tx, sql, bound, now, &mut found, &mut evicted)?
        && let Some(Ok(applied)) = results.iter_mut().find(|r| r.is_ok())
    {
        // Expirations the eviction found went to the pending table: the driver leases them now.
        applied.held = true;
    }
    WAL_PAGES.with(|p| p.set(0));
    tx.commit()?;
    for (key, value) in &found {
        report(Removal::Expired, key, value);
    }
    for (key, value) in &evicted {
        report(Removal::Evicted, key, value);
    }
    Ok((results, WAL_PAGES.with(Cell::get)))
}

/// A `PASSIVE` checkpoint (it waits for no reader or writer), on the writer
/// connection or the backend's checkpointer; a failure is logged, the next
/// one retries.
pub(super) fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "sqlite checkpoint failed; retrying later");
    }
}

/// Whether `e` says another connection holds a lock this one needs.
pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// What a batch's transaction may contain, checked once at its start: the
/// transaction holds the write lock, so no other process changes either, and
/// with `now` fixed for the batch no row can come due during it.
///
/// Measured (set, 32 tasks): the per-set lock check and expired-row capture
/// were two of the three statements of every set, while there was almost
/// never a lock or a due row to find.
struct Seen {
    /// A lock row (live or stale) may exist.
    locks: bool,
    /// A row past its deadline may exist.
    due: bool,
    /// The store is sized (see `schema::SizeSql`; some process opened it with
    /// a bound): the `seq` the next write stamps, counting up from the greatest.
    seq: Option<i64>,
}

impl Seen {
    fn new(tx: &Transaction<'_>, sql: &Sql, now: i64) -> rusqlite::Result<Self> {
        let sized = tx.prepare_cached(&sql.sized.size)?.exists([])?;
        let seq = if sized {
            Some(tx.prepare_cached(&sql.sized.max_seq)?.query_row([], |r| r.get::<_, i64>(0))? + 1)
        } else {
            None
        };
        Ok(Seen {
            locks: tx.prepare_cached(&sql.any_lock)?.query_row([], |r| r.get(0))?,
            due: tx.prepare_cached(&sql.any_due)?.query_row([now], |r| r.get(0))?,
            seq,
        })
    }

    /// The next `seq` to stamp, if the store is sized.
    fn next_seq(&mut self) -> Option<i64> {
        let seq = self.seq.as_mut()?;
        *seq += 1;
        Some(*seq - 1)
    }
}

/// Keeps the store within `bound` at the end of a write transaction: if the
/// size row says it is over, walks the rows oldest first (the `seq` index)
/// until what is left fits, then deletes them all with one
/// `DELETE … RETURNING` up to the last one. Evicted rows go to `evicted`;
/// a row already past its deadline goes to `found` as an expiration (under
/// `at_least_once` into the pending table: then `true`). The transaction
/// holds the write lock, so each row is taken by exactly one process.
fn enforce_bound(
    tx: &Transaction<'_>,
    sql: &Sql,
    bound: &super::schema::Bound,
    now: i64,
    found: &mut Vec<(String, Vec<u8>)>,
    evicted: &mut Vec<(String, Vec<u8>)>,
) -> rusqlite::Result<bool> {
    let (entries, bytes): (i64, i64) =
        tx.prepare_cached(&sql.sized.size)?.query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (mut entries, mut bytes) = (entries.max(0) as u64, bytes.max(0) as u64);
    if entries <= bound.entries && bytes <= bound.bytes {
        return Ok(false);
    }
    let mut last = None;
    {
        let mut oldest = tx.prepare_cached(&sql.sized.oldest)?;
        let mut rows = oldest.query([])?;
        while entries > bound.entries || bytes > bound.bytes {
            let Some(row) = rows.next()? else { break };
            let (seq, rowid, size): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
            entries -= 1;
            bytes = bytes.saturating_sub(size.max(0) as u64);
            last = Some((seq, rowid));
        }
    }
    let Some((seq, rowid)) = last else { return Ok(false) };
    let mut expired = Vec::new();
    let mut evict = tx.prepare_cached(&sql.sized.evict)?;
    let rows = evict.query_map(params![seq, rowid], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Option<i64>>(2)?))
    })?;
    for row in rows {
        let (key, value, at) = row?;
        if at.is_some_and(|at| at <= now) {
            expired.push((key, value));
        } else {
            evicted.push((key, value));
        }
    }
    match &sql.pending {
        Some(pending) if !expired.is_empty() => {
            let mut hold = tx.prepare_cached(&pending.hold)?;
            for (key, value) in expired {
                hold.execute(params![key, value, now])?;
            }
            Ok(true)
        }
        _ => {
            found.append(&mut expired);
            Ok(false)
        }
    }
}

/// Whether a write to `key` (guarded by `owner`, if any) may proceed.
fn check_lock(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: i64,
    seen: &Seen,
    key: &str,
    owner: Option<&str>,
) -> rusqlite::Result<LockState> {
    if !seen.locks {
        // No lock row at all: free for a plain write, lost for a guarded one (as below).
        return Ok(if owner.is_some() { LockState::Lost } else { LockState::Free });
    }
    let holder: Option<String> =
        tx.prepare_cached(&sql.lock_owner)?.query_row(params![key, now], |r| r.get(0)).optional()?;
    Ok(match (holder.as_deref(), owner) {
        (None, None) => LockState::Free,
        (Some(h), Some(o)) if h == o => LockState::Free,
        (Some(_), None) => LockState::HeldByOther,
        (_, Some(_)) => LockState::Lost,
    })
}

enum LockState {
    Free,
    HeldByOther,
    Lost,
}

/// Applies one write in `tx`; the expirations it found go to `found`
/// (reported once the transaction committed).
fn apply(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: i64,
    seen: &mut Seen,
    op: WriteOp,
    found: &mut Vec<(String, Vec<u8>)>,
) -> rusqlite::Result<Applied> {
    let mut expired: Vec<(String, Vec<u8>)> = Vec::new();
    // Whether a write of a `Many` held an expiration it found (see `held` below).
    let mut held_by_many = false;
    let guarded = match &op {
        WriteOp::Set { key, owner, .. }
        | WriteOp::Delete { key, owner }
        | WriteOp::Expire { key, owner, .. }
        | WriteOp::Persist { key, owner } => Some((key.as_str(), owner.as_deref())),
        WriteOp::Throttle { key, .. } => Some((key.as_str(), None)),
        _ => None,
    };
    if let Some((key, owner)) = guarded {
        match check_lock(tx, sql, now, seen, key, owner)? {
            LockState::Free => {}
            LockState::HeldByOther => {
                return Ok(Applied { outcome: WriteOutcome::KeyLocked, held: false });
            }
            LockState::Lost => return Ok(Applied { outcome: WriteOutcome::LockLost, held: false }),
        }
    }
    let outcome = match op {
        WriteOp::Set { key, value, expires_at, .. } => {
            if seen.due {
                take_expired(tx, sql, now, &key, &mut expired)?;
            }
            match seen.next_seq() {
                None => tx.prepare_cached(&sql.upsert)?.execute(params![key, value, expires_at])?,
                Some(seq) => {
                    tx.prepare_cached(&sql.sized.upsert_seq)?.execute(params![key, value, expires_at, seq])?
                }
            };
            WriteOutcome::Done
        }
        WriteOp::Delete { key, .. } => {
            let row: Option<(Vec<u8>, Option<i64>)> = tx
                .prepare_cached(&sql.delete)?
                .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match row {
                Some((value, Some(at))) if at <= now => {
                    expired.push((key, value));
                    WriteOutcome::Deleted(None)
                }
                Some((value, _)) => WriteOutcome::Deleted(Some(value)),
                None => WriteOutcome::Deleted(None),
            }
        }
        WriteOp::Expire { key, expires_at, .. } => {
            WriteOutcome::Bool(tx.prepare_cached(&sql.expire)?.execute(params![key, now, expires_at])? > 0)
        }
        WriteOp::Persist { key, .. } => {
            WriteOutcome::Bool(tx.prepare_cached(&sql.persist)?.execute(params![key, now])? > 0)
        }
        WriteOp::Clear => {
            // Entries already past their deadline expired before this clear: claim
            // them first so their Expire events are not lost to a late driver.
            expired.append(&mut take_due(tx, sql, now, usize::MAX)?);
            tx.prepare_cached(&sql.clear)?.execute([])?;
            WriteOutcome::Done
        }
        WriteOp::TryLock { key, owner, lease_until } => {
            tx.prepare_cached(&sql.lock_drop_stale)?.execute(params![key, now])?;
            if tx.prepare_cached(&sql.lock_insert)?.execute(params![key, owner, lease_until])? == 1 {
                seen.locks = true;
                let fence: i64 =
                    tx.prepare_cached(&sql.fence_next)?.query_row(params![sql.fence_name], |r| r.get(0))?;
                if let Some(record) = &sql.lock_fence {
                    tx.prepare_cached(record)?.execute(params![key, fence])?;
                }
                WriteOutcome::Locked(Some(fence as u64))
            } else {
                WriteOutcome::Locked(None)
            }
        }
        WriteOp::Renew { key, owner, lease_until } => WriteOutcome::Bool(
            tx.prepare_cached(&sql.lock_renew)?.execute(params![key, owner, lease_until, now])? > 0,
        ),
        WriteOp::Unlock { key, owner } => {
            tx.prepare_cached(&sql.lock_release)?.execute(params![key, owner])?;
            WriteOutcome::Done
        }
        WriteOp::ClaimDue { limit } => claim_due(tx, sql, now, limit)?,
        WriteOp::Many(ops) => {
            let mut outcomes = Vec::with_capacity(ops.len());
            for op in ops {
                let applied = apply(tx, sql, now, seen, op, found)?;
                held_by_many |= applied.held;
                outcomes.push(applied.outcome);
            }
            WriteOutcome::Many(outcomes)
        }
        WriteOp::MarkUsed { key } => {
            if let Some(seq) = seen.next_seq() {
                tx.prepare_cached(&sql.sized.touch)?.execute(params![key, seq])?;
            }
            WriteOutcome::Done
        }
        WriteOp::Settle { receipts } => {
            if let Some(pending) = &sql.pending {
                let mut ack = tx.prepare_cached(&pending.ack)?;
                let mut nack = tx.prepare_cached(&pending.nack)?;
                for (id, attempt, ok) in receipts {
                    if ok {
                        ack.execute(params![id, attempt])?;
                    } else {
                        nack.execute(params![id, attempt, now])?;
                    }
                }
            }
            WriteOutcome::Done
        }
        WriteOp::Throttle { key, gcra, cost, tat } => {
            if seen.due {
                take_expired(tx, sql, now, &key, &mut expired)?;
            }
            throttle(tx, sql, now, seen, key, gcra, cost, &tat)?
        }
        WriteOp::Touch { key, expires_at } => match &sql.idle {
            Some(idle) => WriteOutcome::Bool(
                tx.prepare_cached(&idle.touch)?.execute(params![key, now, expires_at])? > 0,
            ),
            None => WriteOutcome::Bool(true),
        },
    };
    // Under at_least_once, what this write found expired is leased like a claim.
    let held = match &sql.pending {
        Some(pending) if !expired.is_empty() => {
            let mut hold = tx.prepare_cached(&pending.hold)?;
            for (key, value) in expired.drain(..) {
                hold.execute(params![key, value, now])?;
            }
            true
        }
        _ => false,
    };
    found.append(&mut expired);
    Ok(Applied { outcome, held: held || held_by_many })
}

/// `WriteOp::Throttle` in `tx` (the key's expired row, if any, already taken):
/// one read of the live row, the GCRA step, one upsert if it was allowed.
#[allow(clippy::too_many_arguments)]
fn throttle(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: i64,
    seen: &mut Seen,
    key: String,
    gcra: crate::request::Gcra,
    cost: u32,
    tat: &TatCodec,
) -> rusqlite::Result<WriteOutcome> {
    let row: Option<Vec<u8>> =
        tx.prepare_cached(&sql.get)?.query_row(params![key, now], |r| r.get(0)).optional()?;
    let stored = match row {
        None => None,
        Some(bytes) => match (tat.decode)(&bytes) {
            Some(t) => Some(t),
            None => return Ok(WriteOutcome::NotATat),
        },
    };
    let now_us = now_us();
    let (verdict, new) = gcra.step(now_us, stored, cost);
    let Some(new) = new else { return Ok(WriteOutcome::Throttled { verdict, stored: None }) };
    let Some(value) = (tat.encode)(new) else { return Ok(WriteOutcome::NotATat) };
    // The row lives until the bucket is full again (the arrival time, in ms rounded up).
    let expires_at = i64::try_from(new.div_ceil(1000)).unwrap_or(i64::MAX);
    match seen.next_seq() {
        None => tx.prepare_cached(&sql.upsert)?.execute(params![key, value, expires_at])?,
        Some(seq) => {
            tx.prepare_cached(&sql.sized.upsert_seq)?.execute(params![key, value, expires_at, seq])?
        }
    };
    Ok(WriteOutcome::Throttled { verdict, stored: Some((new, expires_at)) })
}

/// Configures `conn` as the `aside` connection of [`Writer::spawn`]: the
/// store's pragmas, and it never waits for the write lock (the queued claim
/// does) and never checkpoints inside a claim's commit.
pub(super) fn configure_aside(conn: &Connection, config: &super::SqliteConfig) -> rusqlite::Result<()> {
    super::schema::configure(conn, config)?;
    conn.busy_timeout(Duration::ZERO)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)
}

/// Claims up to `limit` due rows in a transaction of its own on `conn` (see
/// [`Writer::claim_aside`]).
fn claim_in(conn: &mut Connection, sql: &Sql, limit: usize) -> rusqlite::Result<WriteOutcome> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let outcome = claim_due(&tx, sql, super::now_ms(), limit)?;
    tx.commit()?;
    Ok(outcome)
}

/// `WriteOp::ClaimDue` in `tx`: takes up to `limit` due rows (`at_most_once`)
/// or leases them (`at_least_once`, see [`lease_due`]).
fn claim_due(tx: &Transaction<'_>, sql: &Sql, now: i64, limit: usize) -> rusqlite::Result<WriteOutcome> {
    Ok(match &sql.pending {
        None => WriteOutcome::Claimed(take_due(tx, sql, now, limit)?),
        Some(pending) => lease_due(tx, sql, pending, now, limit)?,
    })
}

/// Deletes up to `limit` rows due at `now` and returns them (key, stored
/// bytes): the one `DELETE … RETURNING` every claim runs.
fn take_due(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut claim = tx.prepare_cached(&sql.claim_due)?;
    let rows = claim.query_map(params![now, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// The `at_least_once` claim: drops expirations out of attempts, moves up to
/// `limit` due rows into the pending table, then leases up to `limit`
/// pending expirations that are due (new ones, failed ones, and those whose
/// claimer's lease ran out) to this process.
fn lease_due(
    tx: &Transaction<'_>,
    sql: &Sql,
    pending: &super::schema::Pending,
    now: i64,
    limit: usize,
) -> rusqlite::Result<WriteOutcome> {
    let mut abandon = tx.prepare_cached(&pending.abandon)?;
    let mut abandoned = 0;
    for key in abandon.query_map(params![now, pending.max_attempts], |r| r.get::<_, String>(0))? {
        let key = key?;
        tracing::warn!(key, attempts = pending.max_attempts, "expiration dropped: never acknowledged");
        abandoned += 1;
    }
    let due = take_due(tx, sql, now, limit)?;
    let moved = due.len();
    let mut hold = tx.prepare_cached(&pending.hold)?;
    for (key, value) in due {
        hold.execute(params![key, value, now])?;
    }
    let mut lease = tx.prepare_cached(&pending.claim)?;
    let leased: Vec<Leased> = lease
        .query_map(params![now, now.saturating_add(pending.lease_ms), limit as i64], |r| {
            Ok(Leased { id: r.get(0)?, key: r.get(1)?, value: r.get(2)?, attempt: r.get(3)? })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let full = moved == limit || leased.len() == limit;
    Ok(WriteOutcome::Leased { leased, abandoned, full })
}

/// Removes `key` if it is past its deadline, recording it as expired.
fn take_expired(
    tx: &Transaction<'_>,
    sql: &Sql,
    now: i64,
    key: &str,
    expired: &mut Vec<(String, Vec<u8>)>,
) -> rusqlite::Result<()> {
    let value: Option<Vec<u8>> =
        tx.prepare_cached(&sql.take_expired)?.query_row(params![key, now], |r| r.get(0)).optional()?;
    if let Some(value) = value {
        expired.push((key.to_owned(), value));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SqliteConfig;
    use crate::backend::sqlite::schema;
    use crate::delivery::ExpireDelivery;

    /// A writer on a fresh file, with the expiry driver's aside connection.
    fn writer(path: &std::path::Path) -> Writer {
        let config = SqliteConfig::new(path);
        let mut conn = Connection::open(path).unwrap();
        schema::configure(&conn, &config).unwrap();
        schema::create(&mut conn, &config).unwrap();
        let aside = Connection::open(path).unwrap();
        configure_aside(&aside, &config).unwrap();
        let sql = Arc::new(Sql::new(&config.table, &ExpireDelivery::default()));
        Writer::spawn(
            conn,
            Some(aside),
            sql,
            "test".into(),
            true,
            Duration::from_secs(5),
            Arc::new(|_, _, _| {}),
        )
        .unwrap()
    }

    /// The driver claims on its own connection only while the writer
    /// connection checkpoints, and never waits there for the write lock.
    #[tokio::test]
    async fn claims_aside_only_during_a_checkpoint_and_never_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aside.db");
        let writer = writer(&path);
        let other = Connection::open(&path).unwrap();
        let table = &SqliteConfig::new(&path).table;
        let due = super::super::now_ms() - 1;
        other
            .execute(&format!("INSERT INTO \"{table}\" (key, value, expires_at) VALUES ('a', x'00', ?1), ('b', x'00', ?1)"), [due])
            .unwrap();
        assert!(writer.claim_aside(10).is_none(), "no checkpoint under way");

        writer.core.checkpointing.store(true, Ordering::Release);
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(writer.claim_aside(10).is_none(), "another connection holds the write lock");
        other.execute_batch("ROLLBACK").unwrap();

        match writer.claim_aside(1) {
            Some(Ok(WriteOutcome::Claimed(rows))) => assert_eq!(rows.len(), 1),
            _ => panic!("one due row claimed"),
        }
        match writer.claim_aside(10) {
            Some(Ok(WriteOutcome::Claimed(rows))) => assert_eq!(rows.len(), 1, "the other one, once"),
            _ => panic!("the last due row claimed"),
        }
        assert_eq!(writer.core.aside_claims.load(Ordering::Acquire), 2);
    }

    /// After a checkpoint that left frames behind, the next comes
    /// `CHECKPOINT_PAGES` later, or as soon as the WAL started over.
    #[tokio::test]
    async fn a_checkpoint_that_left_frames_moves_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(&dir.path().join("pages.db"));
        let core = &writer.core;
        assert!(!core.wants_checkpoint(CHECKPOINT_PAGES - 1));
        assert!(core.wants_checkpoint(CHECKPOINT_PAGES));
        core.checkpoint_from.store(2 * CHECKPOINT_PAGES, Ordering::Release);
        assert!(!core.wants_checkpoint(2 * CHECKPOINT_PAGES + 10));
        assert!(core.wants_checkpoint(3 * CHECKPOINT_PAGES));
        // A WAL smaller than at that checkpoint started over.
        assert!(!core.wants_checkpoint(10));
        assert!(core.wants_checkpoint(CHECKPOINT_PAGES + 1));
    }
}
