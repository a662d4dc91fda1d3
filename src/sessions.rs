//! A [`tower-sessions`](https://docs.rs/tower-sessions) session store over
//! any livedict store (cargo feature `tower-sessions`).
//!
//! [`LiveDictStore`] implements [`tower_sessions_core::SessionStore`] (0.15)
//! on a [`LiveDict<Record>`](crate::LiveDict): in-process memory, an SQLite
//! file or a Redis server, chosen by the URL the dictionary was opened with.
//! Put it under a `tower_sessions::SessionManagerLayer` like any other store.
//!
//! - Each session record is stored under `session:<id>` ([`LiveDictStore::key`])
//!   with a TTL equal to its `expiry_date` minus now (rounded up to the
//!   millisecond, at most [`MAX_TTL`]), so the store's expiry driver
//!   removes it at its expiry date, whether or not anyone asks for it again.
//!   A record whose expiry date has already passed is deleted, not stored.
//! - [`create`](SessionStore::create) never overwrites a session: it inserts
//!   only if the id is free, and on a collision draws a new id and tries
//!   again. The check and the insert are one atomic step
//!   ([`LiveDict::compare_and_set_with_ttl`]), across every process sharing
//!   the SQLite file or Redis namespace.
//! - [`load`](SessionStore::load) of a missing, deleted or expired id is
//!   `None`.
//! - livedict errors map to [`session_store::Error`]: `Encode` and `Decode`
//!   to their namesakes, everything else to `Backend` (with the message).
//!
//! # Hearing that a session ended
//!
//! The dictionary handle stays yours: the store only reads and writes
//! records through it. Register an [`EventKind::Expire`](crate::EventKind::Expire)
//! callback on it (or [`watch`](LiveDict::watch) it) and you are told when
//! each session times out, with the expired [`Record`] — its id and its
//! data — so you can clean up what belongs to it. `Delete` events report
//! sessions that ended by logout (`Session::flush` or `Session::delete` call
//! [`delete`](SessionStore::delete)) or by an id cycle.
//!
//! Cleanup can fail (the service it calls is down): make it a
//! [`Callback::fallible`](crate::Callback::fallible) and return the error.
//! It is logged and counted (`stats().callbacks_failed`), and on a store
//! opened with `expire_delivery=at_least_once` the ended session is
//! delivered again, [`attempt`](crate::Event::attempt) one higher, until
//! the cleanup succeeds or `expire_max_attempts` is reached. Here the
//! cleanup hands the session's user to a channel, and fails if nobody
//! listens any more:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use livedict::sessions::LiveDictStore;
//! use livedict::{Callback, Event, EventKind, LiveDict};
//! use tower_sessions_core::SessionStore;
//! use tower_sessions_core::session::{Id, Record};
//!
//! // Or sqlite://…, redis://…; at least once: a failed cleanup gets the session again.
//! let dict = LiveDict::<Record>::open("memory://?expire_delivery=at_least_once").await?;
//! let (tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
//! dict.register_callback(
//!     EventKind::Expire,
//!     Callback::fallible(move |ev: &Event<Record>| {
//!         // The expired session, with its data.
//!         let user = ev.value().and_then(|r| r.data.get("user").cloned());
//!         tx.send(user) // `Err` when the receiver is gone: a failed cleanup
//!     }),
//! )?;
//! let store = LiveDictStore::new(dict.clone());
//!
//! // What `SessionManagerLayer` does with a new session:
//! let mut record = Record {
//!     id: Id::default(),
//!     data: [("user".to_string(), serde_json::json!("alice"))].into(),
//!     expiry_date: time::OffsetDateTime::now_utc() + time::Duration::milliseconds(50),
//! };
//! store.create(&mut record).await?;
//! assert_eq!(store.load(&record.id).await?, Some(record.clone()));
//! assert!(dict.ttl(LiveDictStore::key(&record.id)).await?.is_some());
//!
//! // Nobody touches the session again: its expiry still reaches the callback.
//! assert_eq!(ended.recv().await, Some(Some(serde_json::json!("alice"))));
//! assert_eq!(store.load(&record.id).await?, None);
//! # Ok(()) }
//! ```
//!
//! # With axum
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use livedict::LiveDict;
//! use livedict::sessions::LiveDictStore;
//! use tower_sessions::{Expiry, Session, SessionManagerLayer};
//!
//! async fn visits(session: Session) -> String {
//!     let n: u64 = session.get("visits").await.unwrap().unwrap_or(0) + 1;
//!     session.insert("visits", n).await.unwrap();
//!     format!("visit {n}")
//! }
//!
//! let dict = LiveDict::builder().url("redis://127.0.0.1:6379/0").namespace("sessions").build().await?;
//! let layer = SessionManagerLayer::new(LiveDictStore::new(dict))
//!     .with_expiry(Expiry::OnInactivity(tower_sessions::cookie::time::Duration::minutes(30)));
//! let app: Router = Router::new().route("/", get(visits)).layer(layer);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! `examples/axum_session_store.rs` is a complete server: sessions in this
//! store, an `Expire` callback that cleans up after each session, and a
//! per-session counter incremented under a lock.

use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_sessions_core::SessionStore;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store;

use crate::{Error, LiveDict, MAX_TTL};

/// Prefix of every session's key: a session with id `id` is stored under
/// `session:<id>` (the id in its cookie form, 22 base64url characters).
pub const KEY_PREFIX: &str = "session:";

/// How many ids [`create`](SessionStore::create) draws before giving up with
/// a `Backend` error (a collision of two random 128-bit ids is already
/// astronomically rare; this only bounds a store that answers "taken" forever).
const CREATE_ATTEMPTS: usize = 16;

/// A [`SessionStore`] keeping `tower-sessions` records in a [`LiveDict`], each
/// with a TTL at its expiry date (see the [module docs](self)).
///
/// Cheap to clone (clones share the dictionary).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
/// use livedict::LiveDict;
/// use livedict::sessions::LiveDictStore;
///
/// let store = LiveDictStore::new(LiveDict::open("memory://").await?);
/// assert!(store.dict().is_empty().await?);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LiveDictStore {
    dict: LiveDict<Record>,
}

impl LiveDictStore {
    /// A store writing session records into `dict`.
    ///
    /// The handle stays yours: keep a clone to register an `Expire` callback
    /// (the application hears when a session times out, with its data), to
    /// read stats, or to [`shutdown`](LiveDict::shutdown) the store. Open the
    /// dictionary without a `default_ttl`: each record gets its own TTL.
    pub fn new(dict: LiveDict<Record>) -> Self {
        LiveDictStore { dict }
    }

    /// The dictionary the records live in.
    pub fn dict(&self) -> &LiveDict<Record> {
        &self.dict
    }

    /// The key of session `id`: [`KEY_PREFIX`] followed by the id's cookie
    /// form.
    ///
    /// ```
    /// use livedict::sessions::LiveDictStore;
    /// use tower_sessions_core::session::Id;
    /// assert_eq!(LiveDictStore::key(&Id(0)), "session:AAAAAAAAAAAAAAAAAAAAAA");
    /// ```
    pub fn key(id: &Id) -> String {
        format!("{KEY_PREFIX}{id}")
    }
}

/// Time left until `record` expires, rounded up to whole milliseconds (so a
/// record never leaves before its expiry date) and capped at [`MAX_TTL`];
/// `None` if the expiry date has passed.
fn ttl_of(record: &Record) -> Option<Duration> {
    let left = record.expiry_date - OffsetDateTime::now_utc();
    if !left.is_positive() {
        return None;
    }
    let left = Duration::try_from(left).ok()?;
    let ms = u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    Some(Duration::from_millis(ms).min(MAX_TTL))
}

/// A livedict error as a session-store error.
fn store_error(e: Error) -> session_store::Error {
    match e {
        Error::Encode { .. } => session_store::Error::Encode(e.to_string()),
        Error::Decode { .. } => session_store::Error::Decode(e.to_string()),
        e => session_store::Error::Backend(e.to_string()),
    }
}

#[async_trait]
impl SessionStore for LiveDictStore {
    /// Stores a new session, never overwriting one: if `record.id` is taken,
    /// draws new ids (updating `record.id`) until one is free. Check and
    /// insert are one atomic step, across processes on SQLite and Redis.
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // Already expired: nothing to store, and nothing to delete either — an
        // id not stored by us may belong to another live session.
        let Some(ttl) = ttl_of(record) else { return Ok(()) };
        for _ in 0..CREATE_ATTEMPTS {
            // Insert-if-absent with the record's deadline in one atomic step:
            // on Redis one script call, elsewhere under the key's lock (held
            // across processes on SQLite). `compare_and_set(key, None, …)`
            // followed by `expire` would be two steps, and a crash or failure
            // between them would leave a session without a deadline.
            let key = Self::key(&record.id);
            if self
                .dict
                .compare_and_set_with_ttl(&key, None, record.clone(), ttl)
                .await
                .map_err(store_error)?
            {
                return Ok(());
            }
            record.id = Id::default();
        }
        Err(session_store::Error::Backend(format!("no free session id after {CREATE_ATTEMPTS} attempts")))
    }

    /// Stores `record` under its id (replacing what was there) with a TTL at
    /// its expiry date; a record already past it is deleted instead.
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let key = Self::key(&record.id);
        match ttl_of(record) {
            Some(ttl) => self.dict.set_with_ttl(&key, record.clone(), ttl).await.map_err(store_error),
            None => self.dict.delete(&key).await.map(drop).map_err(store_error),
        }
    }

    /// The live record of `session_id`, or `None` if it is missing, deleted
    /// or expired.
    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let record = self.dict.get(Self::key(session_id)).await.map_err(store_error)?;
        // The TTL already removes expired records; this also holds for the
        // millisecond the TTL was rounded up by, and for a clock skewed
        // between processes.
        Ok(record.filter(|r| r.expiry_date > OffsetDateTime::now_utc()))
    }

    /// Removes the session (fires a `Delete` event if there was one).
    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        self.dict.delete(Self::key(session_id)).await.map(drop).map_err(store_error)
    }
}
