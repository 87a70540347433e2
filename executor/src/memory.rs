//! The memory limit for operator state.
//!
//! Every checkpoint leaves a durable copy of each operator's state in the store, so an entry
//! that has not changed since the last durable checkpoint can be dropped from memory and read
//! back on demand. Operators whose state grows without bound (regular joins, grouped
//! aggregates) report what they hold here; when the total is over `--memory-limit`, each of
//! them evicts clean entries, down to its share of the limit, once the checkpoint that saved
//! them is durable. The limit is soft: state added since the last checkpoint stays in memory
//! until the next one.

use std::sync::atomic::{AtomicU64, Ordering};

/// Fraction of its share an operator keeps after evicting, so it does not evict again at once.
const KEEP_AFTER_EVICTION: f64 = 0.8;

#[derive(Debug, Default)]
pub struct MemoryBudget {
    limit: Option<u64>,
    used: AtomicU64,
    evicted_entries: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: Option<u64>) -> Self {
        Self { limit, used: AtomicU64::new(0), evicted_entries: AtomicU64::new(0) }
    }

    /// An operator's holding went from `before` to `after` bytes.
    pub fn track(&self, before: u64, after: u64) {
        if after >= before {
            self.used.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.used.fetch_sub((before - after).min(self.used.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
    }

    /// Bytes held by all operators, as they last reported.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// How many bytes an operator holding `own` should shrink to, when the total is over the
    /// limit: its proportional share of the limit, with some headroom.
    pub fn target_for(&self, own: u64) -> Option<u64> {
        let limit = self.limit?;
        let used = self.used();
        if used <= limit || own == 0 {
            return None;
        }
        let share = own as f64 * limit as f64 / used as f64;
        Some((share * KEEP_AFTER_EVICTION) as u64)
    }

    pub fn record_evictions(&self, entries: u64) {
        self.evicted_entries.fetch_add(entries, Ordering::Relaxed);
    }

    /// Entries evicted to the store since start.
    pub fn evicted_entries(&self) -> u64 {
        self.evicted_entries.load(Ordering::Relaxed)
    }
}

/// Parses a size like `512MB`, `2G`, `1.5GiB` or a plain number of bytes.
///
/// # Errors
/// When the text is not a size.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("\"{text}\" is not a size (e.g. 512MB, 2GB)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => return Err(format!("unknown size unit \"{other}\" in \"{text}\" (use KB, MB, GB, TB)")),
    };
    Ok((value * multiplier as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn shares_are_proportional_and_only_when_over() {
        let budget = MemoryBudget::new(Some(1000));
        budget.track(0, 600);
        assert_eq!(budget.target_for(600), None);
        budget.track(0, 1400);
        // 2000 used against 1000: an operator holding 600 keeps 0.8 * 300.
        assert_eq!(budget.target_for(600), Some(240));
        budget.track(1400, 200);
        assert_eq!(budget.target_for(600), None);
    }
}
