//! Where the memory backend keeps its entries, and what one entry is.
//!
//! An unbounded store keeps them in a map of its own: 64 shards, each a
//! `std::sync::RwLock` over a `HashMap<Arc<str>, Arc<Entry>>` (foldhash).
//! A write holds its shard's write lock across the map write and the deadline
//! row it replaces, so it knows exactly the entry it replaced or removed; a
//! read takes the shard's read lock for one lookup. Measured against the moka
//! cache it replaced for unbounded stores (see CHANGELOG, issue 18): fewer
//! bytes per entry (moka keeps a frequency sketch, access-order deques and
//! an epoch-reclaimed table per entry), and removals cheap enough for the
//! expiry driver to keep up with a million expirations a second.
//!
//! A store with `max_capacity` keeps moka: its TinyLFU policy decides what
//! is evicted (each eviction an `Evict` event). Writes to one key there are
//! serialized by a striped mutex ([`WriteLocks`]), as moka does not say which
//! entry a write replaced without an eviction listener on every write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::timers::{Micros, NO_DEADLINE, Timed};
use crate::event::SharedValue;

/// The hasher of the map, moka and the deadline table (~20 instructions a
/// key instead of SipHash's ~160).
pub(super) type Hasher = foldhash::fast::RandomState;

/// One stored value with its deadline.
///
/// Kept behind an `Arc`, so copies (reads under a lock, events, deadline
/// rows) cost a reference count, not a clone of `V`. The `Arc` is also the
/// entry's identity (it replaces a per-write generation): a deadline row
/// holds a clone of it, so a row can only ever end the entry it was written
/// for (a re-set key has a new entry). 16 bytes beside `V`.
pub(super) struct Entry<V> {
    pub(super) value: V,
    /// When it expires ([`NO_DEADLINE`]: never), see `DeadlineTable::micros`.
    /// Fixed at its write without `time_to_idle`; with it, moved later by
    /// each access ([`touch`](Self::touch)), never past its own TTL's
    /// deadline, and set to 0 by the driver that reports its expiry
    /// ([`seal_due`](Self::seal_due)).
    deadline: AtomicU64,
    /// How its own TTL bounds its deadline (in the struct's padding: no byte more).
    cap: Cap,
    /// Set by whoever ends this entry first: the driver that reports its
    /// expiry, the writer that replaced or removed it (reporting it as expired
    /// if it was past its deadline), or the eviction listener. So its end is
    /// reported exactly once, and its deadline row is known to be dead.
    ended: AtomicBool,
    /// Where its deadline row is in the table (see [`Timed::row_pos`]).
    row: AtomicU32,
}

impl<V> Entry<V> {
    #[cfg(test)]
    pub(super) fn new(value: V, deadline: Micros) -> Self {
        let cap = if deadline == NO_DEADLINE { Cap::None } else { Cap::Fixed };
        Self::idle(value, deadline, cap)
    }

    /// An entry whose deadline (`deadline`) its own TTL bounds as `cap` says.
    pub(super) fn idle(value: V, deadline: Micros, cap: Cap) -> Self {
        Entry {
            value,
            deadline: AtomicU64::new(deadline),
            cap,
            ended: AtomicBool::new(false),
            row: AtomicU32::new(0),
        }
    }

    /// How its own TTL bounds its deadline.
    pub(super) fn cap(&self) -> Cap {
        self.cap
    }

    /// When it expires now ([`NO_DEADLINE`]: never).
    pub(super) fn deadline(&self) -> Micros {
        // Relaxed: without `time_to_idle` it never changes after the entry
        // is published; with it, `touch` and `seal_due` order themselves by CAS.
        self.deadline.load(Ordering::Relaxed)
    }

    pub(super) fn has_deadline(&self) -> bool {
        self.deadline() != NO_DEADLINE
    }

    /// Whether it was stored with a TTL of its own.
    pub(super) fn has_own_deadline(&self) -> bool {
        self.cap != Cap::None
    }

    /// An access at `now` with time-to-idle `idle`: moves the deadline to
    /// `now + idle` (never past its own TTL's deadline: none for
    /// [`Cap::None`], the current one for [`Cap::Fixed`], `limit()` for
    /// [`Cap::Table`]) unless that would move it by at most `slack`; false
    /// if the entry is no longer live (then it is not extended).
    ///
    /// The driver seals a due entry with a compare-and-swap on the same
    /// word ([`seal_due`](Self::seal_due)), so a read either extends the
    /// deadline before the driver looks (the driver then re-arms it) or
    /// finds it sealed and answers nothing: an entry read in time is never
    /// reported expired.
    pub(super) fn touch(
        &self,
        now: Micros,
        idle: Micros,
        slack: Micros,
        limit: impl FnOnce() -> Micros,
    ) -> bool {
        let limit = match self.cap {
            Cap::None => NO_DEADLINE,
            Cap::Fixed => return self.deadline() > now,
            Cap::Table => limit(),
        };
        let target = now.saturating_add(idle).min(limit);
        let mut current = self.deadline.load(Ordering::Acquire);
        loop {
            if current <= now {
                return false;
            }
            if target <= current.saturating_add(slack) {
                return true;
            }
            match self.deadline.compare_exchange_weak(current, target, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// For the driver, with a row of this entry that came due at `now`:
    /// `Ok` if the entry is due (its deadline is then sealed: no access can
    /// extend it any more), else `Err` with its later deadline (an access
    /// moved it; the row must be written again for it).
    pub(super) fn seal_due(&self, now: Micros) -> Result<(), Micros> {
        let mut current = self.deadline.load(Ordering::Acquire);
        loop {
            if current > now {
                return Err(current);
            }
            match self.deadline.compare_exchange_weak(current, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }

    /// Claims the end of this entry (and its one report); false if it already ended.
    pub(super) fn claim_end(&self) -> bool {
        !self.ended.swap(true, Ordering::AcqRel)
    }

    /// Whether it is live at `now` (see `DeadlineTable::micros`).
    pub(super) fn is_live(&self, now: Micros) -> bool {
        self.deadline() > now
    }
}

/// How an entry's own TTL bounds the deadline accesses move (time-to-idle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cap {
    /// No TTL of its own: accesses move the deadline freely.
    None,
    /// Its own TTL's deadline is its deadline (it came before the idle one
    /// at its write, so no access can move it): accesses move nothing.
    Fixed,
    /// Its own TTL's deadline is later than its first idle deadline; it is
    /// kept in the backend's table of such deadlines (`Shared::limits`),
    /// keyed by key and entry, until the entry ends.
    Table,
}

/// A `Set` event reads the stored value in its entry (no clone of `V`).
impl<V: Send + Sync> SharedValue<V> for Entry<V> {
    fn value(&self) -> &V {
        &self.value
    }
}

impl<V> Timed for Entry<V> {
    fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    fn row_pos(&self) -> &AtomicU32 {
        &self.row
    }
}

type Map<V> = HashMap<Arc<str>, Arc<Entry<V>>, Hasher>;
type Moka<V> = moka::sync::Cache<Arc<str>, Arc<Entry<V>>, Hasher>;

/// Shards of the map: enough that two threads rarely meet on one.
const SHARDS: usize = 64;

/// A map below this many slots is never shrunk.
const SHRINK_FROM: usize = 1024;

/// One shard, alone on its cache lines (two threads writing to neighbouring
/// shards would otherwise contend for one line).
#[repr(align(128))]
pub(super) struct Shard<V>(RwLock<Map<V>>);

/// The entries of one store (see the module's documentation).
pub(super) enum Entries<V> {
    /// An unbounded store.
    Map(Box<[Shard<V>]>),
    /// A store with `max_capacity`.
    Moka { cache: Moka<V>, writes: WriteLocks },
}

/// A write lock on the entries of one key: the only way to change them.
pub(super) enum WriteGuard<'a, V> {
    Map(RwLockWriteGuard<'a, Map<V>>),
    Moka { cache: &'a Moka<V>, _stripe: MutexGuard<'a, ()> },
}

impl<V: Send + Sync + 'static> Entries<V> {
    /// An empty map of our own.
    pub(super) fn map() -> Self {
        Entries::Map((0..SHARDS).map(|_| Shard(RwLock::new(Map::default()))).collect())
    }

    /// Entries kept in `cache` (built with a capacity bound).
    pub(super) fn moka(cache: Moka<V>) -> Self {
        Entries::Moka { cache, writes: WriteLocks::new() }
    }

    /// Runs `f` on the entry of `key` (`hash`: the key's `DeadlineTable::hash`),
    /// under its shard's read lock: `f` must not call back into the store.
    pub(super) fn read<R>(&self, key: &str, hash: u64, f: impl FnOnce(&Arc<Entry<V>>) -> R) -> Option<R> {
        match self {
            Entries::Map(shards) => read(&shards[shard_of(hash)].0).get(key).map(f),
            Entries::Moka { cache, .. } => cache.get(key).as_ref().map(f),
        }
    }

    /// Locks the entries of the key whose `DeadlineTable::hash` is `hash` for
    /// writing (a shard of the map; a stripe of moka's keys).
    pub(super) fn write(&self, hash: u64) -> WriteGuard<'_, V> {
        match self {
            Entries::Map(shards) => WriteGuard::Map(write(&shards[shard_of(hash)].0)),
            Entries::Moka { cache, writes } => WriteGuard::Moka { cache, _stripe: writes.lock(hash) },
        }
    }

    /// Which lock guards the key whose `DeadlineTable::hash` is `hash` (a
    /// shard of the map; a stripe of moka's writes): a batch takes each once
    /// for all its keys that share it.
    pub(super) fn lock_of(&self, hash: u64) -> usize {
        match self {
            Entries::Map(_) => shard_of(hash),
            Entries::Moka { .. } => stripe_of(hash),
        }
    }

    /// Runs `f` with a lookup of the entries of the shard of `hash`, under one
    /// read lock (moka: none); `f` must only look up keys of that shard.
    pub(super) fn read_shard<R>(
        &self,
        hash: u64,
        f: impl FnOnce(&dyn Fn(&str) -> Option<Arc<Entry<V>>>) -> R,
    ) -> R {
        match self {
            Entries::Map(shards) => {
                let map = read(&shards[shard_of(hash)].0);
                f(&|key| map.get(key).cloned())
            }
            Entries::Moka { cache, .. } => f(&|key| cache.get(key)),
        }
    }

    /// Calls `f` on every entry (one shard's read lock at a time for the map):
    /// `f` must not call back into the store.
    pub(super) fn for_each(&self, mut f: impl FnMut(&Arc<str>, &Arc<Entry<V>>)) {
        match self {
            Entries::Map(shards) => {
                for shard in shards.iter() {
                    read(&shard.0).iter().for_each(|(k, e)| f(k, e));
                }
            }
            Entries::Moka { cache, .. } => cache.iter().for_each(|(k, e)| f(&k, &e)),
        }
    }

    /// Removes every entry, calling `f` on each after its lock is released.
    pub(super) fn clear(&self, hash: impl Fn(&str) -> u64, mut f: impl FnMut(&str, u64, Arc<Entry<V>>)) {
        match self {
            Entries::Map(shards) => {
                for shard in shards.iter() {
                    let taken = std::mem::take(&mut *write(&shard.0));
                    for (key, entry) in taken {
                        f(&key, hash(&key), entry);
                    }
                }
            }
            Entries::Moka { cache, writes } => {
                let keys: Vec<Arc<Arc<str>>> = cache.iter().map(|(k, _)| k).collect();
                for key in keys {
                    let h = hash(&key);
                    let stripe = writes.lock(h);
                    let removed = cache.remove(&**key);
                    drop(stripe);
                    if let Some(old) = removed {
                        f(&key, h, old);
                    }
                }
            }
        }
    }
}

impl<V> Entries<V> {
    /// How many entries are held, expired ones included.
    pub(super) fn count(&self) -> u64 {
        match self {
            Entries::Map(shards) => shards.iter().map(|s| read(&s.0).len() as u64).sum(),
            Entries::Moka { cache, .. } => cache.entry_count(),
        }
    }
}

impl<V: Send + Sync + 'static> WriteGuard<'_, V> {
    /// The entry of `key`.
    pub(super) fn get(&self, key: &str) -> Option<Arc<Entry<V>>> {
        match self {
            WriteGuard::Map(map) => map.get(key).cloned(),
            WriteGuard::Moka { cache, .. } => cache.get(key),
        }
    }

    /// Stores `entry` under `key`; returns the entry it replaced.
    pub(super) fn insert(&mut self, key: Arc<str>, entry: Arc<Entry<V>>) -> Option<Arc<Entry<V>>> {
        match self {
            WriteGuard::Map(map) => map.insert(key, entry),
            WriteGuard::Moka { cache, .. } => {
                let old = cache.get(&*key);
                cache.insert(key, entry);
                old
            }
        }
    }

    /// Removes the entry of `key`; returns it.
    pub(super) fn remove(&mut self, key: &str) -> Option<Arc<Entry<V>>> {
        match self {
            WriteGuard::Map(map) => {
                let removed = map.remove(key);
                shrink_if_sparse(map);
                removed
            }
            WriteGuard::Moka { cache, .. } => cache.remove(key),
        }
    }

    /// Removes the entry of `key` if it is `entry`; true if it was.
    pub(super) fn remove_if(&mut self, key: &str, entry: &Arc<Entry<V>>) -> bool {
        let held = match self {
            WriteGuard::Map(map) => map.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)),
            WriteGuard::Moka { cache, .. } => cache.get(key).is_some_and(|e| Arc::ptr_eq(&e, entry)),
        };
        held && self.remove(key).is_some()
    }
}

/// Gives memory back once a map holds under a quarter of its slots (it keeps
/// room for twice its entries, so a map that shrinks and grows around one
/// size does not rehash on every call).
fn shrink_if_sparse<V>(map: &mut Map<V>) {
    let capacity = map.capacity();
    if capacity >= SHRINK_FROM && map.len() * 4 < capacity {
        map.shrink_to(map.len() * 2);
    }
}

fn shard_of(hash: u64) -> usize {
    // The high half: the deadline table's shards use the same bits, the
    // map's own hasher has its own seed.
    (hash >> 32) as usize % SHARDS
}

/// A poisoned lock (a panic while held, which no code path here can cause:
/// only map operations and `V::clone` run under it) still guards a
/// consistent map, so its data is used.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

const WRITE_STRIPES: usize = 64;

fn stripe_of(hash: u64) -> usize {
    hash as usize % WRITE_STRIPES
}

/// Serializes the writes to one key of moka (striped over [`WRITE_STRIPES`]
/// mutexes), so each write knows exactly the entry it replaced or removed.
///
/// moka would tell through an eviction listener, but a listener makes every
/// moka write take a per-key lock from a concurrent map (measured: raw moka
/// `insert` 1.3M/s -> 0.7M/s); a striped `std::sync::Mutex` (never held
/// across an `.await`, only for a read and a write of moka) costs far less.
pub(super) struct WriteLocks {
    stripes: Box<[Mutex<()>]>,
}

impl WriteLocks {
    fn new() -> Self {
        WriteLocks { stripes: (0..WRITE_STRIPES).map(|_| Mutex::new(())).collect() }
    }

    /// Locks the stripe of the key whose `DeadlineTable::hash` is `hash`.
    fn lock(&self, hash: u64) -> MutexGuard<'_, ()> {
        let i = stripe_of(hash);
        // The guarded data is `()`: a panic while held leaves nothing inconsistent.
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// An access moves the deadline to now + idle, never past the own
    /// TTL's, not for less than the slack, and never once the driver sealed it.
    #[test]
    fn touch_moves_the_deadline_up_to_the_limit_until_sealed() {
        let limit = || 5_000;
        let e = Entry::idle(1u32, 1_000, Cap::Table);
        assert!(e.touch(500, 1_000, 10, limit));
        assert_eq!(e.deadline(), 1_500);
        assert!(e.touch(505, 1_000, 10, limit), "live, but moved by less than the slack");
        assert_eq!(e.deadline(), 1_500);
        // 4_500 is past 1_500: not live, not extended.
        assert!(!e.touch(4_500, 1_000, 10, limit));
        assert_eq!(e.deadline(), 1_500);
        assert!(e.touch(1_400, 10_000, 10, limit));
        assert_eq!(e.deadline(), 5_000, "capped by the own TTL");
        assert_eq!(e.seal_due(4_000), Err(5_000), "an access moved it: the row is filed again");
        assert_eq!(e.seal_due(5_000), Ok(()));
        assert!(!e.touch(5_000, 1_000, 10, limit), "sealed: no access extends it");
        assert!(!e.is_live(0));
        let fixed = Entry::idle(1u32, 1_000, Cap::Fixed);
        assert!(fixed.touch(500, 10_000, 10, limit));
        assert_eq!(fixed.deadline(), 1_000, "its own TTL came first: never moved");
        let free = Entry::idle(1u32, 1_000, Cap::None);
        assert!(free.touch(500, 10_000, 10, limit));
        assert_eq!(free.deadline(), 10_500);
        assert_eq!(std::mem::size_of::<Entry<()>>(), 16, "no byte more per entry");
    }

    /// A map that emptied gives its memory back; one that holds its size keeps it.
    #[test]
    fn a_sparse_map_shrinks() {
        let entries = Entries::<u32>::map();
        let keys: Vec<Arc<str>> = (0..150_000).map(|i| Arc::from(format!("k{i}"))).collect();
        let hash = |k: &str| foldhash::fast::FixedState::default().hash_one(k);
        for k in &keys {
            entries.write(hash(k)).insert(Arc::clone(k), Arc::new(Entry::new(1, NO_DEADLINE)));
        }
        let Entries::Map(shards) = &entries else { unreachable!() };
        let capacity = || shards.iter().map(|s| read(&s.0).capacity()).sum::<usize>();
        let full = capacity();
        assert!(full >= 150_000);
        for k in &keys[..149_000] {
            assert!(entries.write(hash(k)).remove(k).is_some());
        }
        assert_eq!(entries.count(), 1000);
        assert!(capacity() * 4 < full, "capacity {} of {full}", capacity());
        for k in &keys[149_000..] {
            assert!(entries.read(k, hash(k), |e| e.value == 1).expect("kept"));
        }
    }
}
