//! Where callbacks run: one Tokio task per async callback, one OS thread (plus
//! at most [`MAX_ABANDONED`] detached ones) per sync callback.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::callback::{AsyncFn, BoxError, SyncFn, THREAD_NAME};
use crate::event::Event;
use crate::stats::Counters;

/// A sync callback whose call overran its timeout keeps its thread until the
/// call returns; at most this many such detached threads exist per callback.
/// Beyond it, the callback's events wait in its queue (and overflow is dropped
/// and counted) until one returns. So a sync callback uses at most
/// `1 + MAX_ABANDONED` threads.
pub const MAX_ABANDONED: usize = 4;

/// What a worker needs besides its callback.
pub(super) struct WorkerContext {
    pub(super) counters: Arc<Counters>,
    /// Cleared on unregister (or past the drain timeout): remaining events are counted as dropped.
    pub(super) alive: Arc<AtomicBool>,
    pub(super) timeout: Option<Duration>,
    /// The callback may return `Err` (then its worker keeps each event to name it in the log).
    pub(super) fallible: bool,
    /// Resolved when the worker has finished (queue closed and drained, or unregistered).
    pub(super) done: oneshot::Sender<()>,
}

/// Runs an async callback over its queue, in order, until the queue closes.
pub(super) fn spawn_async<V: Send + Sync + 'static>(
    runtime: &Handle,
    callback: AsyncFn<V>,
    mut queue: mpsc::Receiver<Event<V>>,
    cx: WorkerContext,
) {
    runtime.spawn(async move {
        while let Some(event) = queue.recv().await {
            if !cx.alive.load(Ordering::Acquire) {
                cx.counters.events_dropped.incr(); // unregistered or past the drain timeout
                event.release(false);
                continue;
            }
            cx.counters.events_delivered.incr();
            // Only a leased expiration needs its outcome reported, and only a
            // fallible callback's error its event named (saves an Arc clone per event).
            let kept = (cx.fallible || event.is_leased()).then(|| event.clone());
            // Building the future may itself panic; so may polling it.
            let call = match catch_unwind(AssertUnwindSafe(|| callback(event))) {
                Ok(fut) => AssertUnwindSafe(fut).catch_unwind(),
                Err(payload) => {
                    finish(&cx.counters, kept.as_ref(), Ended::Panicked(payload));
                    continue;
                }
            };
            let ended = match cx.timeout {
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(returned) => Ended::of(returned),
                    Err(_) => {
                        cx.counters.callbacks_timed_out.incr();
                        Ended::TimedOut(limit)
                    }
                },
                None => Ended::of(call.await),
            };
            finish(&cx.counters, kept.as_ref(), ended);
        }
        let _ = cx.done.send(());
    });
}

/// The state a sync callback's threads share.
struct SyncWorker<V> {
    callback: SyncFn<V>,
    queue: Mutex<mpsc::Receiver<Event<V>>>,
    counters: Arc<Counters>,
    alive: Arc<AtomicBool>,
    timeout: Option<Duration>,
    /// Detached threads still running an overdue call.
    abandoned: AtomicUsize,
    base: Instant,
}

/// One thread's progress, watched by the watchdog.
#[derive(Default)]
struct Slot {
    /// Micros since `base` + 1 when the current call started; 0 when idle.
    started: AtomicU64,
    /// Set by the watchdog: this thread must exit after its current call.
    abandoned: AtomicBool,
    /// Set by the thread when it returns for good.
    exited: AtomicBool,
}

/// Runs a sync callback on its own thread; with a timeout, a watchdog thread
/// detaches overdue calls and starts a replacement thread.
pub(super) fn spawn_sync<V: Send + Sync + 'static>(
    callback: SyncFn<V>,
    queue: mpsc::Receiver<Event<V>>,
    cx: WorkerContext,
) {
    let worker = Arc::new(SyncWorker {
        callback,
        queue: Mutex::new(queue),
        counters: cx.counters,
        alive: cx.alive,
        timeout: cx.timeout,
        abandoned: AtomicUsize::new(0),
        base: Instant::now(),
    });
    match cx.timeout {
        // No timeout: the one thread runs to the end and reports it.
        None => {
            start_thread(&worker, Some(cx.done));
        }
        Some(limit) => {
            let slot = start_thread(&worker, None);
            // The watchdog is a thread too: it must keep time even when the
            // Tokio runtime is busy, blocked or (in tests) on a paused clock.
            let spawned = std::thread::Builder::new()
                .name("livedict-watchdog".into())
                .spawn(move || watchdog(&worker, slot, limit, cx.done));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "no thread for a callback watchdog; its timeout is not enforced");
            }
        }
    }
}

fn start_thread<V: Send + Sync + 'static>(
    worker: &Arc<SyncWorker<V>>,
    done: Option<oneshot::Sender<()>>,
) -> Arc<Slot> {
    let slot = Arc::new(Slot::default());
    let (w, s) = (Arc::clone(worker), Arc::clone(&slot));
    let spawned = std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
        run_thread(&w, &s);
        if let Some(done) = done {
            let _ = done.send(());
        }
    });
    if spawned.is_err() {
        // The OS refused a thread: behave as a worker that exited at once; its
        // events stay queued and are counted as dropped at shutdown.
        slot.exited.store(true, Ordering::Release);
    }
    slot
}

fn run_thread<V>(worker: &SyncWorker<V>, slot: &Slot) {
    loop {
        let event = {
            let mut queue = worker.queue.lock().unwrap_or_else(|p| p.into_inner());
            if slot.abandoned.load(Ordering::Acquire) {
                worker.abandoned.fetch_sub(1, Ordering::AcqRel);
                break;
            }
            next_event(&mut queue)
        };
        let Some(event) = event else { break };
        if !worker.alive.load(Ordering::Acquire) {
            worker.counters.events_dropped.incr(); // unregistered or past the drain timeout
            event.release(false);
            continue;
        }
        worker.counters.events_delivered.incr();
        let started = worker.base.elapsed().as_micros() as u64 + 1;
        slot.started.store(started, Ordering::Release);
        let returned = catch_unwind(AssertUnwindSafe(|| (worker.callback)(&event)));
        slot.started.store(0, Ordering::Release);
        let ended = match Ended::of(returned) {
            // A call the watchdog abandoned at its timeout (and counted) failed, whatever it returned.
            Ended::Ok if slot.abandoned.load(Ordering::Acquire) => {
                Ended::TimedOut(worker.timeout.unwrap_or_default())
            }
            ended => ended,
        };
        finish(&worker.counters, Some(&event), ended);
        drop(event);
        if slot.abandoned.load(Ordering::Acquire) {
            worker.abandoned.fetch_sub(1, Ordering::AcqRel);
            break;
        }
    }
    slot.exited.store(true, Ordering::Release);
}

/// How one call of a callback ended.
enum Ended {
    /// It returned `Ok(())` (or `()`) in time.
    Ok,
    /// A fallible callback returned `Err`.
    Err(BoxError),
    /// It panicked (caught): the panic's payload.
    Panicked(Box<dyn Any + Send>),
    /// It ran past its timeout and was abandoned (already counted).
    TimedOut(Duration),
}

impl Ended {
    /// The end of a call that returned or panicked.
    fn of(returned: std::thread::Result<Result<(), BoxError>>) -> Self {
        match returned {
            Ok(Ok(())) => Ended::Ok,
            Ok(Err(error)) => Ended::Err(error),
            Err(payload) => Ended::Panicked(payload),
        }
    }
}

/// Counts how a call ended, logs a callback's `Err`, and settles the call's
/// share of the receipt of `event` (if it has one; `event` is `None` when
/// the callback can neither fail nor hold a receipt).
fn finish<V>(counters: &Counters, event: Option<&Event<V>>, ended: Ended) {
    match ended {
        Ended::Ok => {
            if let Some(event) = event {
                event.release(true);
            }
        }
        Ended::Err(error) => {
            counters.callbacks_failed.incr();
            let chain = error_chain(error);
            match event {
                Some(event) => {
                    tracing::warn!(
                        key = event.key(),
                        kind = %event.kind(),
                        attempt = event.attempt(),
                        error = %chain,
                        "callback returned an error"
                    );
                    event.fail(|| format!("callback returned an error: {chain}"));
                }
                None => tracing::warn!(error = %chain, "callback returned an error"),
            }
        }
        Ended::Panicked(payload) => {
            counters.callbacks_panicked.incr();
            if let Some(event) = event {
                event.fail(|| match panic_message(&*payload) {
                    Some(message) => format!("callback panicked: {message}"),
                    None => "callback panicked".to_owned(),
                });
            }
        }
        Ended::TimedOut(limit) => {
            if let Some(event) = event {
                event.fail(|| format!("callback timed out after {limit:?}"));
            }
        }
    }
}

/// `error` and its sources, `outer: inner: innermost`. The error is the
/// application's, so formatting (or dropping) it may panic: that is caught.
fn error_chain(error: BoxError) -> String {
    catch_unwind(AssertUnwindSafe(move || {
        let mut chain = error.to_string();
        let mut source = error.source();
        while let Some(inner) = source {
            chain.push_str(": ");
            chain.push_str(&inner.to_string());
            source = inner.source();
        }
        chain
    }))
    .unwrap_or_else(|_| "(the error panicked when formatted)".to_owned())
}

/// The message of a panic whose payload is a string (as `panic!` makes).
fn panic_message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// Polls the queue a little before parking the thread: while events keep
/// coming, writers then never pay for waking it (a futex call per event;
/// measured: set + 1 sync callback ran at ~250k events/s with one wake-up per
/// event). After [`SPINS`] empty polls it blocks as usual.
fn next_event<V>(queue: &mut mpsc::Receiver<Event<V>>) -> Option<Event<V>> {
    for i in 0..SPINS {
        match queue.try_recv() {
            Ok(event) => return Some(event),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if i < SPINS / 2 => std::hint::spin_loop(),
            Err(mpsc::error::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    queue.blocking_recv()
}

/// Empty polls of a sync callback's queue before its thread parks.
const SPINS: u32 = 64;

/// Watches the active thread of a sync callback; detaches a call that overran
/// `limit` and starts a replacement, within the [`MAX_ABANDONED`] bound.
fn watchdog<V: Send + Sync + 'static>(
    worker: &Arc<SyncWorker<V>>,
    mut active: Arc<Slot>,
    limit: Duration,
    done: oneshot::Sender<()>,
) {
    let period = (limit / 4).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let limit_us = limit.as_micros() as u64;
    loop {
        std::thread::sleep(period);
        if active.exited.load(Ordering::Acquire) && !active.abandoned.load(Ordering::Acquire) {
            break; // queue closed or unregistered: the worker is finished
        }
        let started = active.started.load(Ordering::Acquire);
        let now = worker.base.elapsed().as_micros() as u64 + 1;
        if started != 0 && now.saturating_sub(started) > limit_us && !active.abandoned.load(Ordering::Acquire)
        {
            active.abandoned.store(true, Ordering::Release);
            worker.abandoned.fetch_add(1, Ordering::AcqRel);
            worker.counters.callbacks_timed_out.incr();
        }
        if active.abandoned.load(Ordering::Acquire)
            && worker.abandoned.load(Ordering::Acquire) <= MAX_ABANDONED
        {
            if !worker.alive.load(Ordering::Acquire) {
                break;
            }
            active = start_thread(worker, None);
        }
    }
    let _ = done.send(());
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("mailer unavailable")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[derive(Debug)]
    struct Unprintable;

    impl fmt::Display for Unprintable {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            panic!("a Display that panics")
        }
    }

    impl std::error::Error for Unprintable {}

    #[test]
    fn an_error_is_described_with_its_sources() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(error_chain(Box::new(Outer(inner))), "mailer unavailable: connection refused");
        assert_eq!(error_chain("plain".into()), "plain");
    }

    #[test]
    fn an_error_whose_display_panics_is_still_described() {
        assert_eq!(error_chain(Box::new(Unprintable)), "(the error panicked when formatted)");
    }

    #[test]
    fn a_panic_message_is_read_from_str_and_string_payloads() {
        let text: Box<dyn Any + Send> = Box::new("static");
        let owned: Box<dyn Any + Send> = Box::new(String::from("formatted"));
        let other: Box<dyn Any + Send> = Box::new(7u32);
        assert_eq!(panic_message(&*text), Some("static"));
        assert_eq!(panic_message(&*owned), Some("formatted"));
        assert_eq!(panic_message(&*other), None);
    }
}
