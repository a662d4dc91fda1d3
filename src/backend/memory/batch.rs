//! Batches on the memory backend: the keys of a batch are grouped by the
//! lock that guards them (a shard of the map, a stripe of moka's writes),
//! and each such lock is taken once for all its keys.
//!
//! Each key is still read or written exactly as a single request does it
//! (the same deadline rows, the same end reports), so a batch is atomic per
//! key; two keys behind different locks are not written at one instant.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::entries::{Cap, Entry};
use super::timers::NO_DEADLINE;
use super::{Shared, ended, forget_limit};
use crate::Value;
use crate::error::Result;

/// One key of a batch: the lock guarding it, its position, its hash.
type Slot = (usize, usize, u64);

impl<V: Value> Shared<V> {
    /// The keys' slots, sorted by lock and, within a lock, by position (so a
    /// key given twice is applied in the order given).
    fn by_lock<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<Slot> {
        let mut slots: Vec<Slot> = keys
            .enumerate()
            .map(|(i, key)| {
                let hash = self.deadlines.hash(key);
                (self.entries.lock_of(hash), i, hash)
            })
            .collect();
        slots.sort_unstable();
        slots
    }

    /// `Request::GetMany`: one live value per key, in order.
    pub(super) fn get_many(&self, keys: &[String]) -> Vec<Option<V>> {
        if self.idle.is_some() {
            // Each read is an access that may move the entry's idle deadline
            // (`read_live`, one read lock per key).
            return keys.iter().map(|key| self.read_live(key, |e| e.value.clone())).collect();
        }
        let now = self.deadlines.micros(Instant::now());
        let mut out = vec![None; keys.len()];
        for group in self.by_lock(keys.iter().map(String::as_str)).chunk_by(|a, b| a.0 == b.0) {
            self.entries.read_shard(group[0].2, |get| {
                for &(_, i, _) in group {
                    out[i] = get(&keys[i]).filter(|e| e.is_live(now)).map(|e| e.value.clone());
                }
            });
        }
        out
    }

    /// `Request::SetMany`: every entry stored with `ttl`, in order. The
    /// deadline is checked before anything is written.
    pub(super) fn set_many(&self, entries: Vec<(String, V)>, ttl: Option<Duration>) -> Result<()> {
        let now = Instant::now();
        let own = self.deadline_for(now, ttl)?;
        let (deadline, cap) = self.idle_deadline(self.deadlines.micros(now), own);
        let slots = self.by_lock(entries.iter().map(|(k, _)| k.as_str()));
        let mut entries: Vec<Option<(String, V)>> = entries.into_iter().map(Some).collect();
        let mut replaced = Vec::new();
        for group in slots.chunk_by(|a, b| a.0 == b.0) {
            let mut write = self.entries.write(group[0].2);
            for &(_, i, hash) in group {
                let Some((key, value)) = entries[i].take() else { continue };
                let key: Arc<str> = Arc::from(key);
                let entry = Arc::new(Entry::idle(value, deadline, cap));
                if cap == Cap::Table {
                    self.record_limit(&key, own, &entry);
                }
                // As in `set`: only an entry with a deadline has a row to end or an expiry to report.
                let old = write.insert(Arc::clone(&key), Arc::clone(&entry)).filter(|e| e.has_deadline());
                if deadline == NO_DEADLINE && old.is_none() {
                    continue;
                }
                let new_row = (deadline != NO_DEADLINE).then(|| (Arc::clone(&key), deadline, &entry));
                let row_removed = self.deadlines.replace(hash, old.as_ref(), new_row);
                if let Some(old) = old {
                    replaced.push((key, hash, old, row_removed));
                }
            }
            drop(write);
            for (key, hash, old, row_removed) in replaced.drain(..) {
                ended(&self.deadlines, &self.sink, &key, hash, &old, row_removed);
                forget_limit(&self.limits, &key, &old);
            }
        }
        Ok(())
    }

    /// `Request::DeleteMany`: per key, whether a live entry was removed and its value.
    pub(super) fn delete_many(&self, keys: &[String]) -> Vec<(bool, Option<V>)> {
        let mut out = vec![(false, None); keys.len()];
        let mut taken = Vec::new();
        for group in self.by_lock(keys.iter().map(String::as_str)).chunk_by(|a, b| a.0 == b.0) {
            let mut write = self.entries.write(group[0].2);
            for &(_, i, hash) in group {
                if let Some(old) = write.remove(&keys[i]) {
                    taken.push((i, hash, old));
                }
            }
            drop(write);
            for (i, hash, old) in taken.drain(..) {
                // Ends its deadline row and reports an entry that had already expired.
                self.removed(&keys[i], hash, &old);
                if old.is_live(self.deadlines.micros(Instant::now())) {
                    out[i] = (true, Some(old.value.clone()));
                }
            }
        }
        out
    }
}
