//! Synthetic registries for benches and load tests: deterministic, realistic in shape (a TLD mix
//! of com, cn, com.cn, net, top, ...; mostly `connected`), unique by construction so that tens of
//! millions of names need no de-duplication set, and streamed to any writer.

use std::io::{self, Write};

use crate::registry::Status;
use crate::snapshot::SnapshotWriter;

/// Cumulative TLD mix, in percent.
const TLD_MIX: [(&str, u64); 8] = [
    ("com", 45),
    ("cn", 65),
    ("com.cn", 80),
    ("net", 88),
    ("top", 95),
    ("org", 97),
    ("xyz", 99),
    ("cc", 100),
];

/// Cumulative status mix, in percent.
const STATUS_MIX: [(Status, u64); 5] = [
    (Status::Connected, 86),
    (Status::Unconnected, 92),
    (Status::AccessCancelled, 95),
    (Status::Revoked, 97),
    (Status::Denied, 100),
];

/// 26^6: the unique part of each name is six letters.
const UNIQUE_SPACE: u64 = 308_915_776;
/// Odd and not a multiple of 13, so coprime to 26^6: `i * STRIDE mod 26^6` is a bijection that
/// scatters consecutive records over the alphabet.
const STRIDE: u64 = 0x9E37_79B1;

/// xorshift64*.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn pick<T: Copy>(&mut self, mix: &[(T, u64)]) -> T {
        let roll = self.below(100);
        mix.iter()
            .find(|(_, upto)| roll < *upto)
            .expect("mix ends at 100")
            .0
    }
}

/// The records of a synthetic registry, in file order.
pub struct Records {
    rng: Rng,
    next: u64,
    total: u64,
}

/// A synthetic registry of `total` records (at most 26^6).
pub fn records(total: u64, seed: u64) -> Records {
    assert!(
        total <= UNIQUE_SPACE,
        "at most {UNIQUE_SPACE} synthetic records"
    );
    Records {
        rng: Rng::new(seed),
        next: 0,
        total,
    }
}

impl Iterator for Records {
    type Item = (String, Status);

    fn next(&mut self) -> Option<(String, Status)> {
        if self.next == self.total {
            return None;
        }
        let i = self.next;
        self.next += 1;
        Some((self.name(i), self.rng.pick(&STATUS_MIX)))
    }
}

impl Records {
    /// `<2-6 random letters><6 letters unique to i>.<tld>`.
    fn name(&mut self, i: u64) -> String {
        let mut name = String::with_capacity(24);
        for _ in 0..2 + self.rng.below(5) {
            name.push(char::from(b'a' + self.rng.below(26) as u8));
        }
        let mut unique = (i * STRIDE) % UNIQUE_SPACE;
        for _ in 0..6 {
            name.push(char::from(b'a' + (unique % 26) as u8));
            unique /= 26;
        }
        name.push('.');
        name.push_str(self.rng.pick(&TLD_MIX));
        name
    }
}

/// Writes a synthetic snapshot of `total` records; every record has a filing number.
pub fn write_snapshot<W: Write>(out: W, total: u64, seed: u64, serial: u64) -> io::Result<W> {
    let mut w = SnapshotWriter::new(out, serial, "2026-11-22T03:00:00Z")?;
    for (i, (name, status)) in records(total, seed).enumerate() {
        let filing = format!("京ICP备{:08}号-1", i % 100_000_000);
        w.record(&name, status, Some(&filing), None)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::read_snapshot;

    #[test]
    fn synthetic_snapshots_are_valid_unique_and_deterministic() {
        let a = write_snapshot(Vec::new(), 20_000, 7, 1).unwrap();
        let b = write_snapshot(Vec::new(), 20_000, 7, 1).unwrap();
        assert_eq!(a, b);
        let s = read_snapshot(&a[..]).unwrap();
        assert_eq!(s.registry.len(), 20_000, "names must be unique");
        let counts = s.registry.status_counts();
        assert!(counts[0] > 15_000 && counts[4] > 0, "{counts:?}");
        let cn = records(20_000, 7)
            .filter(|(n, _)| n.ends_with(".com.cn"))
            .count();
        assert!((2_000..4_000).contains(&cn), "{cn} .com.cn names");
    }
}
