//! Identifiers shared between the planner, the runtime and the catalog.

use serde::{Deserialize, Serialize};

/// A catalog object (table, source, materialized view, view, sink). Stable across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId(pub u32);

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A checkpoint epoch: barriers carry one, state is committed per epoch.
pub type Epoch = u64;
