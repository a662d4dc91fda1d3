//! The event feed: every process sharing a namespace publishes its events on
//! the channel `ld:{ns}:events`, and hands the events of the others to its
//! watches, so a [`Watch`](crate::Watch) sees the whole namespace.
//!
//! One frame per event: `[version 1][kind][origin u64][key length u32][key]
//! [has value][value encoded by the codec]`. A process skips its own frames
//! (by origin). Publishing is fire-and-forget from a bounded queue: a full
//! queue drops the frame (counted in `stats().events_dropped`), never a writer.

use std::sync::{Arc, Mutex};

use fred::bytes::{BufMut, Bytes, BytesMut};
use fred::clients::SubscriberClient;
use fred::interfaces::{EventInterface, PubsubInterface};
use fred::types::config::Config as FredConfig;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::near::NearCache;
use super::routers::{Routers, quit_failed};
use super::{RedisBackend, Shared};
use crate::Value;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::event::dispatch::Dispatcher;
use crate::event::relay::{Outbox, Outgoing, Relay};
use crate::event::watch::Watchers;
use crate::event::{Event, EventKind};

const VERSION: u8 = 1;
/// Frames waiting to be published before new ones are dropped.
const OUTBOX: usize = 8192;

/// Publishes this process's events; [`Relay`] for the dispatcher.
struct RedisRelay {
    origin: u64,
    codec: Codec,
    outbox: Outbox<Bytes>,
    /// Stops the subscriber task when taken (close) or dropped.
    stop: Mutex<Option<DropGuard>>,
}

impl<V: Value> Relay<V> for RedisRelay {
    fn publish(&self, event: &Event<V>) {
        // It was stored, so it encodes; if not, the event is relayed without it.
        let value = event.value().and_then(|v| self.codec.encode(event.key(), v).ok());
        self.outbox.push(encode(self.origin, event.kind(), event.key(), value.as_deref()));
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.outbox.close()
    }
}

fn encode(origin: u64, kind: EventKind, key: &str, value: Option<&[u8]>) -> Bytes {
    let mut b = BytesMut::with_capacity(15 + key.len() + value.map_or(0, <[u8]>::len));
    b.put_u8(VERSION);
    b.put_u8(kind.index() as u8);
    b.put_u64(origin);
    b.put_u32(key.len() as u32);
    b.put_slice(key.as_bytes());
    match value {
        Some(v) => {
            b.put_u8(1);
            b.put_slice(v);
        }
        None => b.put_u8(0),
    }
    b.freeze()
}

/// A decoded frame: origin, kind, key, encoded value.
type Frame<'a> = (u64, EventKind, &'a str, Option<&'a [u8]>);

fn decode(frame: &[u8]) -> Option<Frame<'_>> {
    let (&[version, kind], rest) = frame.split_first_chunk::<2>()?;
    if version != VERSION {
        return None;
    }
    let kind = *EventKind::ALL.get(kind as usize)?;
    let (origin, rest) = rest.split_first_chunk::<8>()?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    let key = std::str::from_utf8(rest.get(..len)?).ok()?;
    let (&has_value, value) = rest.get(len..)?.split_first()?;
    Some((u64::from_be_bytes(*origin), kind, key, (has_value == 1).then_some(value)))
}

impl<V: Value> RedisBackend<V> {
    /// Shares events across every process that uses this namespace: this
    /// store's `Set`, `Delete`, `Expire` and `Evict` events are published on
    /// the namespace's pub/sub channel (`ld:{ns}:events`), and those of other
    /// processes reach this store's [`watch`](crate::LiveDict::watch)
    /// streams. Callbacks keep seeing only this process's events, so each
    /// expiration still reaches callbacks exactly once in total; every watch
    /// in every sharing process sees it once. `Get` events are not shared.
    ///
    /// Enabled by the URL option `share_events=true` (or
    /// [`RedisConfig::share_events`](super::RedisConfig::share_events)); call
    /// this yourself only for a stack built with
    /// [`LiveDict::from_service`](crate::LiveDict::from_service). Processes
    /// that only write must enable it too, or their events are not
    /// published. Delivery is Redis pub/sub: at most once, while connected;
    /// events published during a reconnect are lost without a `Lagged`
    /// marker. Events are published in the background, on a connection of
    /// their own: [`shutdown`](crate::LiveDict::shutdown) hands over those
    /// still queued (within the drain timeout), so call it before the process
    /// exits.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> livedict::Result<()> {
    /// use livedict::{EventKind, LiveDict, WatchFilter};
    /// let a = LiveDict::<u32>::open("redis://127.0.0.1:6379/0?namespace=app&share_events=true").await?;
    /// let b = LiveDict::<u32>::open("redis://127.0.0.1:6379/0?namespace=app&share_events=true").await?;
    /// let mut w = b.watch(WatchFilter::kinds([EventKind::Set]))?;
    /// a.set("k", 1).await?; // another process, as far as `b` can tell
    /// let item = w.recv().await.unwrap();
    /// assert_eq!(item.event().unwrap().key(), "k");
    /// # Ok(()) }
    /// ```
    pub async fn share_events(&self, dispatcher: &Dispatcher<V>) -> Result<()> {
        let shared = &self.shared;
        let channel = shared.layout.events.clone();
        let (subscriber, sub_routers) = subscriber(shared).await?;
        if let Err(e) = subscriber.subscribe(channel.as_str()).await {
            sub_routers.close(&subscriber).await;
            return Err(shared.backend_error("subscribing to the event channel", e));
        }
        // Its own connection, so events queued at shutdown are still published
        // after the backend's pool has quit.
        let publisher = shared.pool.next().clone_new();
        let connected = tokio::time::timeout(shared.config.connect_timeout, Routers::init(&publisher)).await;
        let Ok(Ok(pub_routers)) = connected else {
            quit_failed(&publisher).await;
            sub_routers.close(&subscriber).await;
            return Err(Error::backend_msg(
                "redis",
                format!("cannot connect a publisher to {}", shared.label),
            ));
        };
        let cancel = CancellationToken::new();
        let (outbox, frames) = Outbox::new(OUTBOX, Arc::clone(dispatcher.counters()));
        let relay = Arc::new(RedisRelay {
            origin: rand::random(),
            codec: shared.config.codec,
            outbox,
            stop: Mutex::new(Some(cancel.clone().drop_guard())),
        });
        let origin = relay.origin;
        let watchers = match dispatcher.attach_relay(relay) {
            Ok(w) => w,
            Err(e) => {
                pub_routers.close(&publisher).await;
                sub_routers.close(&subscriber).await;
                return Err(e);
            }
        };
        let near = shared.near.clone();
        let sub = (subscriber, sub_routers);
        tokio::spawn(receive(sub, watchers, near, origin, shared.config.codec, cancel.clone()));
        tokio::spawn(publish((publisher, pub_routers), channel, frames));
        Ok(())
    }
}

/// A dedicated pub/sub connection to the same server, with its routing task
/// (close it with [`Routers::close`]).
pub(super) async fn subscriber<V: Value>(shared: &Shared<V>) -> Result<(SubscriberClient, Routers)> {
    let config = FredConfig::from_url(&shared.config.server_url)
        .map_err(|e| Error::invalid_url(&shared.config.server_url, e.details().to_string()))?;
    let timeout = shared.config.connect_timeout;
    let client = fred::types::Builder::from_config(config)
        .with_connection_config(|c| c.connection_timeout = timeout)
        // Reconnect forever with backoff; subscriptions are restored by `manage_subscriptions`.
        .set_policy(fred::types::config::ReconnectPolicy::new_exponential(0, 20, 2_000, 2))
        .build_subscriber_client()
        .map_err(|e| shared.backend_error("creating the event subscriber", e))?;
    match tokio::time::timeout(timeout, Routers::init(&client)).await {
        Ok(Ok(routers)) => Ok((client, routers)),
        failed => {
            quit_failed(&client).await;
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no connection within {timeout:?}"),
            };
            Err(Error::backend_msg("redis", format!("cannot subscribe on {}: {why}", shared.label)))
        }
    }
}

/// Hands the events of other processes to this store's watches.
async fn receive<V: Value>(
    (subscriber, routers): (SubscriberClient, Routers),
    watchers: Arc<Watchers<V>>,
    near: Option<NearCache<V>>,
    origin: u64,
    codec: Codec,
    cancel: CancellationToken,
) {
    let resubscribe = subscriber.manage_subscriptions();
    let mut messages = subscriber.message_rx();
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => break,
            m = messages.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                if let Some(near) = &near {
                    near.invalidate_all();
                }
                tracing::warn!(
                    missed = n,
                    "the redis event feed fell behind; events of other processes were lost"
                );
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        };
        let Some(bytes) = message.value.as_bytes() else { continue };
        let Some((from, kind, key, value)) = decode(bytes) else { continue };
        if from == origin {
            continue;
        }
        if let Some(near) = &near {
            near.invalidate(key);
        }
        // An undecodable value (e.g. another codec) is relayed as an event without a value.
        let value = value.and_then(|v| codec.decode::<V>(key, v).ok());
        watchers.emit(&Event::new(kind, key, value));
    }
    resubscribe.abort();
    // The server may be gone: bounded.
    routers.close(&subscriber).await;
}

/// Publishes this process's frames in order, until closed (or the relay is gone).
async fn publish(
    (client, routers): (fred::clients::Client, Routers),
    channel: String,
    mut frames: mpsc::Receiver<Outgoing<Bytes>>,
) {
    while let Some(out) = frames.recv().await {
        match out {
            Outgoing::Item(frame) => {
                if let Err(e) = client.publish::<(), _, _>(channel.as_str(), frame).await {
                    tracing::warn!(error = %e, "publishing an event to other processes failed");
                }
            }
            Outgoing::Close(ack) => {
                let _ = ack.send(());
                break;
            }
        }
    }
    routers.close(&client).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = encode(7, EventKind::Expire, "k:1", Some(b"\"v\""));
        assert_eq!(decode(&f), Some((7, EventKind::Expire, "k:1", Some(&b"\"v\""[..]))));
        let f = encode(u64::MAX, EventKind::Delete, "", None);
        assert_eq!(decode(&f), Some((u64::MAX, EventKind::Delete, "", None)));
        assert_eq!(decode(&f[..5]), None);
        assert_eq!(decode(b""), None);
    }
}
