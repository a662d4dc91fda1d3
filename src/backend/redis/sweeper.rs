//! The sweeper: claims due deadlines, so each expiration is reported exactly
//! once in total, with its value — quietly, and once per shard.
//!
//! - **Claims are atomic.** The `CLAIM` script takes a shard's due index
//!   entries and their values in one step; whichever instance runs it first
//!   reports the expiry. Correctness never depends on who sweeps.
//! - **One sweeper per shard.** Instances register in the namespace's
//!   `sweepers` hash with a heartbeat (every second, lease 3 s); each shard
//!   is swept by the live instance with the highest rendezvous hash for it.
//!   When an instance dies its shards move to the others within a lease;
//!   when views differ for a moment, two instances may both sweep a shard,
//!   which costs a command and nothing else. Sweep traffic does not grow with
//!   the number of instances.
//! - **Quiet when idle.** A sweeper sleeps until the next deadline of its
//!   shards (from the claim's reply, in server time). A write that makes a
//!   shard's earliest deadline earlier publishes the shard on `ld:{ns}:wake`,
//!   which wakes its sweeper. Wake-ups are pub/sub (lost while disconnected),
//!   so each owned shard is also re-checked every `sweep_ms` (spread to at
//!   most 2 checks per second), and all of them after a reconnect. An idle
//!   instance sends about 1 heartbeat + ≤ 2 checks per second.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use fred::interfaces::{EventInterface, PubsubInterface};
use fred::types::Value as RedisValue;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::layout::fnv1a;
use crate::Value;
use crate::error::{Error, Result};

/// Members claimed per script call.
const CLAIM_BATCH: i64 = 500;
/// How often an instance renews its membership.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a membership lasts without a heartbeat.
const MEMBER_LEASE: Duration = Duration::from_secs(3);
/// The safety-net checks are at least this far apart.
const MIN_CHECK_GAP: Duration = Duration::from_millis(500);

/// A wake-up from the `wake` channel.
enum Wake {
    Shard(usize),
    /// Wake-ups may have been lost (the subscriber reconnected).
    All,
}

/// Starts the sweeper and its wake-up subscriber (both stop on `cancel`).
pub(super) async fn start<V: Value>(shared: &Arc<Shared<V>>, cancel: CancellationToken) {
    let (tx, rx) = mpsc::channel(1024);
    match super::feed::subscriber(shared).await {
        Ok((sub, routers)) => match sub.subscribe(shared.layout.wake.as_str()).await {
            Ok(()) => {
                tokio::spawn(listen(sub, routers, tx, cancel.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis sweeper cannot subscribe to wake-ups; relying on its periodic checks");
                routers.close(&sub).await;
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "redis sweeper has no wake-up subscriber; relying on its periodic checks")
        }
    }
    // The first heartbeat before `open` returns: from then on the shards
    // this instance sweeps are known (the eviction handler needs them).
    let shards = shared.layout.shards.len();
    let mut state = State { owned: vec![false; shards], next: vec![None; shards], cursor: 0 };
    heartbeat(shared, &mut state, Instant::now()).await;
    tokio::spawn(run(Arc::downgrade(shared), rx, cancel, state));
}

/// Forwards wake-ups (shard numbers) to the sweeper.
async fn listen(
    sub: fred::clients::SubscriberClient,
    routers: super::routers::Routers,
    tx: mpsc::Sender<Wake>,
    cancel: CancellationToken,
) {
    let resubscribe = sub.manage_subscriptions();
    let mut messages = sub.message_rx();
    let mut reconnects = sub.reconnect_rx();
    loop {
        let wake = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = reconnects.recv() => Wake::All,
            m = messages.recv() => match m {
                Ok(m) => match m.value.as_str().and_then(|s| s.parse().ok()) {
                    Some(shard) => Wake::Shard(shard),
                    None => continue,
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Wake::All,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        };
        // A full queue already holds wake-ups enough to sweep soon.
        let _ = tx.try_send(wake);
    }
    resubscribe.abort();
    // The server may be gone: bounded.
    routers.close(&sub).await;
}

/// What the sweeper knows about the shards.
struct State {
    /// The shards this instance sweeps.
    owned: Vec<bool>,
    /// When each owned shard is to be claimed next (`None`: nothing known to be due).
    next: Vec<Option<Instant>>,
    /// Round-robin position of the safety-net checks.
    cursor: usize,
}

impl State {
    fn mark_all(&mut self, now: Instant) {
        for (s, owned) in self.owned.iter().enumerate() {
            if *owned {
                self.next[s] = Some(now);
            }
        }
    }
}

async fn run<V: Value>(
    shared: Weak<Shared<V>>,
    mut wakes: mpsc::Receiver<Wake>,
    cancel: CancellationToken,
    mut state: State,
) {
    let shards = state.owned.len();
    let mut heartbeat_at = Instant::now() + HEARTBEAT;
    let mut check_at = Instant::now() + MIN_CHECK_GAP;
    loop {
        let now = Instant::now();
        {
            let Some(shared) = shared.upgrade() else { return };
            if heartbeat_at <= now {
                heartbeat(&shared, &mut state, now).await;
                heartbeat_at = now + HEARTBEAT;
            }
            if check_at <= now {
                let owned: Vec<usize> = (0..shards).filter(|&s| state.owned[s]).collect();
                if !owned.is_empty() {
                    let s = owned[state.cursor % owned.len()];
                    state.cursor = state.cursor.wrapping_add(1);
                    state.next[s] = Some(now);
                }
                let gap = shared.config.sweep_interval / owned.len().max(1) as u32;
                check_at = now + gap.max(MIN_CHECK_GAP);
            }
            sweep_due(&shared, &mut state).await;
        }
        let wake_at = state
            .next
            .iter()
            .zip(&state.owned)
            .filter_map(|(n, owned)| n.filter(|_| *owned))
            .chain([heartbeat_at, check_at])
            .min()
            .unwrap_or(heartbeat_at);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(wake_at.into()) => {}
            wake = wakes.recv() => {
                let now = Instant::now();
                match wake {
                    Some(Wake::Shard(s)) if s < shards => {
                        if state.owned[s] {
                            state.next[s] = Some(now);
                        }
                    }
                    Some(Wake::All) => state.mark_all(now),
                    Some(Wake::Shard(_)) => {}
                    // The subscriber is gone (its connection could not be kept): periodic checks remain.
                    None => wakes = mpsc::channel(1).1,
                }
            }
        }
    }
}

/// Claims every owned shard whose next check is due, concurrently.
async fn sweep_due<V: Value>(shared: &Shared<V>, state: &mut State) {
    let now = Instant::now();
    let due: Vec<usize> = (0..state.owned.len())
        .filter(|&s| state.owned[s] && state.next[s].is_some_and(|at| at <= now))
        .collect();
    let mut claims: FuturesUnordered<_> = due
        .into_iter()
        .map(|s| async move {
            let sent = Instant::now();
            (s, sent, claim(shared, s).await)
        })
        .collect();
    while let Some((s, sent, result)) = claims.next().await {
        state.next[s] = match result {
            Ok((_, false)) => Some(Instant::now()),
            Ok((next, true)) => next.map(|left| sent + left),
            Err(e) => {
                tracing::warn!(error = %e, shard = s, "redis sweeper could not claim due deadlines");
                Some(Instant::now() + Duration::from_millis(100))
            }
        };
    }
}

/// Renews this instance's membership and recomputes which shards it sweeps.
async fn heartbeat<V: Value>(shared: &Shared<V>, state: &mut State, now: Instant) {
    let sent = Instant::now();
    let live = match membership(shared, false).await {
        Ok(live) => live,
        Err(e) => {
            // Unknown membership: keep sweeping what we had (claims stay exactly-once).
            tracing::warn!(error = %e, "redis sweeper heartbeat failed");
            return;
        }
    };
    if let Some((server_us, ids)) = live {
        shared.clock.sample(sent, server_us);
        for s in 0..state.owned.len() {
            let mine = owner(&ids, s) == Some(shared.instance.as_str());
            if mine && !state.owned[s] {
                state.next[s] = Some(now);
            }
            state.owned[s] = mine;
            shared.sweeps[s].store(mine, std::sync::atomic::Ordering::Release);
        }
    }
}

/// The live instance that sweeps shard `s`: the highest rendezvous hash.
fn owner(ids: &[String], s: usize) -> Option<&str> {
    ids.iter().max_by_key(|id| fnv1a(format!("{id}/{s}").as_bytes())).map(String::as_str)
}

/// Runs the heartbeat script: server time (µs) and the live instance ids.
async fn membership<V: Value>(shared: &Shared<V>, leave: bool) -> Result<Option<(u64, Vec<String>)>> {
    let args: Vec<RedisValue> = vec![
        shared.instance.as_str().into(),
        super::ms(MEMBER_LEASE).into(),
        if leave { "1" } else { "0" }.into(),
    ];
    let reply: Vec<String> = shared
        .scripts
        .heartbeat
        .evalsha_with_reload(shared.pool.next(), vec![shared.layout.sweepers.clone()], args)
        .await
        .map_err(|e| shared.backend_error("sweeper heartbeat", e))?;
    let mut it = reply.into_iter();
    let (Some(secs), Some(micros)) = (it.next(), it.next()) else { return Ok(None) };
    let (Ok(secs), Ok(micros)) = (secs.parse::<u64>(), micros.parse::<u64>()) else { return Ok(None) };
    Ok(Some((secs * 1_000_000 + micros, it.collect())))
}

/// Leaves the membership at shutdown, so the others take over this instance's shards at once.
pub(super) async fn leave<V: Value>(shared: &Shared<V>) {
    if let Err(e) = membership(shared, true).await {
        tracing::debug!(error = %e, "redis sweeper could not leave the membership; its lease will end it");
    }
}

/// Claims one batch of shard `s`'s due entries and reports them (under
/// `at_least_once`: leases them, see the `CLAIM` script). Returns the time
/// until the shard's next due time (server clock) and whether the batch took
/// everything that was due.
pub(super) async fn claim<V: Value>(shared: &Shared<V>, s: usize) -> Result<(Option<Duration>, bool)> {
    let shard = &shared.layout.shards[s];
    let [pending, records, attempts] = shard.pending.clone();
    let keys = vec![shard.index.clone(), shard.count.clone(), pending, records, attempts];
    let delivery = &shared.config.delivery;
    let args: Vec<RedisValue> = vec![
        shard.value_prefix.clone().into(),
        CLAIM_BATCH.into(),
        shared.mode_arg(),
        delivery.lease_ms().into(),
        i64::from(delivery.max_attempts).into(),
    ];
    let client = shared.pool.next();
    let reply: RedisValue = shared
        .scripts
        .claim
        .evalsha_with_reload(client, keys, args)
        .await
        .map_err(|e| shared.backend_error("claiming due deadlines", e))?;
    // With replica_acks, a claim is replicated before its events go out, so a
    // failover cannot bring the entries back to be claimed (and reported) again.
    if let Err(e) = shared.await_replicas(client, shard.slot, "claim").await {
        tracing::warn!(error = %e, "expirations claimed without replica acknowledgement are reported anyway");
    }
    let RedisValue::Array(parts) = reply else {
        return Err(Error::backend_msg("redis", "unexpected reply to the claim script"));
    };
    let now = parts.first().and_then(RedisValue::as_i64).unwrap_or(0);
    let next = parts.get(1).and_then(|v| v.as_str().and_then(|s| s.parse::<f64>().ok())).map(|f| f as i64);
    if let Some(RedisValue::Array(pairs)) = parts.get(2) {
        for pair in pairs.chunks(2) {
            let (Some(member), Some(value)) = (pair[0].as_str(), pair.get(1)) else { continue };
            shared.report_claimed(&member, value);
        }
    }
    let due = parts.get(3).and_then(RedisValue::as_i64).unwrap_or(0);
    let mut leased = 0;
    if let Some(RedisValue::Array(rows)) = parts.get(4) {
        for row in rows.chunks(4) {
            let [id, attempt, member, body] = row else { continue };
            let (Some(id), Some(attempt), Some(member)) = (id.as_i64(), attempt.as_i64(), member.as_str())
            else {
                continue;
            };
            leased += 1;
            let body = body.as_bytes().unwrap_or_default();
            shared.report_leased(s, id, attempt.clamp(1, i64::from(u32::MAX)) as u32, &member, body);
        }
    }
    let abandoned = parts.get(5).and_then(RedisValue::as_i64).unwrap_or(0);
    if abandoned > 0 {
        tracing::warn!(abandoned, shard = s, "expirations dropped: never acknowledged");
        shared.sink.abandoned(abandoned as usize);
    }
    let left = next.map(|at| Duration::from_millis(at.saturating_sub(now).max(0) as u64));
    Ok((left, due < CLAIM_BATCH && leased < CLAIM_BATCH))
}

/// Claims every due entry of shard `s`.
pub(super) async fn claim_all<V: Value>(shared: &Shared<V>, s: usize) -> Result<()> {
    while !claim(shared, s).await?.1 {}
    Ok(())
}
