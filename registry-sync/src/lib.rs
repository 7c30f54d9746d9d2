//! The registry side of icp-gate: host names and their normalization, the in-memory index of
//! filings and the decision it gives, snapshot format v1, and the sync step that swaps a new
//! snapshot into service.

pub mod delta;
pub mod explain;
pub mod index;
pub mod name;
pub mod publish;
pub mod registry;
pub mod snapshot;
pub mod sync;
pub mod synthetic;

pub use delta::{apply_delta, diff, read_delta, should_compact, Delta, DeltaHeader, DeltaWriter};
pub use name::{
    parse_authority, parse_registry_name, parse_sni, registered_domain_start, DomainName, Host,
    InvalidHost,
};
pub use registry::{
    BlockReason, Change, Decision, Entry, InsertError, Key, Registry, RegistryBuilder, Requirement,
    Status,
};
pub use snapshot::{
    read_snapshot, read_snapshot_sized, RejectReason, Snapshot, SnapshotError, SnapshotWriter,
};
pub use sync::{
    Canary, DeltaSource, HttpSettings, LoadedRegistry, RegistryHandle, SafetyGates, SnapshotSource,
    SyncOutcome, Syncer,
};
