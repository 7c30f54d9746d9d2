//! A compact, read-mostly index of domain names for registries of tens of millions of records.
//!
//! Layout, chosen for memory and cache misses rather than generality:
//! - every name lives in one byte arena (no allocation per record);
//! - one open-addressing table of 16-byte slots holds the name's full 64-bit hash, its place
//!   in the arena, its length and its status. A lookup that misses usually touches one cache
//!   line; a hit touches that line and the name's bytes in the arena;
//! - the rare records with an expiry keep it in a side table, looked at only when a slot says so.
//!
//! The hash is SipHash-1-3 with per-process random keys (the standard library's `RandomState`):
//! the Host is chosen by clients, and keyed hashing is what stops them aiming names at one run
//! of slots.
//!
//! The table grows while a snapshot streams in (its size is only known at the trailer), then is
//! rebuilt once at its final size so the steady state sits at `LOAD` whatever the growth path.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use crate::registry::Status;

/// Fill ratio of the table. Linear probing stays short well below 0.8.
const LOAD: f64 = 0.7;

#[derive(Clone, Copy, Default, Debug)]
#[repr(C)]
struct Slot {
    hash: u64,
    offset: u32,
    /// 0 marks an empty slot: names are never empty.
    len: u8,
    status: u8,
    /// `HAS_EXPIRY` when the side table holds an expiry for this name.
    flags: u8,
    _pad: u8,
}

const HAS_EXPIRY: u8 = 1;

/// What the index knows of one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub status: Status,
    pub expires_at: Option<i64>,
}

/// The name is already in the index.
#[derive(Debug, PartialEq, Eq)]
pub struct Duplicate;

/// The arena would pass 4 GiB (offsets are 32-bit).
#[derive(Debug, PartialEq, Eq)]
pub struct ArenaFull;

#[derive(Debug)]
pub enum InsertError {
    Duplicate,
    ArenaFull,
}

#[derive(Clone)]
pub struct NameIndex {
    slots: Vec<Slot>,
    arena: Vec<u8>,
    expiries: HashMap<u32, i64>,
    len: usize,
    hasher: RandomState,
}

impl std::fmt::Debug for NameIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameIndex")
            .field("len", &self.len)
            .field("slots", &self.slots.len())
            .field("arena_bytes", &self.arena.len())
            .finish()
    }
}

impl Default for NameIndex {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

const STATUS_BY_CODE: [Status; 5] = Status::ALL;

impl NameIndex {
    pub fn with_capacity(records: usize) -> Self {
        NameIndex {
            slots: vec![Slot::default(); slots_for(records)],
            arena: Vec::new(),
            expiries: HashMap::new(),
            len: 0,
            hasher: RandomState::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn hash(&self, name: &[u8]) -> u64 {
        self.hasher.hash_one(name)
    }

    /// Where the probe for `hash` starts: the high half of the hash mapped onto the table
    /// (multiply-shift), independent of the low half used nowhere else.
    #[inline]
    fn home(&self, hash: u64) -> usize {
        (((hash >> 32) * self.slots.len() as u64) >> 32) as usize
    }

    pub fn insert(
        &mut self,
        name: &[u8],
        status: Status,
        expires_at: Option<i64>,
    ) -> Result<(), InsertError> {
        debug_assert!(!name.is_empty() && name.len() <= 255);
        if (self.len + 1) as f64 > self.slots.len() as f64 * LOAD {
            self.rebuild(slots_for((self.len + 1) * 2));
        }
        let hash = self.hash(name);
        let mut i = self.home(hash);
        loop {
            let slot = &self.slots[i];
            if slot.len == 0 {
                break;
            }
            if slot.hash == hash && self.name_at(slot) == name {
                return Err(InsertError::Duplicate);
            }
            i = self.next(i);
        }
        let offset = u32::try_from(self.arena.len())
            .ok()
            .filter(|o| (*o as u64 + name.len() as u64) <= u32::MAX as u64)
            .ok_or(InsertError::ArenaFull)?;
        self.arena.extend_from_slice(name);
        let mut flags = 0;
        if let Some(t) = expires_at {
            self.expiries.insert(offset, t);
            flags |= HAS_EXPIRY;
        }
        self.slots[i] = Slot {
            hash,
            offset,
            len: name.len() as u8,
            status: status as u8,
            flags,
            _pad: 0,
        };
        self.len += 1;
        Ok(())
    }

    /// Done inserting: settle at the final size.
    pub fn finish(&mut self) {
        let target = slots_for(self.len);
        if self.slots.len() != target {
            self.rebuild(target);
        }
        self.arena.shrink_to_fit();
        self.expiries.shrink_to_fit();
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    #[inline]
    fn name_at(&self, slot: &Slot) -> &[u8] {
        let start = slot.offset as usize;
        &self.arena[start..start + slot.len as usize]
    }

    fn rebuild(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); slots]);
        for slot in old.into_iter().filter(|s| s.len != 0) {
            let mut i = self.home(slot.hash);
            while self.slots[i].len != 0 {
                i = self.next(i);
            }
            self.slots[i] = slot;
        }
    }

    /// Looks `name` up with its hash already computed (see `hash`).
    #[inline]
    pub fn get_hashed(&self, name: &[u8], hash: u64) -> Option<Found> {
        let mut i = self.home(hash);
        loop {
            let slot = &self.slots[i];
            if slot.len == 0 {
                return None;
            }
            if slot.hash == hash && slot.len as usize == name.len() && self.name_at(slot) == name {
                let expires_at = if slot.flags & HAS_EXPIRY != 0 {
                    self.expiries.get(&slot.offset).copied()
                } else {
                    None
                };
                return Some(Found {
                    status: STATUS_BY_CODE[slot.status as usize],
                    expires_at,
                });
            }
            i = self.next(i);
        }
    }

    #[inline]
    pub fn get(&self, name: &[u8]) -> Option<Found> {
        self.get_hashed(name, self.hash(name))
    }

    /// Asks the CPU to start loading the slot `hash` probes first, so several probes of one
    /// lookup wait on memory together rather than one after another.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let slot = &self.slots[self.home(hash)];
            // SAFETY: prefetching is a hint; the pointer is to a live element.
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    slot as *const Slot as *const i8,
                    std::arch::x86_64::_MM_HINT_T0,
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    /// Every record's status, for counting.
    pub fn statuses(&self) -> impl Iterator<Item = Status> + '_ {
        self.slots
            .iter()
            .filter(|s| s.len != 0)
            .map(|s| STATUS_BY_CODE[s.status as usize])
    }

    /// Bytes held besides the names' own text: the slot table and the expiry side table.
    pub fn overhead_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.expiries.capacity() * (std::mem::size_of::<(u32, i64)>() + 1)
    }

    /// Bytes of name text.
    pub fn name_bytes(&self) -> usize {
        self.arena.capacity()
    }
}

fn slots_for(records: usize) -> usize {
    ((records as f64 / LOAD).ceil() as usize).max(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_duplicate_and_growth() {
        let mut idx = NameIndex::with_capacity(0);
        let names: Vec<String> = (0..10_000).map(|i| format!("n{i}.example.com")).collect();
        for (i, n) in names.iter().enumerate() {
            let status = Status::ALL[i % 5];
            let exp = (i % 7 == 0).then_some(i as i64);
            idx.insert(n.as_bytes(), status, exp).unwrap();
        }
        assert!(matches!(
            idx.insert(b"n5.example.com", Status::Denied, None),
            Err(InsertError::Duplicate)
        ));
        idx.finish();
        assert_eq!(idx.len(), 10_000);
        for (i, n) in names.iter().enumerate() {
            let f = idx.get(n.as_bytes()).unwrap();
            assert_eq!(f.status, Status::ALL[i % 5]);
            assert_eq!(f.expires_at, (i % 7 == 0).then_some(i as i64));
        }
        assert_eq!(idx.get(b"n10000.example.com"), None);
        assert_eq!(idx.get(b"example.com"), None);
        // Steady state: about 16 / 0.7 bytes of table per record.
        let per_entry = idx.overhead_bytes() as f64 / idx.len() as f64;
        assert!(per_entry < 32.0, "{per_entry} bytes per entry");
    }

    #[test]
    fn empty_index_answers_none() {
        let mut idx = NameIndex::default();
        idx.finish();
        assert_eq!(idx.get(b"example.com"), None);
    }
}
