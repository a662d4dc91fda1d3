//! Model-based test: random operation sequences run against every backend and
//! against a plain `HashMap` reference model; every response and the exact
//! multiset of `Set`/`Delete`/`Expire` events (values included) must match.
//! Batches (`get_many`, `set_many`, `delete_many`) are among the operations.
//! About a third of the operations go through a second handle: on SQLite and
//! Redis a separately built store on the same data (its own stack, callbacks
//! and expiry driver), so both share the one model and, together, must report
//! each event exactly once.
//!
//! Memory runs on paused Tokio time: TTLs are odd multiples of 5 ms and time
//! advances in multiples of 10 ms, so a deadline never coincides with a check.
//! SQLite and Redis run on real time, so a TTL is either long (one hour, never
//! reached) or short (30 ms) and then waited out in full before the next
//! operation: the outcome never depends on how fast the machine is.
//!
//! Failing sequences are shrunk and printed one operation per line.
//! `LIVEDICT_PROPTEST_CASES=N` runs N cases on SQLite and Redis and 8×N on
//! memory (default 24 and 192); `LIVEDICT_PROPTEST_MAX_OPS=N` allows longer
//! sequences (default 40); `LIVEDICT_PROPTEST_SEED=<u64>` replays a run.

mod support;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use livedict::{Delivery, EventKind, LiveDict};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use support::{Collector, Harness, Kind, eventually};

const KEYS: [&str; 4] = ["a", "b", "c", "d"];
/// The real TTL behind every `Ttl::Ms` on SQLite and Redis.
const REAL_SHORT: Duration = Duration::from_millis(30);
/// Extra wait past a real short deadline (clock granularity of the backends is 1 ms).
const REAL_MARGIN: Duration = Duration::from_millis(20);
const HOUR: Duration = Duration::from_secs(3600);

/// A TTL as generated: a few milliseconds, or an hour.
#[derive(Clone, Copy)]
enum Ttl {
    /// An odd multiple of 5 ms (on real-time backends: 30 ms, waited out).
    Ms(u64),
    Hour,
}

impl fmt::Debug for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ttl::Ms(ms) => write!(f, "{ms}ms"),
            Ttl::Hour => write!(f, "1h"),
        }
    }
}

/// What to do while holding a key's lock.
#[derive(Debug, Clone, Copy)]
enum Write {
    Nothing,
    Set(u16),
    SetTtl(u16, Ttl),
    Delete,
}

/// One operation of a sequence.
#[derive(Clone, Copy)]
enum Op {
    Set(&'static str, u16),
    SetTtl(&'static str, u16, Ttl),
    Get(&'static str),
    Delete(&'static str),
    Exists(&'static str),
    Expire(&'static str, Ttl),
    Persist(&'static str),
    TtlOf(&'static str),
    Keys,
    Items,
    Len,
    Clear,
    /// `scan(prefix)` to its end.
    Scan(&'static str),
    /// lock, read through the guard, write, then unlock (true) or drop the guard.
    Locked(&'static str, Write, bool),
    /// Let virtual time pass (ms; a multiple of 10). No-op on real-time backends.
    Advance(u64),
    /// Batches of three keys (a key may come twice).
    GetMany([&'static str; 3]),
    SetMany([(&'static str, u16); 3], Option<Ttl>),
    DeleteMany([&'static str; 3]),
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Set(k, v) => write!(f, "set({k}, {v})"),
            Op::SetTtl(k, v, t) => write!(f, "set_with_ttl({k}, {v}, {t:?})"),
            Op::Get(k) => write!(f, "get({k})"),
            Op::Delete(k) => write!(f, "delete({k})"),
            Op::Exists(k) => write!(f, "exists({k})"),
            Op::Expire(k, t) => write!(f, "expire({k}, {t:?})"),
            Op::Persist(k) => write!(f, "persist({k})"),
            Op::TtlOf(k) => write!(f, "ttl({k})"),
            Op::Keys => write!(f, "keys()"),
            Op::Items => write!(f, "items()"),
            Op::Len => write!(f, "len()"),
            Op::Clear => write!(f, "clear()"),
            Op::Scan(p) => write!(f, "scan({p:?})"),
            Op::Locked(k, w, unlock) => {
                let release = if *unlock { "unlock" } else { "drop guard" };
                match w {
                    Write::Nothing => write!(f, "lock({k}); guard.get(); {release}"),
                    Write::Set(v) => write!(f, "lock({k}); guard.get(); guard.set({v}); {release}"),
                    Write::SetTtl(v, t) => {
                        write!(f, "lock({k}); guard.get(); guard.set_with_ttl({v}, {t:?}); {release}")
                    }
                    Write::Delete => write!(f, "lock({k}); guard.get(); guard.delete(); {release}"),
                }
            }
            Op::Advance(ms) => write!(f, "advance({ms}ms)"),
            Op::GetMany(keys) => write!(f, "get_many({keys:?})"),
            Op::SetMany(entries, ttl) => write!(f, "set_many({entries:?}, {ttl:?})"),
            Op::DeleteMany(keys) => write!(f, "delete_many({keys:?})"),
        }
    }
}

/// An operation and the handle it goes through: the first, or a second one
/// (on SQLite and Redis a separately built store on the same table or
/// namespace, with its own stack, callbacks and expiry driver; on memory a clone).
#[derive(Clone, Copy)]
struct Call {
    second: bool,
    op: Op,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.second { write!(f, "second handle: {:?}", self.op) } else { write!(f, "{:?}", self.op) }
    }
}

fn call() -> impl Strategy<Value = Call> {
    (prop::bool::weighted(0.3), op()).prop_map(|(second, op)| Call { second, op })
}

fn key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&KEYS[..])
}

fn value() -> impl Strategy<Value = u16> {
    0u16..100
}

fn ttl() -> impl Strategy<Value = Ttl> {
    prop_oneof![3 => (0u64..10).prop_map(|i| Ttl::Ms(i * 10 + 5)), 1 => Just(Ttl::Hour)]
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        Just(Write::Nothing),
        value().prop_map(Write::Set),
        (value(), ttl()).prop_map(|(v, t)| Write::SetTtl(v, t)),
        Just(Write::Delete),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), value()).prop_map(|(k, v)| Op::Set(k, v)),
        4 => (key(), value(), ttl()).prop_map(|(k, v, t)| Op::SetTtl(k, v, t)),
        3 => key().prop_map(Op::Get),
        2 => key().prop_map(Op::Delete),
        1 => key().prop_map(Op::Exists),
        2 => (key(), ttl()).prop_map(|(k, t)| Op::Expire(k, t)),
        1 => key().prop_map(Op::Persist),
        2 => key().prop_map(Op::TtlOf),
        1 => Just(Op::Keys),
        1 => Just(Op::Items),
        1 => Just(Op::Len),
        1 => Just(Op::Clear),
        1 => prop::sample::select(&["", "a", "b", "e"][..]).prop_map(Op::Scan),
        2 => (key(), write(), any::<bool>()).prop_map(|(k, w, u)| Op::Locked(k, w, u)),
        3 => (1u64..=10).prop_map(|i| Op::Advance(i * 10)),
        2 => prop::array::uniform3(key()).prop_map(Op::GetMany),
        2 => (prop::array::uniform3((key(), value())), prop::option::of(ttl())).prop_map(|(e, t)| Op::SetMany(e, t)),
        1 => prop::array::uniform3(key()).prop_map(Op::DeleteMany),
    ]
}

/// One recorded event (the multiset key).
type Seen = (EventKind, String, Option<u16>);

/// The reference: a map with deadlines on a model clock, and the events it implies.
#[derive(Default)]
struct Model {
    now: Duration,
    entries: HashMap<&'static str, (u16, Option<Duration>)>,
    events: Vec<Seen>,
}

impl Model {
    /// Moves the clock; every entry whose deadline passed expires with its value.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        let mut due: Vec<_> = self.entries.iter().filter(|(_, (_, d))| d.is_some_and(|d| d <= now)).collect();
        due.sort();
        let due: Vec<(&'static str, u16)> = due.into_iter().map(|(k, (v, _))| (*k, *v)).collect();
        for (k, v) in due {
            self.entries.remove(k);
            self.events.push((EventKind::Expire, k.to_owned(), Some(v)));
        }
    }

    fn get(&self, k: &str) -> Option<u16> {
        self.entries.get(k).map(|(v, _)| *v)
    }

    fn set(&mut self, k: &'static str, v: u16, ttl: Option<Duration>) {
        self.entries.insert(k, (v, ttl.map(|t| self.now + t)));
        self.events.push((EventKind::Set, k.to_owned(), Some(v)));
    }

    fn delete(&mut self, k: &str) -> bool {
        match self.entries.remove(k) {
            Some((v, _)) => {
                self.events.push((EventKind::Delete, k.to_owned(), Some(v)));
                true
            }
            None => false,
        }
    }

    fn expire(&mut self, k: &str, ttl: Duration) -> bool {
        let now = self.now;
        self.entries.get_mut(k).map(|e| e.1 = Some(now + ttl)).is_some()
    }

    fn persist(&mut self, k: &str) -> bool {
        self.entries.get_mut(k).is_some_and(|e| e.1.take().is_some())
    }

    fn ttl(&self, k: &str) -> Option<Duration> {
        self.entries.get(k).and_then(|(_, d)| *d).map(|d| d - self.now)
    }

    fn sorted_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.entries.keys().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    }
}

/// How one backend's clock relates to the model's.
struct Clock {
    real: bool,
    /// Real time by which every short TTL written so far has surely passed.
    short_until: Option<std::time::Instant>,
}

impl Clock {
    /// The TTL sent to the store, and the one the model applies.
    fn ttls(&self, ttl: Ttl) -> (Duration, Duration) {
        match (ttl, self.real) {
            (Ttl::Hour, _) => (HOUR, HOUR),
            (Ttl::Ms(ms), false) => (Duration::from_millis(ms), Duration::from_millis(ms)),
            // The model expires it at the next step (1 model-ms later), after the wait-out.
            (Ttl::Ms(_), true) => (REAL_SHORT, Duration::from_micros(500)),
        }
    }

    /// Records that a short real TTL was just acknowledged.
    fn wrote(&mut self, ttl: Ttl) {
        if self.real && matches!(ttl, Ttl::Ms(_)) {
            self.short_until = Some(std::time::Instant::now() + REAL_SHORT + REAL_MARGIN);
        }
    }
}

type Step = Result<(), String>;

fn check<T: PartialEq + fmt::Debug>(what: &str, got: T, expected: T) -> Step {
    if got == expected {
        Ok(())
    } else {
        Err(format!("{what}: store gave {got:?}, model expected {expected:?}"))
    }
}

fn check_ttl(clock: &Clock, got: Option<Duration>, expected: Option<Duration>) -> Step {
    let ok = match (got, expected) {
        (None, None) => true,
        // Paused time: exact.
        (Some(g), Some(e)) if !clock.real => g == e,
        // Real time: only hour-long TTLs are ever live at a check.
        (Some(g), Some(e)) => g <= e + Duration::from_secs(1) && g + Duration::from_secs(120) >= e,
        _ => false,
    };
    if ok { Ok(()) } else { Err(format!("ttl: store gave {got:?}, model expected {expected:?}")) }
}

/// Real-time backends: waits until every short TTL has passed and lets the
/// model expire them. With `for_events`, also waits until the store has
/// reported each of them; without, the next operation races the expiry driver
/// (which must not change the outcome: the entry is gone either way and its
/// Expire event is delivered exactly once).
async fn settle_short_ttls(clock: &mut Clock, model: &mut Model, seen: &Collector<u16>, for_events: bool) {
    if !clock.real {
        return;
    }
    if let Some(until) = clock.short_until.take() {
        tokio::time::sleep_until(until.into()).await;
    }
    model.advance(Duration::from_millis(1));
    if for_events {
        let expected = model.events.iter().filter(|e| e.0 == EventKind::Expire).count();
        eventually("expire events of waited-out entries", || {
            seen.events().iter().filter(|e| e.0 == EventKind::Expire).count() >= expected
        })
        .await;
    }
}

async fn apply(d: &LiveDict<u16>, op: Op, clock: &mut Clock, model: &mut Model) -> Step {
    let err = |e: livedict::Error| format!("unexpected error {e:?}");
    match op {
        Op::Set(k, v) => {
            d.set(k, v).await.map_err(err)?;
            model.set(k, v, None);
        }
        Op::SetTtl(k, v, t) => {
            let (real, modelled) = clock.ttls(t);
            d.set_with_ttl(k, v, real).await.map_err(err)?;
            clock.wrote(t);
            model.set(k, v, Some(modelled));
        }
        Op::Get(k) => check("get", d.get(k).await.map_err(err)?, model.get(k))?,
        Op::Delete(k) => check("delete", d.delete(k).await.map_err(err)?, model.delete(k))?,
        Op::Exists(k) => check("exists", d.exists(k).await.map_err(err)?, model.get(k).is_some())?,
        Op::Expire(k, t) => {
            let (real, modelled) = clock.ttls(t);
            let got = d.expire(k, real).await.map_err(err)?;
            clock.wrote(t);
            check("expire", got, model.expire(k, modelled))?;
        }
        Op::Persist(k) => check("persist", d.persist(k).await.map_err(err)?, model.persist(k))?,
        Op::TtlOf(k) => check_ttl(clock, d.ttl(k).await.map_err(err)?, model.ttl(k))?,
        Op::Keys => {
            let mut keys = d.keys().await.map_err(err)?;
            keys.sort();
            check("keys", keys, model.sorted_keys())?;
        }
        Op::Items => {
            let mut items = d.items().await.map_err(err)?;
            items.sort();
            let expected: Vec<(String, u16)> =
                model.sorted_keys().into_iter().map(|k| (k.clone(), model.get(&k).unwrap())).collect();
            check("items", items, expected)?;
        }
        Op::Len => check("len", d.len().await.map_err(err)?, model.entries.len())?,
        Op::Scan(prefix) => {
            use futures::TryStreamExt;
            let yielded: Vec<(String, u16)> = d.scan(prefix).try_collect().await.map_err(err)?;
            let expected: Vec<(String, u16)> = model
                .sorted_keys()
                .into_iter()
                .filter(|k| k.starts_with(prefix))
                .map(|k| (k.clone(), model.get(&k).unwrap()))
                .collect();
            if !clock.real {
                // Memory: exactly once, in key order.
                check("scan", yielded.clone(), expected.clone())?;
            }
            // Every backend: each live entry (at least once on Redis).
            let mut items = yielded;
            items.sort();
            items.dedup();
            check("scan", items, expected)?;
        }
        Op::Clear => {
            d.clear().await.map_err(err)?;
            model.entries.clear();
        }
        Op::Locked(k, w, unlock) => {
            let guard = d.lock(k, Duration::from_secs(5)).await.map_err(err)?;
            check("guard.get", guard.get().await.map_err(err)?, model.get(k))?;
            match w {
                Write::Nothing => {}
                Write::Set(v) => {
                    guard.set(v).await.map_err(err)?;
                    model.set(k, v, None);
                }
                Write::SetTtl(v, t) => {
                    let (real, modelled) = clock.ttls(t);
                    guard.set_with_ttl(v, real).await.map_err(err)?;
                    clock.wrote(t);
                    model.set(k, v, Some(modelled));
                }
                Write::Delete => check("guard.delete", guard.delete().await.map_err(err)?, model.delete(k))?,
            }
            if unlock {
                guard.unlock().await.map_err(err)?;
            } else {
                drop(guard);
            }
        }
        Op::GetMany(keys) => {
            check("get_many", d.get_many(&keys).await.map_err(err)?, keys.map(|k| model.get(k)).to_vec())?
        }
        Op::SetMany(entries, ttl) => {
            let ttls = ttl.map(|t| clock.ttls(t));
            d.set_many(entries.to_vec(), ttls.map(|(real, _)| real)).await.map_err(err)?;
            if let Some(t) = ttl {
                clock.wrote(t);
            }
            for (k, v) in entries {
                model.set(k, v, ttls.map(|(_, modelled)| modelled));
            }
        }
        Op::DeleteMany(keys) => {
            let removed = keys.iter().filter(|k| model.delete(k)).count();
            check("delete_many", d.delete_many(&keys).await.map_err(err)?, removed)?
        }
        Op::Advance(ms) => {
            if !clock.real {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                model.advance(Duration::from_millis(ms));
            }
        }
    }
    Ok(())
}

/// Runs one sequence on a fresh store; `Err` names the first divergence.
async fn run_case(h: &Harness, delivery: Delivery, case: u64, calls: &[Call]) -> Step {
    // Half the cases let operations race the expiry driver on real-time backends.
    let race_driver = case % 2 == 0;
    let name = format!("model{case}{}", if delivery == Delivery::AtLeastOnce { "d" } else { "" });
    let url = h.url_with(&format!("expire_delivery={delivery}"));
    let open = || async {
        LiveDict::<u16>::builder()
            .url(&url)
            .table(&name)
            .namespace(&name)
            .build()
            .await
            .map_err(|e| format!("open: {e}"))
    };
    let d = open().await?;
    // One collector for both handles: each event is reported by exactly one of them.
    let seen = Collector::new();
    let second = if h.shared() { open().await? } else { d.clone() };
    let handles: &[&LiveDict<u16>] = if h.shared() { &[&d, &second] } else { &[&d] };
    for handle in handles {
        for kind in [EventKind::Set, EventKind::Delete, EventKind::Expire] {
            handle.register_callback(kind, seen.async_callback()).unwrap();
        }
    }
    let mut clock = Clock { real: h.kind != Kind::Memory, short_until: None };
    let mut model = Model::default();
    let mut outcome = Ok(());
    for (i, call) in calls.iter().enumerate() {
        settle_short_ttls(&mut clock, &mut model, &seen, !race_driver).await;
        let handle = if call.second { &second } else { &d };
        if let Err(e) = apply(handle, call.op, &mut clock, &mut model).await {
            outcome = Err(format!("op {} `{call:?}`: {e}", i + 1));
            break;
        }
    }
    if outcome.is_ok() {
        settle_short_ttls(&mut clock, &mut model, &seen, true).await;
    }
    // Shutdown delivers every queued event, so the multiset below is complete.
    for handle in handles {
        handle.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    }
    outcome?;
    let count = |events: Vec<Seen>| {
        let mut m: HashMap<Seen, usize> = HashMap::new();
        for e in events {
            *m.entry(e).or_default() += 1;
        }
        m
    };
    let (got, expected) = (seen.events(), model.events.clone());
    if count(got.clone()) != count(expected.clone()) {
        return Err(format!("events differ:\n  store: {got:?}\n  model: {expected:?}"));
    }
    Ok(())
}

fn cases(kind: Kind) -> u32 {
    let base = std::env::var("LIVEDICT_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    if kind == Kind::Memory { base * 8 } else { base }
}

/// Generates `cases` sequences, runs each; on a failure shrinks it and panics
/// with the minimal sequence (the runner drives proptest's shrinking by hand
/// because each case is async).
async fn check_model(h: &Harness, delivery: Delivery) {
    let seed: u64 = match std::env::var("LIVEDICT_PROPTEST_SEED") {
        Ok(s) => s.parse().expect("LIVEDICT_PROPTEST_SEED is a u64"),
        Err(_) => rand_seed(),
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let max_ops = std::env::var("LIVEDICT_PROPTEST_MAX_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let strategy = prop::collection::vec(call(), 1..=max_ops);
    let mut case = 0u64;
    for _ in 0..cases(h.kind) {
        let mut tree = strategy.new_tree(&mut runner).expect("generate a sequence");
        case += 1;
        let Err(first) = run_case(h, delivery, case, &tree.current()).await else { continue };
        let (mut minimal, mut why) = (tree.current(), first);
        let mut runs = 0;
        if tree.simplify() {
            while runs < 500 {
                runs += 1;
                case += 1;
                match run_case(h, delivery, case, &tree.current()).await {
                    Err(e) => {
                        (minimal, why) = (tree.current(), e);
                        if !tree.simplify() {
                            break;
                        }
                    }
                    Ok(()) => {
                        if !tree.complicate() {
                            break;
                        }
                    }
                }
            }
        }
        let listing: String =
            minimal.iter().enumerate().map(|(i, op)| format!("\n  {:>2}. {op:?}", i + 1)).collect();
        panic!(
            "{:?} store ({delivery}) diverged from the model (seed {seed}, LIVEDICT_PROPTEST_SEED={seed} to replay)\n\
             minimal sequence ({} ops):{listing}\n{why}",
            h.kind,
            minimal.len()
        );
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

for_each_backend! {
    async fn random_operation_sequences_match_the_reference_model(h: Harness) {
        check_model(&h, Delivery::AtMostOnce).await;
    }

    // Leased, acknowledged expirations: the same events, each exactly once.
    async fn random_operation_sequences_match_the_reference_model_at_least_once(h: Harness) {
        check_model(&h, Delivery::AtLeastOnce).await;
    }
}
