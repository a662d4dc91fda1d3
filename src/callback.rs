//! User callbacks: sync closures or async functions, infallible or returning
//! a `Result`, each with an optional timeout.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::event::Event;

/// The name of the threads sync callbacks run on (see [`Callback`], "Quiet panics").
///
/// ```
/// assert_eq!(livedict::callback::THREAD_NAME, "livedict-callback");
/// ```
pub const THREAD_NAME: &str = "livedict-callback";

/// The error a fallible callback returned, as the sandbox keeps it.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A function called with events of one [`EventKind`](crate::EventKind).
///
/// Callbacks run in a sandbox, never on the caller's path: each registered
/// callback has its own bounded queue and gets its events in order, exactly
/// once. Sync callbacks run on a dedicated OS thread (never on a Tokio
/// worker); async callbacks run as one Tokio task. A panic is caught and
/// counted; a call past its timeout is abandoned (async: dropped; sync:
/// detached and counted) and the next event proceeds.
///
/// ```
/// use std::time::Duration;
/// use livedict::{Callback, Event};
/// let log = Callback::new(|ev: &Event<String>| println!("{} {}", ev.kind(), ev.key()));
/// let slow = Callback::new_async(|ev: Event<String>| async move {
///     tokio::time::sleep(Duration::from_millis(1)).await;
///     let _ = ev.value();
/// })
/// .timeout(Duration::from_secs(1));
/// # let _ = (log, slow);
/// ```
///
/// # Failing without panicking
///
/// [`Callback::fallible`] and [`Callback::fallible_async`] take a function
/// returning `Result<(), E>`. An `Err` is a failed delivery, exactly like a
/// panic or a timeout, but it is an ordinary value:
///
/// - it is logged (`tracing` warn, with the key, the event's kind, its
///   [attempt](Event::attempt) and the error's chain of sources) and counted
///   in [`Stats::callbacks_failed`](crate::Stats::callbacks_failed), apart
///   from [`callbacks_panicked`](crate::Stats::callbacks_panicked) and
///   [`callbacks_timed_out`](crate::Stats::callbacks_timed_out);
/// - for an `Expire` event under
///   [`Delivery::AtLeastOnce`](crate::Delivery::AtLeastOnce), the expiration
///   is delivered again ([`Event::attempt`] one higher) until
///   `expire_max_attempts`; an expiration whose last attempt failed is
///   dropped, counted in
///   [`Stats::expirations_abandoned`](crate::Stats::expirations_abandoned),
///   and its last error logged at error level;
/// - under the default [`Delivery::AtMostOnce`](crate::Delivery::AtMostOnce)
///   (and for every other kind of event) nothing is retried.
///
/// So a callback asking for a retry ("the mailer is down") returns `Err`
/// instead of panicking, and `callbacks_panicked` keeps counting bugs only.
///
/// # Quiet panics
///
/// A panicking callback is still caught and counted, and the store carries
/// on; but Rust's default panic hook prints the panic (and a backtrace, with
/// `RUST_BACKTRACE` set) on stderr first. livedict installs no panic hook:
/// the hook is the application's. An application that wants its callbacks'
/// panics quiet can skip them in its own hook: sync callbacks run on threads
/// named [`THREAD_NAME`] (`livedict-callback`). Async callbacks run on the
/// Tokio runtime's worker threads, which a hook cannot tell apart by name.
///
/// ```
/// let default_hook = std::panic::take_hook();
/// std::panic::set_hook(Box::new(move |info| {
///     // Caught and counted in `stats().callbacks_panicked`: say nothing.
///     if std::thread::current().name() != Some(livedict::callback::THREAD_NAME) {
///         default_hook(info);
///     }
/// }));
/// ```
pub struct Callback<V> {
    pub(crate) body: CallbackBody<V>,
    pub(crate) timeout: Option<Duration>,
    /// Built by `fallible` or `fallible_async`: it may return `Err`.
    pub(crate) fallible: bool,
}

pub(crate) type SyncFn<V> = Arc<dyn Fn(&Event<V>) -> Result<(), BoxError> + Send + Sync>;
pub(crate) type AsyncFn<V> = Arc<dyn Fn(Event<V>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

pub(crate) enum CallbackBody<V> {
    Sync(SyncFn<V>),
    Async(AsyncFn<V>),
}

impl<V: 'static> Callback<V> {
    /// A sync callback. It runs on its own OS thread, so it may block.
    ///
    /// ```
    /// use livedict::{Callback, Event};
    /// let cb = Callback::new(|ev: &Event<u32>| println!("{}", ev.key()));
    /// # let _ = cb;
    /// ```
    pub fn new(f: impl Fn(&Event<V>) + Send + Sync + 'static) -> Self {
        Self::sync(
            move |ev| {
                f(ev);
                Ok(())
            },
            false,
        )
    }

    /// An async callback, run as a Tokio task; cancelled at its timeout.
    ///
    /// ```
    /// use livedict::{Callback, Event};
    /// let cb = Callback::new_async(|ev: Event<u32>| async move { println!("{}", ev.key()) });
    /// # let _ = cb;
    /// ```
    pub fn new_async<F, Fut>(f: F) -> Self
    where
        F: Fn(Event<V>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::asynchronous(move |ev| f(ev).map(Ok).boxed(), false)
    }

    /// A sync callback that can fail: an `Err` is a failed delivery (logged,
    /// counted in [`Stats::callbacks_failed`](crate::Stats::callbacks_failed),
    /// and under [`Delivery::AtLeastOnce`](crate::Delivery::AtLeastOnce) the
    /// expiration is delivered again; see "Failing without panicking" above).
    /// It runs on its own OS thread, so it may block.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{Callback, Event, EventKind, LiveDict};
    /// let d = LiveDict::<String>::open("memory://?expire_delivery=at_least_once").await?;
    /// d.register_callback(
    ///     EventKind::Expire,
    ///     Callback::fallible(|ev: &Event<String>| {
    ///         if ev.attempt() == 1 {
    ///             return Err("the mailer is down"); // delivered again, attempt 2
    ///         }
    ///         println!("emailed {:?}", ev.value());
    ///         Ok(())
    ///     }),
    /// )?;
    /// # Ok(()) }
    /// ```
    pub fn fallible<E>(f: impl Fn(&Event<V>) -> Result<(), E> + Send + Sync + 'static) -> Self
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Self::sync(move |ev| f(ev).map_err(Into::into), true)
    }

    /// An async callback that can fail (see [`Callback::fallible`]), run as a
    /// Tokio task; cancelled at its timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use livedict::{Callback, Event};
    /// let cb = Callback::fallible_async(|ev: Event<String>| async move {
    ///     let email = ev.value().ok_or("no address")?;
    ///     tokio::time::sleep(Duration::from_millis(1)).await; // send it
    ///     println!("emailed {email}");
    ///     Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// })
    /// .timeout(Duration::from_secs(5));
    /// # let _ = cb;
    /// ```
    pub fn fallible_async<F, Fut, E>(f: F) -> Self
    where
        F: Fn(Event<V>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Self::asynchronous(move |ev| f(ev).map(|r| r.map_err(Into::into)).boxed(), true)
    }

    fn sync(f: impl Fn(&Event<V>) -> Result<(), BoxError> + Send + Sync + 'static, fallible: bool) -> Self {
        Callback { body: CallbackBody::Sync(Arc::new(f)), timeout: None, fallible }
    }

    fn asynchronous(
        f: impl Fn(Event<V>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync + 'static,
        fallible: bool,
    ) -> Self {
        Callback { body: CallbackBody::Async(Arc::new(f)), timeout: None, fallible }
    }

    /// Abandons any single call that runs longer than `timeout` (overrides the
    /// store's default callback timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// use livedict::{Callback, Event};
    /// let cb = Callback::fallible(|_: &Event<u32>| Ok::<(), std::io::Error>(()))
    ///     .timeout(Duration::from_millis(500));
    /// # let _ = cb;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<V> fmt::Debug for Callback<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.body {
            CallbackBody::Sync(_) => "sync",
            CallbackBody::Async(_) => "async",
        };
        f.debug_struct("Callback")
            .field("kind", &kind)
            .field("fallible", &self.fallible)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Identifies a registered callback, for enabling, disabling and unregistering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallbackId(pub(crate) u64);
