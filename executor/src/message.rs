//! What flows on every channel between actors: data, watermarks and barriers.
//!
//! Barriers are injected into every source actor by the coordinator and flow with the data.
//! An actor with several inputs *aligns* them: once a barrier for epoch `e` arrived on one
//! input, that input is not read again until the barrier arrived on all of them. Everything an
//! actor emits before forwarding barrier `e` belongs to epoch `e`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use eddy_common::ChangeBatch;
use eddy_common::ids::{Epoch, ObjectId};
use tokio::sync::mpsc;

/// Identifies one actor (one parallel instance of a fragment) for the runtime's lifetime.
pub type ActorId = u32;

#[derive(Debug, Clone)]
pub enum Message {
    Data(ChangeBatch),
    /// Event time of column `column` has reached `value` (in the column's own unit): no later
    /// row will carry a smaller value.
    Watermark {
        column: usize,
        value: i64,
    },
    Barrier(Barrier),
}

#[derive(Debug, Clone)]
pub struct Barrier {
    pub epoch: Epoch,
    /// Checkpoint barriers make the epoch durable; others only make it visible.
    pub checkpoint: bool,
    pub mutation: Option<Arc<Mutation>>,
}

impl Barrier {
    /// True when this barrier tells `actor` to stop after processing it.
    pub fn stops(&self, actor: ActorId) -> bool {
        matches!(self.mutation.as_deref(), Some(Mutation::Stop(ids)) if ids.contains(&actor))
    }
}

/// A new downstream edge for one actor of a stored relation.
#[derive(Debug, Clone)]
pub struct NewOutput {
    pub downstream: ActorId,
    pub sender: mpsc::Sender<Message>,
}

/// A change to the running graph, applied by every actor when the barrier carrying it passes.
#[derive(Debug)]
pub enum Mutation {
    /// Relation `id`'s actor number `i` starts sending its changes to `outputs[id][i]` right
    /// after forwarding this barrier.
    AddOutputs(HashMap<ObjectId, Vec<Vec<NewOutput>>>),
    /// These actors stop after this barrier; every dispatcher drops its edges to them.
    Stop(HashSet<ActorId>),
}
