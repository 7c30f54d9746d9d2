//! TLS session tickets sealed with keys from a file, so that a fleet of gates shares them (a
//! client resumes on any gate) and an operator rotates them: the file holds the current key
//! and, optionally, the previous one, each 32 bytes as 64 hex digits on a line of its own. New
//! tickets are sealed with the current key; tickets sealed with either key are accepted.
//! Rotating is writing a new current key above the old one, on every gate; each gate reads the
//! file again on SIGHUP and when it changes (with the certificates: `CertWatcher`), without a
//! restart and without dropping a connection. A file that no longer reads keeps the keys in
//! service (logged and counted in `icp_gate_tls_ticket_key_reloads_total{result="error"}`).
//!
//! A ticket is `key id (4) | nonce (12) | ChaCha20-Poly1305(session state) | tag (16)`; the key
//! id is the first 4 bytes of the key's SHA-256, so a ticket names the key that sealed it
//! without revealing it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// How long a ticket is good for, in seconds (what rustls tells the client).
const LIFETIME_SECONDS: u32 = 12 * 60 * 60;
const ID_LEN: usize = 4;

struct TicketKey {
    id: [u8; ID_LEN],
    key: LessSafeKey,
}

impl TicketKey {
    fn new(bytes: &[u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..ID_LEN]);
        let key = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte ChaCha20 key"),
        );
        TicketKey { id, key }
    }
}

/// The keys of one reading of the file.
struct KeySet {
    current: TicketKey,
    previous: Option<TicketKey>,
}

/// Seals and opens session tickets with the keys of a ticket key file.
pub struct FileTicketer {
    /// None for keys given as text (tests).
    path: Option<PathBuf>,
    keys: ArcSwap<KeySet>,
    /// The file's modification time and length when the keys in service were read.
    seen: Mutex<Option<(SystemTime, u64)>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.load();
        f.debug_struct("FileTicketer")
            .field("path", &self.path)
            .field("current", &keys.current.id)
            .field("previous", &keys.previous.as_ref().map(|k| k.id))
            .finish()
    }
}

/// What a reload of the key file did.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyReload {
    /// The file was read and its keys are in service (possibly the same ones).
    Loaded,
    /// The file has not changed since it was last read.
    Unchanged,
    /// The file could not be read or is not a key file: the keys in service stay.
    Failed(String),
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl FileTicketer {
    /// Reads a key file: one or two lines of 64 hex digits (current first). Blank lines and
    /// lines starting with `#` are skipped.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let seen = stamp(path);
        let keys = read_keys(path)?;
        Ok(FileTicketer {
            path: Some(path.to_owned()),
            keys: ArcSwap::from_pointee(keys),
            seen: Mutex::new(seen),
            rng: SystemRandom::new(),
        })
    }

    pub fn from_text(text: &str) -> Result<Self, String> {
        Ok(FileTicketer {
            path: None,
            keys: ArcSwap::from_pointee(parse_keys(text)?),
            seen: Mutex::new(None),
            rng: SystemRandom::new(),
        })
    }

    /// Reads the file again and swaps its keys in (SIGHUP); a file that fails keeps the keys in
    /// service. Tickets being sealed or opened meanwhile use one set or the other, whole.
    pub fn reload(&self) -> KeyReload {
        let Some(path) = &self.path else {
            return KeyReload::Unchanged;
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(path);
        match read_keys(path) {
            Ok(keys) => {
                self.keys.store(std::sync::Arc::new(keys));
                *seen = now;
                KeyReload::Loaded
            }
            Err(e) => KeyReload::Failed(e),
        }
    }

    /// Reloads when the file's modification time or length changed since it was last read.
    pub fn reload_if_changed(&self) -> KeyReload {
        let Some(path) = &self.path else {
            return KeyReload::Unchanged;
        };
        let changed = *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != stamp(path);
        if changed {
            self.reload()
        } else {
            KeyReload::Unchanged
        }
    }

    /// The key id new tickets are sealed with (4 bytes of the current key's SHA-256).
    pub fn current_id(&self) -> [u8; ID_LEN] {
        self.keys.load().current.id
    }
}

fn read_keys(path: &Path) -> Result<KeySet, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_keys(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_keys(text: &str) -> Result<KeySet, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(parse_key(line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    match keys.len() {
        0 => Err("no key (expected one or two lines of 64 hex digits)".into()),
        1 | 2 => {
            let mut keys = keys.into_iter();
            Ok(KeySet {
                current: TicketKey::new(&keys.next().expect("one key")),
                previous: keys.next().map(|k| TicketKey::new(&k)),
            })
        }
        n => Err(format!(
            "{n} keys: at most two (the current one, then the previous one)"
        )),
    }
}

fn parse_key(line: &str) -> Result<[u8; 32], String> {
    if line.len() != 64 || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a key is 64 hex digits (32 bytes)".into());
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&line[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(key)
}

impl rustls::server::ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECONDS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let keys = self.keys.load();
        let current = &keys.current;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&current.id);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(current.id),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < ID_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (id, rest) = cipher.split_at(ID_LEN);
        let keys = self.keys.load();
        let key = [Some(&keys.current), keys.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)?;
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(key.id), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1eff";

    #[test]
    fn tickets_open_with_the_current_or_the_previous_key_and_not_otherwise() {
        let old = FileTicketer::from_text(&format!("{A}\n")).unwrap();
        let ticket = old.encrypt(b"session state").unwrap();
        assert_eq!(old.decrypt(&ticket).unwrap(), b"session state");
        // Rotated: B current, A previous. The old ticket still opens; new ones use B.
        let rotated = FileTicketer::from_text(&format!("# rotated\n{B}\n{A}\n")).unwrap();
        assert_eq!(rotated.decrypt(&ticket).unwrap(), b"session state");
        let new = rotated.encrypt(b"x").unwrap();
        assert!(
            old.decrypt(&new).is_none(),
            "sealed with B, which the old set lacks"
        );
        // Rotated again: A is gone.
        let again = FileTicketer::from_text(&format!("{B}\n")).unwrap();
        assert!(again.decrypt(&ticket).is_none());
        assert_eq!(again.decrypt(&new).unwrap(), b"x");
        // Tampered or short tickets do not open.
        let mut bad = new.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(again.decrypt(&bad).is_none());
        assert!(again.decrypt(&new[..10]).is_none());
    }

    #[test]
    fn key_files_are_checked() {
        assert!(FileTicketer::from_text("").is_err());
        assert!(FileTicketer::from_text("abcd")
            .unwrap_err()
            .contains("64 hex"));
        assert!(FileTicketer::from_text(&format!("{A}\n{B}\n{A}\n"))
            .unwrap_err()
            .contains("at most two"));
    }
}
