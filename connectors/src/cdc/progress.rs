//! What CDC readers are doing, for `eddy_catalog.cdc_progress`.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

/// The state of one CDC table's reader.
#[derive(Debug, Clone, Default)]
pub struct CdcProgress {
    /// `schema.table` upstream.
    pub upstream_table: String,
    pub slot: String,
    /// `connecting`, `snapshot`, `streaming`, `reconnecting` or `stopped`.
    pub phase: String,
    pub snapshot_rows_copied: u64,
    pub snapshot_rows_estimated: u64,
    /// The LSN acknowledged to the slot (durable here).
    pub confirmed_lsn: u64,
    /// The newest WAL position the server reported.
    pub server_lsn: u64,
    /// False once a row could not be decoded or the stream stopped on an error.
    pub healthy: bool,
    pub last_error: Option<String>,
    /// Positions of upstreams that have no LSN (a MySQL binlog `file:offset`), shown instead
    /// of `confirmed_lsn` / `server_lsn`.
    pub confirmed_text: Option<String>,
    pub server_text: Option<String>,
}

impl CdcProgress {
    /// Bytes of WAL the slot retains beyond what is acknowledged.
    pub fn slot_lag_bytes(&self) -> u64 {
        if self.confirmed_text.is_some() || self.server_text.is_some() {
            return mysql_lag(self.confirmed_text.as_deref(), self.server_text.as_deref());
        }
        self.server_lsn.saturating_sub(self.confirmed_lsn)
    }
}

/// Bytes between two `file:offset` binlog positions in the same file; across files, the
/// offset in the newer one (a lower bound).
fn mysql_lag(confirmed: Option<&str>, server: Option<&str>) -> u64 {
    let split = |p: &str| {
        let p = p.split('+').next().unwrap_or(p);
        p.rsplit_once(':').and_then(|(f, o)| o.parse::<u64>().ok().map(|o| (f.to_string(), o)))
    };
    match (confirmed.and_then(split), server.and_then(split)) {
        (Some((cf, co)), Some((sf, so))) if cf == sf => so.saturating_sub(co),
        (_, Some((_, so))) => so,
        _ => 0,
    }
}

static READERS: LazyLock<Mutex<BTreeMap<String, Arc<Mutex<CdcProgress>>>>> = LazyLock::new(Default::default);

/// Registers a reader under its slot and table (replacing an older reader of the same).
pub fn register(slot: &str, upstream_table: &str) -> Arc<Mutex<CdcProgress>> {
    let entry = Arc::new(Mutex::new(CdcProgress {
        upstream_table: upstream_table.to_string(),
        slot: slot.to_string(),
        phase: "connecting".into(),
        healthy: true,
        ..Default::default()
    }));
    READERS.lock().insert(format!("{slot}/{upstream_table}"), entry.clone());
    entry
}

/// Forgets a reader's entry, unless a newer reader took its place.
pub fn unregister(entry: &Arc<Mutex<CdcProgress>>) {
    let key = {
        let e = entry.lock();
        format!("{}/{}", e.slot, e.upstream_table)
    };
    let mut readers = READERS.lock();
    if readers.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
        readers.remove(&key);
    }
}

/// Every running CDC reader.
pub fn all() -> Vec<CdcProgress> {
    READERS.lock().values().map(|e| e.lock().clone()).collect()
}
