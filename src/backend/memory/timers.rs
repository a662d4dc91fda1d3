//! The memory backend's deadline table: a hierarchical timer wheel per shard
//! whose rows hold the key and a handle on the entry they end.
//!
//! moka alone never reports untouched expired entries (measured: none of 2,000
//! within 3 s), so deadlines live here. A row is `(tick, key, Arc<entry>)`: the
//! key is the `Arc<str>` moka holds (no copy of it, ~30 B less per TTL'd entry
//! than the boxed key it replaced), and the handle lets the driver report an
//! expiry without reading moka. An entry records where its row is, so the
//! writer that replaces or removes it takes the row out in O(1) (a
//! `swap_remove` in its slot); each entry also knows whether it already ended
//! (replaced, removed, evicted or reported), so an old deadline can never
//! report or remove a newer value: a re-set key has a new entry, and the
//! driver re-checks, under the key's write lock, that the entry it removes is
//! the one moka holds.
//!
//! Measured (callgrind, blocking `set_with_ttl` over 10k keys with a deadline):
//! the sorted map of `(deadline, generation) -> Box<str>` this replaced cost
//! ~850 instructions per write to swap two rows; the wheel ~250. A row whose
//! position is unknown (more than 2^23 rows in one slot, or moved by the
//! cascade of a slot of more than 8,192 rows, which records no positions:
//! a write to each entry, a cache miss a row) or that the driver
//! already took is left in place and counted dead; the driver drops dead rows
//! when they come due and compacts a shard whose dead rows outnumber its live
//! ones by 1,024, so the table stays bounded by the live entries.
//!
//! A large slot below the top level is split into the slots of the level
//! below ahead of its start, a chunk at a time between the driver's batches
//! ([`Staged`]), so that when it starts nothing is due behind a cascade of
//! all its rows at once (measured, 1M deadlines over 1 s: the one-shot
//! cascade of ~900k rows made 18-41 ms of lateness at the slot's start).
//!
//! Deadlines are whole microseconds since the table's `base` (an `u64`, not an
//! `Instant`); rows are due by millisecond ticks rounded up, so a row is never
//! taken before its deadline and at most 1 ms after it. The wheel is tokio's
//! design: 6 levels of 64 slots (level `l` slots span `64^l` ms, ~2.2 years in
//! all; rows beyond it wait in the top level and are placed again when it
//! comes round).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

const SHARDS: usize = 16;

/// Slots per wheel level.
const SLOTS: usize = 64;
/// Wheel levels.
const LEVELS: usize = 6;
/// Ticks covered by the whole wheel.
const HORIZON: u64 = 1 << (6 * LEVELS);
/// Dead rows a shard tolerates before compaction, beyond as many as it has live ones.
const DEAD_SLACK: usize = 1024;
/// Rows of one slot whose positions a cascade still records (see [`Wheel::take_due`]).
const TRACKED_CASCADE: usize = 8192;

/// A deadline or a clock reading: whole microseconds since the table's base
/// (rounded down, both, so an entry is gone once `deadline <= now`, as it was
/// with `Instant`s at the same precision). [`NO_DEADLINE`]: none.
pub(super) type Micros = u64;

/// The [`Micros`] of an entry without a deadline (later than any clock reading).
pub(super) const NO_DEADLINE: Micros = u64::MAX;

/// What the table needs of an entry: whether it already ended, and where
/// its row is.
pub(super) trait Timed {
    /// True once the entry was replaced, removed, evicted or reported expired:
    /// its row, if still held, is dead.
    fn ended(&self) -> bool;
    /// Where its row is ([`Pos`]), kept by the table under the shard's lock.
    fn row_pos(&self) -> &AtomicU32;
}

/// Where a row is in its wheel: `0` none (or unknown), else
/// `(level + 1) << 29 | slot << 23 | index`, level 7 being the ready list.
/// A position is a hint, checked against the entry before use.
type Pos = u32;
const INDEX_BITS: u32 = 23;
const READY: usize = 6;

fn pos(level: usize, slot: usize, index: usize) -> Pos {
    if index >= 1 << INDEX_BITS {
        return 0; // unknown: the row is found dead later instead
    }
    ((level as u32 + 1) << 29) | ((slot as u32) << INDEX_BITS) | index as u32
}

/// One pending deadline: its tick, the key and the entry it ends.
pub(super) struct Row<E> {
    /// The deadline in ms since the base, rounded up.
    tick: u64,
    pub(super) key: Arc<str>,
    pub(super) entry: Arc<E>,
}

/// One level of a wheel: 64 slots and a bitmap of the occupied ones.
struct Level<E> {
    occupied: u64,
    slots: [Vec<Row<E>>; SLOTS],
}

/// The timer wheel of one shard.
struct Wheel<E> {
    /// Every slot due at or before this tick has been taken.
    elapsed: u64,
    levels: [Level<E>; LEVELS],
    /// Rows due, waiting to be taken (a batch was full, or inserted in the past).
    ready: Vec<Row<E>>,
    /// A large slot being split ahead of its start (see [`Staged`]).
    staged: Option<Box<Staged<E>>>,
    /// Rows held, live and dead.
    len: usize,
}

/// A slot of more than [`TRACKED_CASCADE`] rows, at a level below the top,
/// split into the 64 slots of the level below before it starts, a chunk at a
/// time ([`Wheel::stage`]): when it starts, its rows take their places in
/// 64 vector moves instead of one move each, which took ~20-40 ms for 900k
/// rows, all of it lateness. Rows written to it meanwhile still go to the
/// slot (and are staged or cascaded with the rest); staged rows keep stale
/// positions, like the rows of any large cascade.
struct Staged<E> {
    level: usize,
    slot: usize,
    /// The tick the slot starts at.
    tick: u64,
    /// Its rows staged so far, by their slot in the level below.
    below: [Vec<Row<E>>; SLOTS],
}

/// The level of a row due at `tick` in a wheel at `elapsed` (`tick > elapsed`).
fn level_for(elapsed: u64, tick: u64) -> usize {
    let masked = ((elapsed ^ tick) | (SLOTS as u64 - 1)).min(HORIZON - 1);
    let significant = 63 - masked.leading_zeros() as usize;
    significant / 6
}

fn slot_range(level: usize) -> u64 {
    1 << (6 * level)
}

impl<E: Timed> Wheel<E> {
    fn new() -> Self {
        Wheel {
            elapsed: 0,
            levels: std::array::from_fn(|_| Level {
                occupied: 0,
                slots: std::array::from_fn(|_| Vec::new()),
            }),
            ready: Vec::new(),
            staged: None,
            len: 0,
        }
    }

    fn insert(&mut self, row: Row<E>) {
        self.len += 1;
        self.place(row, true);
    }

    /// Puts a held row where it is due (or in `ready`), recording its
    /// position in its entry if `track` (else the entry keeps a stale one,
    /// which [`remove`](Self::remove) finds wrong: the row is removed later, dead).
    fn place(&mut self, row: Row<E>, track: bool) {
        if row.tick <= self.elapsed {
            if track {
                row.entry.row_pos().store(pos(READY, 0, self.ready.len()), Ordering::Relaxed);
            }
            self.ready.push(row);
            return;
        }
        // Rows past the horizon wait in the top level (its slots wrap round).
        let at = row.tick.min(self.elapsed + HORIZON - 1);
        let level = level_for(self.elapsed, at);
        let slot = ((at >> (6 * level)) % SLOTS as u64) as usize;
        let l = &mut self.levels[level];
        l.occupied |= 1 << slot;
        if track {
            row.entry.row_pos().store(pos(level, slot, l.slots[slot].len()), Ordering::Relaxed);
        }
        l.slots[slot].push(row);
    }

    /// Removes the row of `entry` if it is where its position says (else it
    /// was taken by the driver, or its position is unknown); true if removed.
    fn remove(&mut self, entry: &Arc<E>) -> bool {
        let p = entry.row_pos().load(Ordering::Relaxed);
        if p == 0 {
            return false;
        }
        let level = (p >> 29) as usize - 1;
        let slot = ((p >> INDEX_BITS) & 63) as usize;
        let index = (p & ((1 << INDEX_BITS) - 1)) as usize;
        let staged = self.is_staged(level, slot);
        let rows = if level == READY { &mut self.ready } else { &mut self.levels[level].slots[slot] };
        if !rows.get(index).is_some_and(|r| Arc::ptr_eq(&r.entry, entry)) {
            return false;
        }
        rows.swap_remove(index);
        entry.row_pos().store(0, Ordering::Relaxed);
        if let Some(moved) = rows.get(index) {
            moved.entry.row_pos().store(pos(level, slot, index), Ordering::Relaxed);
        }
        // A staged slot stays occupied until it starts, however many rows it still holds.
        if rows.is_empty() && level != READY && !staged {
            *rows = Vec::new();
            self.levels[level].occupied &= !(1 << slot);
        }
        self.len -= 1;
        true
    }

    /// The earliest occupied slot: (its level, slot, the tick it starts at).
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        (0..LEVELS).find_map(|level| self.next_slot(level).map(|(slot, tick)| (level, slot, tick)))
    }

    /// The next occupied slot of `level`: (slot, the tick it starts at).
    fn next_slot(&self, level: usize) -> Option<(usize, u64)> {
        let l = &self.levels[level];
        if l.occupied == 0 {
            return None;
        }
        let now_slot = self.elapsed / slot_range(level);
        let zeros = l.occupied.rotate_right((now_slot % SLOTS as u64) as u32).trailing_zeros() as u64;
        let slot = ((now_slot + zeros) % SLOTS as u64) as usize;
        let level_range = slot_range(level + 1);
        let mut tick = (self.elapsed & !(level_range - 1)) + slot as u64 * slot_range(level);
        if tick <= self.elapsed && level + 1 == LEVELS {
            // The top level wraps: a slot "before" now is a round ahead.
            tick += level_range;
        }
        Some((slot, tick))
    }

    fn is_staged(&self, level: usize, slot: usize) -> bool {
        self.staged.as_ref().is_some_and(|s| s.level == level && s.slot == slot)
    }

    /// The slot to stage next, if any: the earliest large slot of a level
    /// between the bottom and the top, from halfway through the slot before
    /// it (its level's span / 2 ahead of its start); `(level, slot, tick)`.
    fn to_stage(&self) -> Option<(usize, usize, u64)> {
        (1..LEVELS - 1)
            .filter_map(|level| {
                let (slot, tick) = self.next_slot(level)?;
                (self.levels[level].slots[slot].len() > TRACKED_CASCADE).then_some((level, slot, tick))
            })
            .min_by_key(|&(_, _, tick)| tick)
    }

    /// When staging has work (see [`stage`](Self::stage)): a tick, or `None`.
    fn next_stage(&self) -> Option<u64> {
        match &self.staged {
            Some(st) => (!self.levels[st.level].slots[st.slot].is_empty()).then_some(self.elapsed),
            None => self.to_stage().map(|(level, _, tick)| tick.saturating_sub(slot_range(level) / 2)),
        }
    }

    /// Stages up to `max` rows of the next large slot if its time came
    /// (`now`, see [`next_stage`](Self::next_stage)); returns how many it moved.
    fn stage(&mut self, now: u64, max: usize) -> usize {
        if self.next_stage().is_none_or(|at| at > now) {
            return 0;
        }
        if self.staged.is_none() {
            let Some((level, slot, tick)) = self.to_stage() else { return 0 };
            self.staged =
                Some(Box::new(Staged { level, slot, tick, below: std::array::from_fn(|_| Vec::new()) }));
        }
        let Some(st) = self.staged.as_mut() else { return 0 };
        let rows = &mut self.levels[st.level].slots[st.slot];
        let n = max.min(rows.len());
        let shift = 6 * (st.level - 1);
        for row in rows.drain(rows.len() - n..) {
            st.below[((row.tick >> shift) % SLOTS as u64) as usize].push(row);
        }
        n
    }

    /// Takes the staged slot (level, slot) that starts at `tick`, now due:
    /// its staged rows go to the slots of the level below, the rest are placed.
    fn start_staged(&mut self, level: usize, slot: usize, tick: u64) {
        let Some(st) = self.staged.take() else { return };
        let rows = std::mem::take(&mut self.levels[level].slots[slot]);
        self.levels[level].occupied &= !(1 << slot);
        self.elapsed = self.elapsed.max(tick);
        if self.elapsed == st.tick {
            // The level below spans this slot from its start: slot `j` holds
            // exactly the rows staged into `j`.
            let below = &mut self.levels[level - 1];
            for (j, mut staged) in st.below.into_iter().enumerate() {
                if staged.is_empty() {
                    continue;
                }
                below.occupied |= 1 << j;
                if below.slots[j].is_empty() {
                    below.slots[j] = staged;
                } else {
                    below.slots[j].append(&mut staged);
                }
            }
        } else {
            for row in st.below.into_iter().flatten() {
                self.place(row, false);
            }
        }
        let track = rows.len() <= TRACKED_CASCADE;
        for row in rows {
            self.place(row, track);
        }
    }

    /// The earliest tick at which something may be due.
    fn next_tick(&self) -> Option<u64> {
        if !self.ready.is_empty() {
            return Some(self.elapsed);
        }
        self.next_expiration().map(|(_, _, tick)| tick)
    }

    /// Moves up to `max` rows due at `now` into `out`.
    fn take_due(&mut self, now: u64, max: usize, out: &mut Vec<Row<E>>) {
        loop {
            let room = max.saturating_sub(out.len());
            if room == 0 {
                return;
            }
            if !self.ready.is_empty() {
                let from = self.ready.len().saturating_sub(room);
                self.len -= self.ready.len() - from;
                out.extend(
                    self.ready.drain(from..).inspect(|r| r.entry.row_pos().store(0, Ordering::Relaxed)),
                );
                continue;
            }
            match self.next_expiration() {
                Some((level, slot, tick)) if tick <= now && self.is_staged(level, slot) => {
                    self.start_staged(level, slot, tick);
                }
                Some((level, slot, tick)) if tick <= now => {
                    let l = &mut self.levels[level];
                    l.occupied &= !(1 << slot);
                    let rows = std::mem::take(&mut l.slots[slot]);
                    self.elapsed = self.elapsed.max(tick);
                    // Recording a position writes to the entry, a cache miss
                    // each (measured: ~55 ns a row; 80 ms for the 900k rows
                    // of one top-level slot, all that time late): a large
                    // slot moves without, its rows then end as dead rows.
                    let track = rows.len() <= TRACKED_CASCADE;
                    for row in rows {
                        self.place(row, track);
                    }
                }
                _ => {
                    self.elapsed = self.elapsed.max(now);
                    return;
                }
            }
        }
    }

    /// Drops the rows whose entry ended; returns how many.
    fn compact(&mut self) -> usize {
        let before = self.len;
        let mut kept = 0;
        let staged = self.staged.as_ref().map(|s| (s.level, s.slot));
        for (level, l) in self.levels.iter_mut().enumerate() {
            for (i, slot) in l.slots.iter_mut().enumerate() {
                slot.retain(|r| !r.entry.ended());
                if slot.is_empty() && staged != Some((level, i)) {
                    *slot = Vec::new();
                    l.occupied &= !(1 << i);
                }
                for (index, r) in slot.iter().enumerate() {
                    r.entry.row_pos().store(pos(level, i, index), Ordering::Relaxed);
                }
                kept += slot.len();
            }
        }
        if let Some(st) = self.staged.as_mut() {
            for rows in st.below.iter_mut() {
                rows.retain(|r| !r.entry.ended());
                kept += rows.len();
            }
        }
        self.ready.retain(|r| !r.entry.ended());
        for (index, r) in self.ready.iter().enumerate() {
            r.entry.row_pos().store(pos(READY, 0, index), Ordering::Relaxed);
        }
        kept += self.ready.len();
        self.len = kept;
        before - kept
    }
}

/// One shard: its wheel, and how many of its rows are dead.
struct Shard<E> {
    wheel: Mutex<Wheel<E>>,
    /// Rows whose entry ended (counted by whoever ended it, uncounted when
    /// the row goes); the driver compacts beyond [`DEAD_SLACK`] + live rows.
    dead: AtomicUsize,
    /// Rows held (a copy of the wheel's `len`, read without the lock).
    len: AtomicUsize,
}

/// Deadlines of every entry that has one, sharded by key so writers on
/// different keys do not contend.
///
/// A `std::sync::Mutex` (not Tokio's) guards each shard: it is never held
/// across an `.await`, only for one wheel operation (or one compaction).
pub(super) struct DeadlineTable<E> {
    shards: Box<[Shard<E>]>,
    hasher: foldhash::fast::RandomState,
    /// Micros of the earliest deadline the driver is sleeping towards
    /// (`u64::MAX`: none), so writers wake it only when they add an earlier one.
    earliest: AtomicU64,
    /// Set when a shard has too many dead rows (the driver compacts it).
    compact: AtomicBool,
    base: Instant,
    wake: Notify,
}

impl<E: Timed> DeadlineTable<E> {
    pub(super) fn new() -> Self {
        DeadlineTable {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    wheel: Mutex::new(Wheel::new()),
                    dead: AtomicUsize::new(0),
                    len: AtomicUsize::new(0),
                })
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            earliest: AtomicU64::new(u64::MAX),
            compact: AtomicBool::new(false),
            base: Instant::now(),
            wake: Notify::new(),
        }
    }

    /// The hash of `key` that picks its shard (the backend's write locks use it too,
    /// so a write hashes its key once).
    pub(super) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &Shard<E> {
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    /// `at` in micros since the base (never [`NO_DEADLINE`]): a deadline, or
    /// a clock reading `now` at which a deadline `d` has passed iff `d <= now`.
    pub(super) fn micros(&self, at: Instant) -> Micros {
        let d = at.saturating_duration_since(self.base);
        d.as_secs()
            .checked_mul(1_000_000)
            .and_then(|us| us.checked_add(u64::from(d.subsec_micros())))
            .map_or(NO_DEADLINE - 1, |us| us.min(NO_DEADLINE - 1))
    }

    /// The `Instant` of a deadline.
    pub(super) fn instant(&self, at: Micros) -> Instant {
        self.base + Duration::from_micros(at)
    }

    /// In one lock of the key's shard (`hash`: the key's [`hash`](Self::hash)):
    /// removes the row of `old` if the table still holds it (true if so), and
    /// records the deadline `at` of `new` under `key`, waking the driver if it
    /// is the new earliest.
    pub(super) fn replace(
        &self,
        hash: u64,
        old: Option<&Arc<E>>,
        new: Option<(Arc<str>, Micros, &Arc<E>)>,
    ) -> bool {
        let shard = self.shard(hash);
        let mut wheel = lock(&shard.wheel);
        let removed = old.is_some_and(|old| wheel.remove(old));
        let tick = new.map(|(key, at, entry)| {
            let tick = at.div_ceil(1000);
            wheel.insert(Row { tick, key, entry: Arc::clone(entry) });
            tick
        });
        shard.len.store(wheel.len, Ordering::Relaxed);
        drop(wheel);
        if let Some(tick) = tick {
            let at = tick.saturating_mul(1000);
            if at < self.earliest.fetch_min(at, Ordering::AcqRel) {
                self.wake.notify_one();
            }
        }
        removed
    }

    /// Counts the row of an entry that ended but was not removed (the key's
    /// `hash`): it is dead, the driver drops it.
    pub(super) fn ended(&self, hash: u64) {
        let shard = self.shard(hash);
        let dead = shard.dead.fetch_add(1, Ordering::Relaxed) + 1;
        let live = shard.len.load(Ordering::Relaxed).saturating_sub(dead);
        if dead > live + DEAD_SLACK && !self.compact.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Uncounts `n` dead rows of the shard of `hash` (the driver dropped them).
    pub(super) fn dropped_dead(&self, hash: u64, n: usize) {
        let _ = self
            .shard(hash)
            .dead
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(n)));
    }

    /// Takes up to `max` rows that are due at `now` (live and dead ones).
    pub(super) fn take_due(&self, now: Instant, max: usize, out: &mut Vec<Row<E>>) {
        // Due once the deadline's tick (rounded up) has started.
        let now = self.micros(now) / 1000;
        for shard in self.shards.iter() {
            if out.len() >= max {
                return;
            }
            let mut wheel = lock(&shard.wheel);
            wheel.take_due(now, max, out);
            shard.len.store(wheel.len, Ordering::Relaxed);
        }
    }

    /// Stages up to `max` rows of large slots that start soon (see
    /// [`Staged`]); true if staging has more work now.
    pub(super) fn stage(&self, now: Instant, max: usize) -> bool {
        let now = self.micros(now) / 1000;
        let mut left = max;
        let mut more = false;
        for shard in self.shards.iter() {
            let mut wheel = lock(&shard.wheel);
            left -= wheel.stage(now, left);
            more |= wheel.next_stage().is_some_and(|at| at <= now);
        }
        more
    }

    /// Drops the dead rows of every shard that has too many, if a writer asked.
    pub(super) fn compact_if_asked(&self) {
        if !self.compact.swap(false, Ordering::AcqRel) {
            return;
        }
        for shard in self.shards.iter() {
            let dead = shard.dead.load(Ordering::Relaxed);
            if dead <= DEAD_SLACK {
                continue;
            }
            let mut wheel = lock(&shard.wheel);
            let dropped = wheel.compact();
            shard.len.store(wheel.len, Ordering::Relaxed);
            drop(wheel);
            let _ = shard
                .dead
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(dropped)));
        }
    }

    /// When the driver must look again: the earliest tick at which a row may
    /// be due or a slot staged; records it as what the driver sleeps towards.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let next = self
            .shards
            .iter()
            .filter_map(|s| {
                let wheel = lock(&s.wheel);
                [wheel.next_tick(), wheel.next_stage()].into_iter().flatten().min()
            })
            .min()
            .map(|t| t * 1000);
        self.earliest.store(next.unwrap_or(u64::MAX), Ordering::Release);
        next.map(|at| self.instant(at))
    }

    /// Resolves when a writer added a deadline earlier than the one being
    /// slept towards, or asked for a compaction.
    pub(super) async fn woken(&self) {
        self.wake.notified().await
    }

    /// Forgets every deadline.
    pub(super) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut wheel = lock(&shard.wheel);
            let elapsed = wheel.elapsed;
            *wheel = Wheel::new();
            wheel.elapsed = elapsed;
            shard.len.store(0, Ordering::Relaxed);
            shard.dead.store(0, Ordering::Relaxed);
        }
    }

    /// Number of pending deadlines of live entries (for resource-bound tests):
    /// rows held less the dead ones.
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.wheel).len.saturating_sub(s.dead.load(Ordering::Relaxed))).sum()
    }
}

/// Locks a shard; a poisoned shard (a panic while held, which no code path here
/// can cause) is still a consistent wheel, so its data is used.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct E(AtomicBool, AtomicU32);
    impl Timed for E {
        fn ended(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
        fn row_pos(&self) -> &AtomicU32 {
            &self.1
        }
    }

    fn entry(ended: bool) -> Arc<E> {
        Arc::new(E(AtomicBool::new(ended), AtomicU32::new(0)))
    }

    fn row(tick: u64, e: &Arc<E>) -> Row<E> {
        Row { tick, key: Arc::from(format!("k{tick}")), entry: Arc::clone(e) }
    }

    /// Rows come out at their tick, in tick order across levels, never before.
    #[test]
    fn wheel_takes_rows_at_their_tick() {
        let mut w = Wheel::new();
        let ticks = [1u64, 5, 63, 64, 65, 4095, 4096, 70_000, 3_000_000, HORIZON + 5, 3 * HORIZON];
        for &t in ticks.iter().rev() {
            w.insert(row(t, &entry(false)));
        }
        let mut seen = Vec::new();
        let mut out = Vec::new();
        let mut now = 0;
        while seen.len() < ticks.len() {
            now = now.max(w.next_tick().expect("rows pending"));
            w.take_due(now, 3, &mut out);
            for r in out.drain(..) {
                assert!(r.tick <= now, "row {} taken at {now}", r.tick);
                seen.push(r.tick);
            }
        }
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(seen, sorted);
        assert_eq!(w.len, 0);
    }

    #[test]
    fn compaction_drops_dead_rows() {
        let mut w = Wheel::new();
        for t in 1..100 {
            w.insert(row(t * 97, &entry(t % 3 != 0)));
        }
        assert_eq!(w.compact(), 66);
        assert_eq!(w.len, 33);
        let mut out = Vec::new();
        w.take_due(u64::MAX / 2, usize::MAX, &mut out);
        assert_eq!(out.len(), 33);
    }

    /// A slot of more rows than [`TRACKED_CASCADE`] cascades without
    /// recording positions: its rows can no longer be removed by position
    /// (their writers count them dead instead), and each still comes out at
    /// its tick, exactly once; a small slot keeps every position.
    #[test]
    fn a_large_cascade_leaves_positions_stale_but_loses_no_row() {
        let mut w = Wheel::new();
        let big: Vec<Arc<E>> = (0..TRACKED_CASCADE + 1).map(|_| entry(false)).collect();
        let small: Vec<Arc<E>> = (0..10).map(|_| entry(false)).collect();
        // Ticks 4,096..: one slot of level 2 (at elapsed 0); 100..: level 1.
        for (i, e) in big.iter().enumerate() {
            w.insert(row(4096 + (i as u64 % 2000), e));
        }
        for (i, e) in small.iter().enumerate() {
            w.insert(row(100 + i as u64, e));
        }
        let mut out = Vec::new();
        // Both slots cascade (nothing is due yet at 4,095).
        w.take_due(90, usize::MAX, &mut out);
        w.take_due(4095, usize::MAX, &mut out);
        assert_eq!(out.len(), 10, "the small slot's rows came due");
        for r in out.drain(..) {
            assert!(small.iter().any(|e| Arc::ptr_eq(e, &r.entry)));
        }
        let mut taken = 0;
        w.take_due(4096, 1, &mut out);
        taken += out.drain(..).count();
        assert!(!w.remove(&big[5]), "a stale position never removes a row");
        w.take_due(u64::MAX / 2, usize::MAX, &mut out);
        taken += out.len();
        assert_eq!(taken, big.len(), "every row of the large slot came out once");
        assert_eq!(w.len, 0);
    }

    /// A large slot staged ahead of its start, a chunk at a time, while rows
    /// are written to it and removed from it: every live row still comes out
    /// at its tick, in tick order, exactly once; a removed one never does.
    #[test]
    fn a_staged_slot_loses_no_row_and_keeps_the_order() {
        let mut w = Wheel::new();
        let n = TRACKED_CASCADE * 2;
        // Ticks 4,096..6,095: one slot of level 2.
        let es: Vec<Arc<E>> = (0..n).map(|_| entry(false)).collect();
        for (i, e) in es.iter().enumerate() {
            w.insert(row(4096 + (i as u64 * 7919) % 2000, e));
        }
        // Nothing to stage before halfway through the slot before it.
        assert_eq!(w.next_stage(), Some(4096 - 2048));
        assert_eq!(w.stage(2000, usize::MAX), 0);
        let mut out = Vec::new();
        w.take_due(2048, usize::MAX, &mut out);
        assert!(out.is_empty());
        assert_eq!(w.stage(2048, 1000), 1000);
        // Written and removed while staged: positions still right for rows in the slot.
        let late: Vec<Arc<E>> = (0..100).map(|_| entry(false)).collect();
        for (i, e) in late.iter().enumerate() {
            w.insert(row(4100 + i as u64, e));
        }
        assert!(w.remove(&es[0]), "a row not yet staged is removed by position");
        assert!(w.remove(&late[99]), "a row written to the staged slot is removed by position");
        while w.stage(3000, 4096) > 0 {}
        assert_eq!(w.next_stage(), None, "staged to the end");
        assert!(!w.remove(&es[n - 1]), "a staged row keeps a stale position");
        let mut seen = Vec::new();
        let mut now = 3000;
        while w.len > 0 {
            now = now.max(w.next_tick().expect("rows pending"));
            w.take_due(now, 500, &mut out);
            for r in out.drain(..) {
                assert!(r.tick <= now, "row {} taken at {now}", r.tick);
                seen.push((r.tick, Arc::as_ptr(&r.entry)));
            }
        }
        assert!(seen.windows(2).all(|p| p[0].0 <= p[1].0), "in tick order");
        let mut ptrs: Vec<_> = seen.iter().map(|(_, p)| *p).collect();
        ptrs.sort_unstable();
        ptrs.dedup();
        assert_eq!(ptrs.len(), seen.len(), "each row once");
        // All but the two removed ones (es[n-1] was not removed: its row stayed).
        assert_eq!(seen.len(), n + 100 - 2);
        assert!(!seen.iter().any(|(_, p)| *p == Arc::as_ptr(&es[0]) || *p == Arc::as_ptr(&late[99])));
    }

    /// A row is removed where its position says, and every other row keeps a
    /// true position (rows move on removal and when a level cascades).
    #[test]
    fn rows_are_removed_by_position() {
        let mut w = Wheel::new();
        let es: Vec<Arc<E>> = (0..500).map(|_| entry(false)).collect();
        for (i, e) in es.iter().enumerate() {
            w.insert(row(1 + (i as u64 * 7919) % 300_000, e));
        }
        for e in es.iter().step_by(3) {
            assert!(w.remove(e));
            assert!(!w.remove(e), "removed twice");
        }
        let mut out = Vec::new();
        w.take_due(5_000, usize::MAX, &mut out);
        for (i, e) in es.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
            let taken = out.iter().any(|r| Arc::ptr_eq(&r.entry, e));
            assert_eq!(w.remove(e), !taken, "entry {i}");
        }
        assert_eq!(w.len, 0);
    }
}
