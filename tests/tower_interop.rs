//! Tower interop, both ways:
//!
//! - the memory store's service behind third-party Tower middleware
//!   (`ConcurrencyLimit`, `LoadShed`, `Buffer`) composed with
//!   `ServiceBuilder` and handed to `LiveDict::from_service`;
//! - livedict's own layers (`CallbackLayer`, `LockLayer`, `TimeoutLayer`,
//!   `TraceLayer`) around a user's backend: a `HashMap` behind a `Mutex`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use livedict::backend::{MemoryBackend, MemoryConfig};
use livedict::layer::{CallbackLayer, DispatchConfig, Dispatcher, LockLayer, TimeoutLayer, TraceLayer};
use livedict::{
    Callback, Error, Event, EventKind, EventSink, LiveDict, LockGrant, Request, Response, Result,
};
use tokio::sync::RwLock;
use tower::ServiceBuilder;

/// One delivered event: kind, key, value.
type Seen = (EventKind, String, Option<u32>);

/// Records every event a store delivers to its callbacks.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn listen(&self, d: &LiveDict<u32>, kinds: &[EventKind]) {
        for &kind in kinds {
            let log = self.clone();
            let cb = Callback::new(move |ev: &Event<u32>| {
                log.0.lock().unwrap().push((ev.kind(), ev.key().to_owned(), ev.value().copied()));
            });
            d.register_callback(kind, cb).unwrap();
        }
    }

    /// Waits (up to 2 s) for `n` events and returns them sorted.
    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let events = self.0.lock().unwrap().clone();
            if events.len() >= n || Instant::now() > deadline {
                let mut events = events;
                events.sort_by(|a, b| (a.1.as_str(), a.0.as_str()).cmp(&(b.1.as_str(), b.0.as_str())));
                return events;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The store behind third-party middleware.
// ---------------------------------------------------------------------------

/// livedict's layers with `LoadShed → Buffer → ConcurrencyLimit` between the
/// `LockLayer` and the `CallbackLayer`, and a `gate` below the limit that
/// holds every response while write-locked.
///
/// Third-party limits go *below* the `LockLayer`: a `lock` call waits for its
/// key inside the `LockLayer`, so a concurrency limit above it would let
/// waiters hold every permit while the holder's own writes (and its unlock)
/// queue behind them until the lock timeout.
fn limited_store(limit: usize, bound: usize, gate: Arc<RwLock<()>>) -> LiveDict<u32> {
    let dispatcher = Dispatcher::<u32>::new(DispatchConfig::default()).unwrap();
    let backend = MemoryBackend::new(MemoryConfig::default(), dispatcher.sink()).unwrap();
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new("memory"))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .layer(LockLayer::new().with_stats_of(&dispatcher))
        .map_err(Error::from) // `Buffer` and `LoadShed` box errors; this unboxes livedict's
        .load_shed()
        .buffer(bound)
        .concurrency_limit(limit)
        .map_future(move |response| {
            let gate = Arc::clone(&gate);
            async move {
                let _open = gate.read().await;
                response.await
            }
        })
        .layer(CallbackLayer::new(dispatcher.clone()))
        .service(backend);
    LiveDict::from_service(stack, dispatcher)
}

/// The default stack behind a `Buffer`, which boxes every error.
fn buffered_store() -> LiveDict<u32> {
    let dispatcher = Dispatcher::<u32>::new(DispatchConfig::default()).unwrap();
    let backend = MemoryBackend::new(MemoryConfig::default(), dispatcher.sink()).unwrap();
    let stack = ServiceBuilder::new()
        .map_err(Error::from)
        .buffer(64)
        .layer(TraceLayer::new("memory"))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .layer(LockLayer::new().with_stats_of(&dispatcher))
        .layer(CallbackLayer::new(dispatcher.clone()))
        .service(backend);
    LiveDict::from_service(stack, dispatcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_works_behind_buffer_load_shed_and_concurrency_limit() {
    let d = limited_store(4, 1024, Arc::default());
    let events = Recorder::default();
    events.listen(&d, &[EventKind::Set]);

    let writers: Vec<_> = (0..100u32)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move { d.set(format!("k{i}"), i).await })
        })
        .collect();
    for w in writers {
        w.await.unwrap().unwrap();
    }
    assert_eq!(d.len().await.unwrap(), 100);
    assert_eq!(d.get("k42").await.unwrap(), Some(42));

    // Locked read-modify-writes from 100 tasks through the buffer: none lost.
    let incrementers: Vec<_> = (0..100)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move {
                let guard = d.lock("counter", Duration::from_secs(10)).await?;
                let n = guard.get().await?.unwrap_or(0);
                guard.set(n + 1).await?;
                guard.unlock().await
            })
        })
        .collect();
    for t in incrementers {
        t.await.unwrap().unwrap();
    }
    assert_eq!(d.get("counter").await.unwrap(), Some(100));

    let set_events = events.wait_for(200).await;
    assert_eq!(set_events.len(), 200, "one Set event per write");
    let s = d.stats();
    assert_eq!((s.sets, s.hits, s.misses), (200, 101, 1));
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn livedict_errors_survive_the_boxing_middleware() {
    let d = buffered_store();
    let held = d.lock("k", Duration::from_secs(1)).await.unwrap();
    let err = d.lock("k", Duration::from_millis(20)).await.unwrap_err();
    assert!(matches!(err, Error::LockTimeout { ref key } if key == "k"), "{err:?}");
    assert!(matches!(d.get("").await.unwrap_err(), Error::InvalidKey { .. }));
    held.unlock().await.unwrap();
    assert_eq!(d.stats().lock_timeouts, 1);
}

#[tokio::test]
async fn overloaded_store_sheds_requests_instead_of_queueing_them() {
    // One request in flight, a buffer of one: with responses held at the gate,
    // at most three requests are accepted (in flight, held by the buffer's
    // worker, queued); the rest are shed at once.
    let gate = Arc::new(RwLock::new(()));
    let d = limited_store(1, 1, Arc::clone(&gate));
    let closed = Arc::clone(&gate).write_owned().await;

    let requests: Vec<_> = (0..10u32)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move { d.set(format!("k{i}"), i).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(closed);

    let (mut accepted, mut shed) = (0, 0);
    for r in requests {
        match r.await.unwrap() {
            Ok(()) => accepted += 1,
            Err(Error::Backend { backend: "tower", source: Some(source), .. })
                if source.is::<tower::load_shed::error::Overloaded>() =>
            {
                shed += 1
            }
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert!((1..=3).contains(&accepted), "accepted {accepted}, shed {shed}");
    assert_eq!(accepted + shed, 10);
    assert_eq!(d.len().await.unwrap(), accepted, "shed writes were not applied");

    // Once the load is gone the store serves again.
    d.set("after", 1).await.unwrap();
    assert_eq!(d.get("after").await.unwrap(), Some(1));
}

// ---------------------------------------------------------------------------
// livedict's layers around a user's backend.
// ---------------------------------------------------------------------------

/// A user's backend: a `HashMap` behind a `Mutex`, expiring lazily on access
/// and reporting expirations to livedict's `EventSink`. While `gate` is
/// write-locked every request waits (to provoke timeouts).
#[derive(Clone)]
struct MapBackend {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    gate: Arc<RwLock<()>>,
    sink: EventSink<u32>,
}

struct Entry {
    value: u32,
    deadline: Option<Instant>,
}

impl MapBackend {
    fn new(sink: EventSink<u32>) -> Self {
        MapBackend { entries: Arc::default(), gate: Arc::default(), sink }
    }

    /// Removes `key` if its deadline passed (reporting it), and returns it if live.
    fn live<'m>(&self, map: &'m mut HashMap<String, Entry>, key: &str) -> Option<&'m mut Entry> {
        if map.get(key).is_some_and(|e| e.deadline.is_some_and(|d| d <= Instant::now())) {
            let expired = map.remove(key).map(|e| e.value);
            self.sink.expired(key, || expired);
        }
        map.get_mut(key)
    }

    fn apply(&self, req: Request<u32>) -> Result<Response<u32>> {
        let mut map = self.entries.lock().unwrap();
        let now = Instant::now();
        Ok(match req {
            Request::Get { key } => Response::Value(self.live(&mut map, &key).map(|e| e.value)),
            Request::Exists { key } => Response::Bool(self.live(&mut map, &key).is_some()),
            Request::Ttl { key } => Response::Ttl(
                self.live(&mut map, &key).and_then(|e| e.deadline).map(|d| d.saturating_duration_since(now)),
            ),
            Request::Set { key, value, ttl, .. } => {
                map.insert(key, Entry { value, deadline: ttl.map(|t| now + t) });
                Response::Done
            }
            Request::Delete { key, .. } => {
                let value = self.live(&mut map, &key).map(|e| e.value);
                map.remove(&key);
                Response::Deleted { removed: value.is_some(), value }
            }
            Request::Expire { key, ttl, .. } => {
                let entry = self.live(&mut map, &key);
                Response::Bool(entry.map(|e| e.deadline = Some(now + ttl)).is_some())
            }
            Request::Persist { key, .. } => {
                let entry = self.live(&mut map, &key);
                Response::Bool(entry.is_some_and(|e| e.deadline.take().is_some()))
            }
            Request::Keys | Request::Items | Request::Len => {
                let keys: Vec<String> = map.keys().cloned().collect();
                let live: Vec<(String, u32)> = keys
                    .into_iter()
                    .filter_map(|k| self.live(&mut map, &k).map(|e| e.value).map(|v| (k, v)))
                    .collect();
                match req {
                    Request::Keys => Response::Keys(live.into_iter().map(|(k, _)| k).collect()),
                    Request::Items => Response::Items(live),
                    _ => Response::Len(live.len()),
                }
            }
            Request::Clear => {
                map.clear();
                Response::Done
            }
            // Locks are held by the `LockLayer` above; this backend has no
            // cross-process state to take.
            Request::Lock { .. } => Response::Locked(LockGrant::local()),
            Request::Unlock { .. } | Request::Renew { .. } | Request::Shutdown => Response::Done,
            other => return Err(Error::backend_msg("map", format!("unsupported request `{}`", other.op()))),
        })
    }
}

impl tower::Service<Request<u32>> for MapBackend {
    type Response = Response<u32>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Response<u32>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<u32>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let _open = this.gate.read().await;
            this.apply(req)
        })
    }
}

/// livedict's four layers around a fresh `MapBackend`; returns the store and
/// the backend (to hold its gate).
fn map_store(request_timeout: Duration) -> (LiveDict<u32>, MapBackend) {
    let dispatcher = Dispatcher::<u32>::new(DispatchConfig::default()).unwrap();
    let backend = MapBackend::new(dispatcher.sink());
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new("map"))
        .layer(TimeoutLayer::new(request_timeout))
        .layer(LockLayer::new().with_stats_of(&dispatcher))
        .layer(CallbackLayer::new(dispatcher.clone()))
        .service(backend.clone());
    (LiveDict::from_service(stack, dispatcher), backend)
}

#[tokio::test]
async fn callback_layer_fires_events_for_a_custom_backend() {
    let (d, _backend) = map_store(Duration::from_secs(5));
    let events = Recorder::default();
    events.listen(&d, &[EventKind::Set, EventKind::Get, EventKind::Delete, EventKind::Expire]);

    d.set("a", 1).await.unwrap();
    assert_eq!(d.get("a").await.unwrap(), Some(1));
    assert_eq!(d.get("missing").await.unwrap(), None); // a miss fires nothing
    assert!(d.delete("a").await.unwrap());
    assert!(!d.delete("a").await.unwrap()); // nothing removed, no event
    d.set_with_ttl("t", 7, Duration::from_millis(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(d.get("t").await.unwrap(), None); // the backend expires it lazily

    let got = events.wait_for(5).await;
    let want = vec![
        (EventKind::Delete, "a".to_owned(), Some(1)),
        (EventKind::Get, "a".to_owned(), Some(1)),
        (EventKind::Set, "a".to_owned(), Some(1)),
        (EventKind::Expire, "t".to_owned(), Some(7)),
        (EventKind::Set, "t".to_owned(), Some(7)),
    ];
    assert_eq!(got, want);
    let s = d.stats();
    assert_eq!((s.sets, s.hits, s.misses, s.deletes, s.expirations), (2, 1, 2, 1, 1));
    d.shutdown().await.unwrap();
    assert_eq!(d.stats().events_delivered, 5);
}

#[tokio::test]
async fn lock_layer_enforces_locks_on_a_custom_backend() {
    let (d, _backend) = map_store(Duration::from_secs(5));
    let guard = d.lock("k", Duration::from_secs(1)).await.unwrap();

    // A plain write waits for the holder; the holder's writes and all reads pass.
    let writer = tokio::spawn({
        let d = d.clone();
        async move { d.set("k", 2).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!writer.is_finished(), "a write passed a lock held by someone else");
    guard.set(1).await.unwrap();
    assert_eq!(d.get("k").await.unwrap(), Some(1));

    // A second locker gives up at its timeout.
    let err = d.lock("k", Duration::from_millis(20)).await.unwrap_err();
    assert!(matches!(err, Error::LockTimeout { ref key } if key == "k"), "{err:?}");

    drop(guard); // released on drop: the waiting write goes through
    writer.await.unwrap().unwrap();
    assert_eq!(d.get("k").await.unwrap(), Some(2));
    let s = d.stats();
    assert!(s.lock_waits >= 2, "{s:?}");
    assert_eq!(s.lock_timeouts, 1);
}

#[tokio::test]
async fn timeout_layer_maps_a_stuck_custom_backend_to_error_timeout() {
    let (d, backend) = map_store(Duration::from_millis(50));
    d.set("a", 1).await.unwrap();

    let stuck = Arc::clone(&backend.gate).write_owned().await;
    let started = Instant::now();
    let err = d.get("a").await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { op: "get", after } if after == Duration::from_millis(50)),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(50));

    // A write waiting for another holder's lock is bounded by the same deadline.
    drop(stuck);
    let guard = d.lock("a", Duration::from_secs(1)).await.unwrap();
    let err = d.set("a", 2).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { op: "set", .. }), "{err:?}");
    guard.unlock().await.unwrap();
    assert_eq!(d.get("a").await.unwrap(), Some(1));
}
