//! A compact, read-mostly index of domain names for registries of tens of millions of records.
//!
//! Layout, chosen for memory and cache misses rather than generality:
//! - every name lives in one byte arena (no allocation per record);
//! - one open-addressing table of 16-byte slots holds the name's full 64-bit hash, its place
//!   in the arena, its length and its status. A lookup that misses usually touches one cache
//!   line; a hit touches that line and the name's bytes in the arena;
//! - the rare records with an expiry keep it in a side table, looked at only when a slot says so.
//!
//! The hash is foldhash (quality variant) with a random seed per registry. The Host is chosen
//! by clients, so the hash is keyed: without the seed a client cannot tell where a name lands.
//! A stronger hash (SipHash) would cost a lookup more than the table does: the table is built
//! from the registry alone and never grows from client input, so even a client that learned the
//! seed could only aim at the longest probe run the registry already has (a bounded number of
//! sequential 16-byte compares), never create one. Every hit is confirmed by comparing the name.
//!
//! Building is two-phase, because a snapshot's size is only known at its trailer and random
//! writes into a table of hundreds of megabytes are what a naive build spends its time on:
//! while the snapshot streams in, slots are appended to a plain vector (sequential writes);
//! `finish` then sorts them by hash, which puts duplicates side by side and orders the slots by
//! where they land, and fills a table of the final size almost sequentially. Lookups before
//! `finish` see nothing.
//!
//! When the snapshot's size is known and large (`reserve`), the slots are not appended in file
//! order but written straight into one of 256 regions of the reservation by the top byte of
//! their hash: 256 sequential streams, cheap to write while parsing. `finish` then only closes
//! the gaps between the regions and sorts each one, a few hundred kilobytes that stay in the
//! cache, instead of first permuting the whole vector by that byte, a pass whose every step
//! waits on memory (a third of the sort's time at 10M records).

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::quality::RandomState;

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

#[derive(Debug)]
pub enum InsertError {
    ArenaFull,
}

/// Regions of `pending` while building (see `reserve`).
const REGIONS: usize = 256;
/// Fewest slots per region for which `reserve` builds in regions.
const MIN_REGION_SLOTS: usize = 1024;

/// `pending` cut into `REGIONS` runs of `size` slots, run `d` for the hashes whose top byte is
/// `d`; its first `fill[d]` slots are written, the rest empty.
#[derive(Clone, Debug)]
struct Regions {
    size: usize,
    fill: Box<[usize; REGIONS]>,
}

#[derive(Clone, Default)]
pub struct NameIndex {
    /// The table, once `finish`ed; empty before.
    slots: Vec<Slot>,
    /// Slots added while building: in file order, or in regions (`regions`).
    pending: Vec<Slot>,
    /// Set while `pending` is in regions.
    regions: Option<Regions>,
    arena: Vec<u8>,
    /// The arena was allocated (and advised) by `reserve`, not grown.
    arena_reserved: bool,
    /// `pending` was allocated (and advised) by `reserve` with room for the final table.
    pending_reserved: bool,
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

const STATUS_BY_CODE: [Status; 5] = Status::ALL;

impl NameIndex {
    pub fn new() -> Self {
        Self::default()
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
    /// (multiply-shift). Monotonic in the hash, which is what lets `finish` fill in order.
    #[inline]
    fn home(&self, hash: u64) -> usize {
        home_in(hash, self.slots.len())
    }

    /// Makes room for about `records` names of `name_bytes` in all, so that building does not
    /// grow (copy and re-zero) its vectors again and again; the name storage is advised for huge
    /// pages before it is written.
    ///
    /// `pending` gets room for the final table of that many records: `finish` builds the table
    /// in place, so the memory of a snapshot's slots is touched (and zeroed by the kernel) once,
    /// not once for the pending slots and again for the table.
    ///
    /// A large reservation is built in regions (see the module's notes). They take the front of
    /// the reservation, room for an eighth more records than `records`, not all of it: the table
    /// then writes no page beyond what it needs when `records` is an overestimate (a snapshot's
    /// record count is estimated from its size). With exactly `records` records a region of
    /// 1024 slots gets 910 ± 30; one fills up only when there are more records than reserved
    /// for, or by a rare chance near that, and then `push` goes back to appending.
    pub fn reserve(&mut self, records: usize, name_bytes: usize) {
        let n = slots_for(records);
        if self.pending.is_empty() && self.regions.is_none() && n > self.pending.capacity() {
            let size = (records + records / 8).div_ceil(REGIONS);
            if size >= MIN_REGION_SLOTS && size * REGIONS <= n {
                self.pending = zeroed_slots(n);
                self.regions = Some(Regions {
                    size,
                    fill: Box::new([0; REGIONS]),
                });
            } else {
                self.pending = Vec::with_capacity(n);
            }
            advise_huge_pages(
                self.pending.as_ptr(),
                self.pending.capacity() * std::mem::size_of::<Slot>(),
            );
            self.pending_reserved = true;
        }
        if self.arena.is_empty() && name_bytes > self.arena.capacity() {
            self.arena = Vec::with_capacity(name_bytes);
            advise_huge_pages(self.arena.as_ptr(), name_bytes);
            self.arena_reserved = true;
        }
    }

    /// Adds a name while building. Duplicates are found by `finish`.
    pub fn push(
        &mut self,
        name: &[u8],
        status: Status,
        expires_at: Option<i64>,
    ) -> Result<(), InsertError> {
        debug_assert!(!name.is_empty() && name.len() <= 255);
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
        let slot = Slot {
            hash: self.hash(name),
            offset,
            len: name.len() as u8,
            status: status as u8,
            flags,
            _pad: 0,
        };
        if let Some(regions) = &mut self.regions {
            let d = (slot.hash >> 56) as usize;
            let fill = regions.fill[d];
            if fill < regions.size {
                self.pending[d * regions.size + fill] = slot;
                regions.fill[d] = fill + 1;
                self.len += 1;
                return Ok(());
            }
            // A full region: more records than reserved for. Append from here on.
            self.close_regions();
        }
        self.pending.push(slot);
        self.len += 1;
        Ok(())
    }

    /// Moves the regions' slots to the front of `pending`, in region order, and truncates it
    /// there (appending goes on after them). Returns where each region's slots now end.
    fn close_regions(&mut self) -> Option<[usize; REGIONS]> {
        let regions = self.regions.take()?;
        let mut ends = [0usize; REGIONS];
        let mut total = 0;
        for (d, end) in ends.iter_mut().enumerate() {
            let from = d * regions.size;
            let fill = regions.fill[d];
            self.pending.copy_within(from..from + fill, total);
            total += fill;
            *end = total;
        }
        self.pending.truncate(total);
        Some(ends)
    }

    /// Done adding: builds the table. Returns the first name found twice, if any (the index is
    /// then unusable).
    pub fn finish(&mut self) -> Result<(), Vec<u8>> {
        let regions = self.close_regions();
        let mut pending = std::mem::take(&mut self.pending);
        // By hash: equal names have equal hashes, so duplicates end up adjacent, and homes are
        // monotonic in the hash, so the fill below walks the table front to back. Slots from
        // regions are already in order of their hash's top byte: each region is sorted alone.
        match regions {
            Some(ends) => {
                let mut start = 0;
                for end in ends {
                    radix_level(&mut pending[start..end], 48);
                    start = end;
                }
            }
            None => sort_by_hash(&mut pending),
        }
        for pair in pending.windows(2) {
            if pair[0].hash == pair[1].hash && self.name_at(&pair[0]) == self.name_at(&pair[1]) {
                return Err(self.name_at(&pair[1]).to_vec());
            }
        }
        let n = slots_for(pending.len());
        if !(self.pending_reserved && pending.capacity() >= n) {
            // Not reserved (input of unknown size, such as gzip), or more records than
            // reserved for: move to an advised allocation of the table's size first.
            let mut table = Vec::with_capacity(n);
            advise_huge_pages(table.as_ptr(), n * std::mem::size_of::<Slot>());
            table.extend_from_slice(&pending);
            pending = table;
        }
        self.slots = place_in_order(pending, n);
        // Capacity past the table: never written when reserved by appending, but regions past
        // the table's end were. Shrinking a large allocation returns those pages (glibc: an
        // mremap in place, no copy).
        self.slots.shrink_to_fit();
        // Keep the reserved arena when it is about the right size; otherwise move the names
        // into an exact, huge-page-advised allocation.
        if self.arena.capacity() > self.arena.len() + self.arena.len() / 10 || !self.arena_reserved
        {
            self.arena = huge_page_copy(&self.arena);
        }
        self.expiries.shrink_to_fit();
        Ok(())
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

    /// Looks `name` up with its hash already computed (see `hash`).
    #[inline]
    pub fn get_hashed(&self, name: &[u8], hash: u64) -> Option<Found> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(hash);
        loop {
            let slot = &self.slots[i];
            // Slots were placed in hash order (see `finish`): a slot of a greater hash on the
            // way means the name is not here, so a miss stops early instead of running to the
            // next empty slot.
            if slot.len == 0 || slot.hash > hash {
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
        if self.slots.is_empty() {
            return;
        }
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
    }

    /// Every record with what the index knows of it, in table order (after `finish`).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Found)> + '_ {
        self.slots.iter().filter(|s| s.len != 0).map(|s| {
            let expires_at = if s.flags & HAS_EXPIRY != 0 {
                self.expiries.get(&s.offset).copied()
            } else {
                None
            };
            (
                self.name_at(s),
                Found {
                    status: STATUS_BY_CODE[s.status as usize],
                    expires_at,
                },
            )
        })
    }

    /// Every record's status, for counting.
    pub fn statuses(&self) -> impl Iterator<Item = Status> + '_ {
        self.slots
            .iter()
            .chain(self.pending.iter())
            .filter(|s| s.len != 0)
            .map(|s| STATUS_BY_CODE[s.status as usize])
    }

    /// Bytes held besides the names' own text: the slot table and the expiry side table.
    /// The table counts by its length: a table built in place in a reservation from the
    /// snapshot's size may have capacity past its end, which is never written, so never resident.
    pub fn overhead_bytes(&self) -> usize {
        (self.slots.len() + self.pending.capacity()) * std::mem::size_of::<Slot>()
            + self.expiries.capacity() * (std::mem::size_of::<(u32, i64)>() + 1)
    }

    /// Bytes of name text.
    pub fn name_bytes(&self) -> usize {
        self.arena.capacity()
    }
}

/// Where the probe for `hash` starts in a table of `n` slots (see `NameIndex::home`).
#[inline]
fn home_in(hash: u64, n: usize) -> usize {
    (((hash >> 32) * n as u64) >> 32) as usize
}

/// Turns `slots`, sorted by hash, into a table of `n` slots, in place (`slots` has the capacity):
/// each slot goes to the first free place at or after its home, in hash order, so that positions
/// increase with the hash (lookups rely on it); the few whose run passes the end wrap to the
/// first free places at the front. Positions are found front to back (each depends on the one
/// before), then slots are moved back to front, where a slot's place never holds a slot not yet
/// moved (a place is at or after the slot's index and before the next slot's place).
fn place_in_order(mut slots: Vec<Slot>, n: usize) -> Vec<Slot> {
    let len = slots.len();
    debug_assert!(n >= len && slots.capacity() >= n);
    // Forward: each slot's distance from its home, kept in its pad byte; the rare larger ones
    // (255 marks them) in a side list, in order.
    let mut far = Vec::new();
    let mut next_free = 0usize;
    let mut placed = len;
    for (k, slot) in slots.iter_mut().enumerate() {
        let home = home_in(slot.hash, n);
        let i = home.max(next_free);
        if i >= n {
            // This one and every later one wrap.
            placed = k;
            break;
        }
        let distance = i - home;
        if distance < 255 {
            slot._pad = distance as u8;
        } else {
            slot._pad = 255;
            far.push(i);
        }
        next_free = i + 1;
    }
    let wrapped: Vec<Slot> = slots[placed..].to_vec();
    for slot in &mut slots[placed..] {
        *slot = Slot::default();
    }
    slots.resize(n, Slot::default());
    // Backward: move each slot to its place, leaving its old index empty unless a slot before
    // it takes that index.
    for k in (0..placed).rev() {
        let mut slot = slots[k];
        let i = if slot._pad == 255 {
            far.pop().expect("one place per far slot")
        } else {
            home_in(slot.hash, n) + slot._pad as usize
        };
        slot._pad = 0;
        slots[k] = Slot::default();
        slots[i] = slot;
    }
    for mut slot in wrapped {
        slot._pad = 0;
        let i = slots
            .iter()
            .position(|s| s.len == 0)
            .expect("the table has free slots");
        slots[i] = slot;
    }
    slots
}

/// `n` empty slots in memory allocated zeroed. For a large vector that is fresh pages from the
/// kernel, which the allocator does not write: the slots never written cost no memory, which a
/// `vec![Slot::default(); n]` (a write of every slot) would.
fn zeroed_slots(n: usize) -> Vec<Slot> {
    let layout = std::alloc::Layout::array::<Slot>(n).expect("a table that fits in memory");
    if layout.size() == 0 {
        return Vec::new();
    }
    // SAFETY: the memory is allocated by the global allocator with the layout of `n` slots,
    // which is what `Vec::from_raw_parts` needs for a capacity of `n` (and what `Vec` frees it
    // with); it is zeroed, and all-zero bytes are a valid `Slot` (integers only): the empty
    // one. So all `n` elements are initialized.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<Slot>();
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(ptr, n, n)
    }
}

/// Below this many slots a bucket is sorted by comparison rather than split further.
const RADIX_SMALL: usize = 64;

/// Sorts `slots` by hash, in place: an MSD radix sort (American flag sort) on the hash's bytes
/// from the top, one byte per level, with small buckets sorted by comparison. The hashes are
/// uniform, so the first level cuts 10M slots into 256 buckets of about 600 KB, which the
/// next levels sort within the cache; a comparison sort of the whole walks it ~23 times.
fn sort_by_hash(slots: &mut [Slot]) {
    radix_level(slots, 56);
}

fn radix_level(slots: &mut [Slot], shift: u32) {
    if slots.len() <= RADIX_SMALL {
        slots.sort_unstable_by_key(|s| s.hash);
        return;
    }
    let digit = |s: &Slot| ((s.hash >> shift) & 0xff) as usize;
    let mut counts = [0usize; 256];
    for s in slots.iter() {
        counts[digit(s)] += 1;
    }
    // heads[d]: the next place to fill in bucket d; ends[d]: where bucket d ends.
    let mut heads = [0usize; 256];
    let mut ends = [0usize; 256];
    let mut sum = 0;
    for d in 0..256 {
        heads[d] = sum;
        sum += counts[d];
        ends[d] = sum;
    }
    // Each slot is swapped straight into its bucket; a bucket is done when its head meets its
    // end (everything before a head belongs where it is).
    for d in 0..256 {
        while heads[d] < ends[d] {
            let mut slot = slots[heads[d]];
            let mut to = digit(&slot);
            while to != d {
                std::mem::swap(&mut slot, &mut slots[heads[to]]);
                heads[to] += 1;
                to = digit(&slot);
            }
            slots[heads[d]] = slot;
            heads[d] += 1;
        }
    }
    if shift == 0 {
        return;
    }
    let mut start = 0;
    for end in ends {
        if end - start > 1 {
            radix_level(&mut slots[start..end], shift - 8);
        }
        start = end;
    }
}

/// `bytes` copied into a fresh allocation of exactly their size, advised for huge pages before
/// it is written.
fn huge_page_copy(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len());
    advise_huge_pages(v.as_ptr(), bytes.len());
    v.extend_from_slice(bytes);
    v
}

fn advise_huge_pages<T>(ptr: *const T, bytes: usize) {
    const HUGE: usize = 2 << 20;
    if bytes < 4 * HUGE {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let start = ptr as usize;
        let aligned = (start + HUGE - 1) & !(HUGE - 1);
        let end = (start + bytes) & !(HUGE - 1);
        if end > aligned {
            // SAFETY: advice on memory the caller's vector owns; it changes no contents.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
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
        let mut idx = NameIndex::new();
        let names: Vec<String> = (0..10_000).map(|i| format!("n{i}.example.com")).collect();
        for (i, n) in names.iter().enumerate() {
            let status = Status::ALL[i % 5];
            let exp = (i % 7 == 0).then_some(i as i64);
            idx.push(n.as_bytes(), status, exp).unwrap();
        }
        let mut dup = idx.clone();
        dup.push(b"n5.example.com", Status::Denied, None).unwrap();
        assert_eq!(dup.finish(), Err(b"n5.example.com".to_vec()));
        idx.finish().unwrap();
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

    /// Names of a registry large enough to be built in regions, with a status and an expiry
    /// that depend on where each is.
    fn region_names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("r{i}.example.cn")).collect()
    }

    fn push_all(idx: &mut NameIndex, names: &[String]) {
        for (i, n) in names.iter().enumerate() {
            let exp = (i % 7 == 0).then_some(i as i64);
            idx.push(n.as_bytes(), Status::ALL[i % 5], exp).unwrap();
        }
    }

    /// Every name found with its own status and expiry, and nothing else.
    fn assert_finds_exactly(idx: &NameIndex, names: &[String]) {
        assert_eq!(idx.len(), names.len());
        for (i, n) in names.iter().enumerate() {
            let f = idx.get(n.as_bytes()).unwrap_or_else(|| panic!("{n} lost"));
            assert_eq!(f.status, Status::ALL[i % 5], "{n}");
            assert_eq!(f.expires_at, (i % 7 == 0).then_some(i as i64), "{n}");
        }
        for i in names.len()..names.len() + 1000 {
            assert_eq!(idx.get(format!("r{i}.example.cn").as_bytes()), None);
        }
        assert_eq!(idx.iter().count(), names.len());
    }

    #[test]
    fn a_large_reservation_is_built_in_regions_and_finds_every_name() {
        let names = region_names(250_000);
        let bytes = names.iter().map(|n| n.len()).sum();
        let mut idx = NameIndex::new();
        // Reserved for more than come, as from a snapshot's size.
        idx.reserve(300_000, bytes);
        assert!(
            idx.regions.is_some(),
            "a reservation this large is built in regions"
        );
        push_all(&mut idx, &names);
        assert!(
            idx.regions.is_some(),
            "fewer records than reserved for stay in regions"
        );

        // A name listed twice is found in regions too (on a copy: cloning mid-build keeps the
        // regions' slots).
        let mut dup = idx.clone();
        dup.push(b"r123456.example.cn", Status::Denied, None)
            .unwrap();
        assert_eq!(dup.finish(), Err(b"r123456.example.cn".to_vec()));

        idx.finish().unwrap();
        assert_finds_exactly(&idx, &names);
        // The table is the size for the records there are, and nothing past it is kept.
        assert_eq!(idx.slots.len(), slots_for(names.len()));
        assert_eq!(idx.slots.capacity(), idx.slots.len());
        let per_entry = idx.overhead_bytes() as f64 / idx.len() as f64;
        assert!(per_entry < 32.0, "{per_entry} bytes per entry");
    }

    #[test]
    fn more_records_than_reserved_fill_a_region_and_go_on_appended() {
        let names = region_names(400_000);
        let mut idx = NameIndex::new();
        idx.reserve(250_000, 0);
        assert!(idx.regions.is_some());
        push_all(&mut idx, &names);
        assert!(idx.regions.is_none(), "a full region ends the regions");
        idx.finish().unwrap();
        assert_finds_exactly(&idx, &names);
    }

    #[test]
    fn small_tables_find_every_name_across_the_wrap() {
        // Tiny tables wrap often: every name must be found and no other, with the early stop on
        // a greater hash.
        for round in 0..400u32 {
            let mut idx = NameIndex::new();
            let n = 1 + round as usize % 23;
            let names: Vec<String> = (0..n).map(|i| format!("r{round}n{i}.cn")).collect();
            for name in &names {
                idx.push(name.as_bytes(), Status::Connected, None).unwrap();
            }
            idx.finish().unwrap();
            for name in &names {
                assert!(idx.get(name.as_bytes()).is_some(), "{name} lost");
            }
            for i in n..n + 40 {
                assert_eq!(idx.get(format!("r{round}n{i}.cn").as_bytes()), None);
            }
        }
    }

    #[test]
    fn radix_sort_orders_like_a_comparison_sort() {
        let mut rng = fastrand::Rng::with_seed(7);
        for len in [0, 1, 2, 63, 64, 65, 300, 5_000, 70_000] {
            // Random hashes, and hashes sharing their top bytes (deep buckets, equal hashes).
            for shared in [0u64, 0xffff_ffff_0000_0000, u64::MAX << 8] {
                let mut slots: Vec<Slot> = (0..len)
                    .map(|i| Slot {
                        hash: (rng.u64(..) & !shared) | (shared & 0x1234_5678_9abc_def0),
                        offset: i as u32,
                        len: 1,
                        ..Slot::default()
                    })
                    .collect();
                let mut expected: Vec<(u64, u32)> =
                    slots.iter().map(|s| (s.hash, s.offset)).collect();
                expected.sort_unstable_by_key(|e| e.0);
                sort_by_hash(&mut slots);
                assert!(slots.windows(2).all(|w| w[0].hash <= w[1].hash));
                let mut got: Vec<(u64, u32)> = slots.iter().map(|s| (s.hash, s.offset)).collect();
                got.sort_unstable();
                expected.sort_unstable();
                assert_eq!(got, expected, "len {len}, shared {shared:x}");
            }
        }
    }

    #[test]
    fn empty_index_answers_none() {
        let mut idx = NameIndex::default();
        idx.finish().unwrap();
        assert_eq!(idx.get(b"example.com"), None);
    }
}
