//! Why a host is allowed or blocked: `icp-gate explain` (offline, on a configuration's registry)
//! and the admin endpoint's `GET /explain?host=` (on the registry in service).
//!
//! For a host: its canonical name, every name the lookup tries with the record each has
//! (`Registry::explain`), the record that covers it with its status and expiry, the registry
//! serial, and what every listener does with it. The per-listener decision is the gate's own
//! (`gate::decide`, the function every request and TLS connection is decided by), never a copy.

use std::io::{self, BufRead, Write};
use std::sync::Arc;

use icp_gate_config::{ListenerSettings, Mode, Protocol, Settings};
use icp_gate_registry::{
    parse_authority, BlockReason, DeltaSource, Entry, Host, LoadedRegistry, RegistryHandle,
    Requirement, SnapshotSource, SyncOutcome, Syncer,
};
use serde_json::{json, Value};

use crate::gate::{decide, Outcome};

/// Longest host read from a `--batch` line (the rest of a longer line is skipped, and the host
/// answered as invalid): a line can never make `explain` hold more than this.
const MAX_BATCH_LINE: usize = 4096;

/// One host explained.
pub struct Explained {
    /// The JSON object (the contract's keys `host`, `matched`, `status`, `serial`, `listeners`,
    /// and the rest of the story).
    pub json: Value,
    /// The host could be read (false: every listener answers `400 invalid_host`).
    pub valid: bool,
    /// What each listener does with it, in the order of `listeners`.
    pub outcomes: Vec<Outcome>,
}

/// Explains the host a client names as `raw` (a Host header value, with or without a port)
/// against `loaded` for each of `listeners`, at `now` (unix seconds).
pub fn explain(
    loaded: &LoadedRegistry,
    listeners: &[ListenerSettings],
    raw: &[u8],
    now: i64,
) -> Explained {
    let input = String::from_utf8_lossy(raw).into_owned();
    let host = match parse_authority(raw) {
        Ok(host) => host,
        Err(invalid) => {
            // As the front end and TLS listeners answer it, whatever the mode.
            let outcome = Outcome::Blocked(BlockReason::InvalidHost);
            let outcomes = vec![outcome; listeners.len()];
            let json = json!({
                "host": input,
                "input": input,
                "valid": false,
                "invalid": { "code": invalid.code(), "detail": invalid.describe() },
                "kind": null,
                "registrable_domain": null,
                "candidates": [],
                "matched": null,
                "status": null,
                "expires_at": null,
                "expired": false,
                "status_in_force": null,
                "serial": loaded.serial,
                "why": format!(
                    "not a usable host ({}): every listener answers 400 invalid_host",
                    invalid.describe()
                ),
                "listeners": listeners_json(listeners, &outcomes),
            });
            return Explained {
                json,
                valid: false,
                outcomes,
            };
        }
    };
    let walk = loaded.registry.explain(&host);
    let outcomes: Vec<Outcome> = listeners
        .iter()
        .map(|l| decide(Some(loaded), l, &host, now).outcome)
        .collect();
    let matched = walk.matched();
    let candidates: Vec<Value> = walk
        .candidates
        .iter()
        .map(|c| {
            let mut v = json!({ "name": c.name, "found": c.record.is_some() });
            if let Some(e) = c.record {
                v["status"] = e.status.as_str().into();
            }
            if c.public_suffix {
                v["public_suffix"] = true.into();
            }
            v
        })
        .collect();
    let expires_at = matched.and_then(|(_, e)| e.expires_at);
    let json = json!({
        "host": host.to_string(),
        "input": input,
        "valid": true,
        "kind": match host { Host::Domain(_) => "domain", Host::Ip(_) => "ip" },
        "registrable_domain": walk.registrable_domain(),
        "candidates": candidates,
        "matched": matched.map(|(name, _)| name),
        "status": matched.map(|(_, e)| e.status.as_str()),
        "expires_at": expires_at.map(rfc3339),
        "expired": matched.is_some_and(|(_, e)| e.status_at(now) != e.status),
        "status_in_force": matched.map(|(_, e)| e.status_at(now).as_str()),
        "serial": loaded.serial,
        "why": why(&host, matched, &walk, now),
        "listeners": listeners_json(listeners, &outcomes),
    });
    Explained {
        json,
        valid: true,
        outcomes,
    }
}

/// The explanation in one sentence.
fn why(
    host: &Host,
    matched: Option<(&str, Entry)>,
    walk: &icp_gate_registry::explain::Walk,
    now: i64,
) -> String {
    let Some((name, entry)) = matched else {
        return match host {
            Host::Ip(ip) => format!("no record for the IP address {ip}: ip_unfiled"),
            Host::Domain(_) => {
                format!("no record covers {host} or any name above it: unfiled")
            }
        };
    };
    let mut text = if walk.matched == Some(0) {
        format!("{name} has its own record: {}", entry.status.as_str())
    } else {
        format!(
            "{host} inherits the record of {name}: {}",
            entry.status.as_str()
        )
    };
    let overridden: Vec<String> = walk
        .candidates
        .iter()
        .skip(walk.matched.map_or(0, |i| i + 1))
        .filter_map(|c| {
            c.record
                .map(|e| format!("{} ({})", c.name, e.status.as_str()))
        })
        .collect();
    if !overridden.is_empty() {
        text.push_str(&format!(", which overrides {}", overridden.join(", ")));
    }
    let in_force = entry.status_at(now);
    if in_force != entry.status {
        text.push_str(&format!(
            "; it expired at {}, so it counts as {}",
            rfc3339(entry.expires_at.expect("only an expiry changes the status")),
            in_force.as_str()
        ));
    }
    text
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn listeners_json(listeners: &[ListenerSettings], outcomes: &[Outcome]) -> Value {
    listeners
        .iter()
        .zip(outcomes)
        .map(|(l, o)| {
            let reason = o.reason_label();
            json!({
                "name": l.name,
                "address": l.address.to_string(),
                "protocol": match l.protocol { Protocol::Http => "http", Protocol::Tls => "tls" },
                "require": match l.require {
                    Requirement::Connected => "connected",
                    Requirement::Filed => "filed",
                },
                "mode": mode_str(l.mode),
                "decision": o.decision_label(),
                "reason": (!reason.is_empty()).then_some(reason),
            })
        })
        .collect()
}

fn mode_str(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Monitor => "monitor",
    }
}

// ---------------------------------------------------------------------------------------------
// The command line

/// What a batch of explained hosts adds up to, per listener: how many are allowed, blocked and
/// monitored, by reason. For a `monitor` listener, `monitored` is what `enforce` would block.
pub struct Summary {
    pub hosts: u64,
    pub invalid: u64,
    /// Per listener: allowed, then blocked and monitored by `BlockReason::index`.
    tallies: Vec<(u64, [u64; 6], [u64; 6])>,
}

impl Summary {
    pub fn new(listeners: usize) -> Self {
        Summary {
            hosts: 0,
            invalid: 0,
            tallies: vec![(0, [0; 6], [0; 6]); listeners],
        }
    }

    pub fn add(&mut self, e: &Explained) {
        self.hosts += 1;
        self.invalid += u64::from(!e.valid);
        for (tally, outcome) in self.tallies.iter_mut().zip(&e.outcomes) {
            match outcome {
                Outcome::Allowed => tally.0 += 1,
                Outcome::Blocked(r) => tally.1[r.index()] += 1,
                Outcome::Monitored(r) => tally.2[r.index()] += 1,
                Outcome::NotReady | Outcome::Pending => {}
            }
        }
    }

    pub fn json(&self, listeners: &[ListenerSettings], serial: u64) -> Value {
        let by_reason = |counts: &[u64; 6]| -> serde_json::Map<String, Value> {
            BlockReason::ALL
                .iter()
                .filter(|r| counts[r.index()] > 0)
                .map(|r| (r.as_str().to_owned(), counts[r.index()].into()))
                .collect()
        };
        let per_listener: Vec<Value> = listeners
            .iter()
            .zip(&self.tallies)
            .map(|(l, (allowed, blocked, monitored))| {
                let total = |c: &[u64; 6]| c.iter().sum::<u64>();
                json!({
                    "name": l.name,
                    "address": l.address.to_string(),
                    "mode": mode_str(l.mode),
                    "allowed": allowed,
                    "blocked": by_reason(blocked),
                    "monitored": by_reason(monitored),
                    "blocked_if_enforced": total(blocked) + total(monitored),
                })
            })
            .collect();
        json!({ "summary": {
            "hosts": self.hosts,
            "invalid": self.invalid,
            "serial": serial,
            "listeners": per_listener,
        }})
    }
}

/// The registry a configuration's gate would start with, loaded without touching the network
/// or the gate's state: the `file://` source (and `file://` deltas), else the last accepted
/// snapshot in `state_dir` and the deltas kept there, each with every check the gate makes.
/// Returns it with a line per step saying what was read, or why nothing could be.
pub fn load_offline(
    settings: &Settings,
) -> Result<(Arc<LoadedRegistry>, Vec<String>), Vec<String>> {
    let registry = &settings.registry;
    let handle = RegistryHandle::new();
    let file = |s: &SnapshotSource| matches!(s, SnapshotSource::File(_));
    let mut syncer = Syncer::new(registry.source.clone(), handle.clone())
        .with_state_dir(registry.state_dir.clone())
        .with_gates(registry.gates.clone())
        .keeping_state(false);
    let mut steps = syncer.load_at_start(file(&registry.source), false);
    // What a running gate does next, when it can be done offline: follow the delta feed.
    let delta_file = registry
        .delta_source
        .as_ref()
        .is_some_and(|d: &DeltaSource| file(&d.at(0)));
    if delta_file && file(&registry.source) && handle.is_ready() {
        syncer = syncer.with_delta_source(registry.delta_source.clone());
        steps.extend(syncer.sync_deltas());
    }
    let mut lines: Vec<String> = steps
        .iter()
        .map(|(from, outcome)| format!("{from}: {}", step_text(outcome)))
        .collect();
    if !file(&registry.source) {
        lines.insert(
            0,
            format!(
                "{}: not read (explain works offline: it reads an http(s) source's last \
                 accepted snapshot from registry.state_dir)",
                registry.source
            ),
        );
    }
    let loaded: Option<Arc<LoadedRegistry>> = (*handle.load()).clone();
    let Some(loaded) = loaded else {
        lines.push(match &registry.state_dir {
            Some(dir) => format!(
                "no registry to explain against: nothing usable from the source, nor in {}",
                dir.display()
            ),
            None => "no registry to explain against: nothing usable from the source, and no \
                     registry.state_dir to fall back on"
                .to_owned(),
        });
        return Err(lines);
    };
    lines.push(format!(
        "explaining against serial {} ({} entries, generated at {}; snapshot serial {}{})",
        loaded.serial,
        loaded.entries,
        loaded.generated_at,
        loaded.base_serial,
        match loaded.deltas_applied {
            0 => String::new(),
            n => format!(" and {n} delta(s) applied over it"),
        }
    ));
    Ok((loaded, lines))
}

fn step_text(outcome: &SyncOutcome) -> String {
    match outcome {
        SyncOutcome::Loaded {
            serial, entries, ..
        } => format!("loaded serial {serial} ({entries} entries)"),
        SyncOutcome::Unchanged => "nothing new".to_owned(),
        SyncOutcome::Rejected(e) | SyncOutcome::DeltaRejected(e) => format!("rejected: {e}"),
        SyncOutcome::StillRejected(r) => format!("rejected: {}", r.as_str()),
        SyncOutcome::SourceError(e) => format!("unreadable: {e}"),
        SyncOutcome::DeltaApplied { from, to, .. } => {
            format!("delta applied, serial {from} to {to}")
        }
        SyncOutcome::Compacted { serial, folded, .. } => {
            format!("compacted at serial {serial} ({folded} changes folded in)")
        }
    }
}

/// `icp-gate explain`: each host of `hosts`, then each line of `batch` (one host a line; blank
/// lines and `#` comments skipped), as one JSON line on `out`; after a batch, a summary line.
/// Streams: memory does not grow with the batch. Returns the summary.
pub fn run_cli(
    loaded: &LoadedRegistry,
    listeners: &[ListenerSettings],
    hosts: &[String],
    batch: Option<&mut dyn BufRead>,
    out: &mut dyn Write,
) -> io::Result<Summary> {
    let mut summary = Summary::new(listeners.len());
    let now = crate::clock::unix_seconds();
    let mut one = |raw: &[u8], out: &mut dyn Write| -> io::Result<()> {
        let e = explain(loaded, listeners, raw, now);
        summary.add(&e);
        serde_json::to_writer(&mut *out, &e.json)?;
        out.write_all(b"\n")
    };
    for host in hosts {
        one(host.as_bytes(), out)?;
    }
    let batched = batch.is_some();
    if let Some(reader) = batch {
        let mut line = Vec::new();
        while read_line(reader, &mut line)? {
            let host = line.trim_ascii();
            if host.is_empty() || host.starts_with(b"#") {
                continue;
            }
            one(host, out)?;
        }
    }
    if batched {
        serde_json::to_writer(&mut *out, &summary.json(listeners, loaded.serial))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(summary)
}

/// The next line of `reader` into `line` (without its `\n`), at most `MAX_BATCH_LINE` bytes of
/// it: a longer line is cut there (and then refused as a host name: too long). False at the end.
fn read_line(reader: &mut dyn BufRead, line: &mut Vec<u8>) -> io::Result<bool> {
    line.clear();
    let mut any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(any);
        }
        any = true;
        let (chunk, done) = match memchr::memchr(b'\n', buf) {
            Some(nl) => (&buf[..nl], Some(nl + 1)),
            None => (buf, None),
        };
        let room = MAX_BATCH_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = done.unwrap_or(buf.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_lines_are_bounded_and_the_last_needs_no_newline() {
        let long = "a".repeat(3 * MAX_BATCH_LINE);
        let text = format!("one\r\n\n{long}\nlast");
        let mut reader = io::BufReader::with_capacity(64, text.as_bytes());
        let mut line = Vec::new();
        let mut got = Vec::new();
        while read_line(&mut reader, &mut line).unwrap() {
            got.push(line.len());
        }
        assert_eq!(got, [4, 0, MAX_BATCH_LINE, 4]);
    }
}
