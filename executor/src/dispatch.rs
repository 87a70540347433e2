//! Sending an actor's output to the actors downstream.
//!
//! An actor has a list of edges. A forward edge has one receiver; a hash edge has one receiver
//! per downstream actor and routes each row by the hash of its key columns. Barriers and
//! watermarks go to every receiver. The hash is fixed (seeded, not random) because backfills
//! must split a snapshot exactly as the live stream is split.
//!
//! This is the exchange abstraction: today the receivers are in-process channels; mapped onto
//! Kafka partitions, an edge would be a producer and the same hash would pick the partition.

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::datatypes::ArrowNativeType;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use eddy_common::ChangeBatch;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::message::{ActorId, Message};

const HASH_SEED: u64 = 0x5eed_edd7;

/// The hash partition (out of `n`) of each row of `batch` by `columns`.
///
/// # Errors
/// When a column type cannot be hashed.
pub fn partition_of_rows(batch: &ChangeBatch, columns: &[usize], n: usize) -> Result<Vec<usize>> {
    let rows = batch.num_rows();
    if n <= 1 {
        return Ok(vec![0; rows]);
    }
    let arrays: Vec<_> = columns.iter().map(|c| batch.column(*c).clone()).collect();
    let mut hashes = vec![0u64; rows];
    create_hashes(&arrays, &RandomState::with_seed(HASH_SEED), &mut hashes)?;
    Ok(hashes.iter().map(|h| (h % n as u64).as_usize()).collect())
}

/// One outgoing edge.
#[derive(Debug)]
pub enum Edge {
    Forward { actor: ActorId, sender: mpsc::Sender<Message> },
    Hash { columns: Vec<usize>, targets: Vec<(ActorId, mpsc::Sender<Message>)> },
}

impl Edge {
    fn actors(&self) -> Vec<ActorId> {
        match self {
            Edge::Forward { actor, .. } => vec![*actor],
            Edge::Hash { targets, .. } => targets.iter().map(|(a, _)| *a).collect(),
        }
    }
}

/// All outgoing edges of an actor.
#[derive(Debug, Default)]
pub struct Dispatcher {
    edges: Vec<Edge>,
}

impl Dispatcher {
    pub fn new(edges: Vec<Edge>) -> Self {
        Self { edges }
    }

    pub fn add(&mut self, edge: Edge) {
        self.edges.push(edge);
    }

    /// Drops every edge that reaches one of `actors`.
    pub fn remove_actors(&mut self, actors: &std::collections::HashSet<ActorId>) {
        self.edges.retain(|e| !e.actors().iter().any(|a| actors.contains(a)));
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// Sends data along every edge. An edge whose receiver is gone is dropped: its actors
    /// failed or were stopped, and the coordinator is already unwinding them.
    ///
    /// # Errors
    /// When partitioning fails.
    pub async fn send_data(&mut self, batch: ChangeBatch) -> Result<()> {
        let mut dead = Vec::new();
        for (i, edge) in self.edges.iter().enumerate() {
            match edge {
                Edge::Forward { sender, .. } => {
                    if sender.send(Message::Data(batch.clone())).await.is_err() {
                        dead.push(i);
                    }
                }
                Edge::Hash { columns, targets } => {
                    let parts = partition_of_rows(&batch, columns, targets.len())?;
                    let mut per_target: Vec<Vec<u32>> = vec![Vec::new(); targets.len()];
                    for (row, p) in parts.iter().enumerate() {
                        per_target[*p].push(row as u32);
                    }
                    for (t, rows) in per_target.into_iter().enumerate() {
                        if rows.is_empty() {
                            continue;
                        }
                        let part = if rows.len() == batch.num_rows() {
                            batch.clone()
                        } else {
                            batch.take(&UInt32Array::from(rows))?
                        };
                        if targets[t].1.send(Message::Data(part)).await.is_err() {
                            dead.push(i);
                        }
                    }
                }
            }
        }
        self.drop_edges(dead);
        Ok(())
    }

    /// Sends a control message (barrier, watermark) to every receiver.
    pub async fn broadcast(&mut self, message: Message) {
        let mut dead = Vec::new();
        for (i, edge) in self.edges.iter().enumerate() {
            match edge {
                Edge::Forward { sender, .. } => {
                    if sender.send(message.clone()).await.is_err() {
                        dead.push(i);
                    }
                }
                Edge::Hash { targets, .. } => {
                    for (_, sender) in targets {
                        if sender.send(message.clone()).await.is_err() {
                            dead.push(i);
                        }
                    }
                }
            }
        }
        self.drop_edges(dead);
    }

    fn drop_edges(&mut self, mut dead: Vec<usize>) {
        if dead.is_empty() {
            return;
        }
        dead.sort_unstable();
        dead.dedup();
        for i in dead.into_iter().rev() {
            let edge = self.edges.remove(i);
            tracing::debug!(actors = ?edge.actors(), "dropping an edge to actors that are gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_partitioning_is_deterministic_and_spread() -> Result<()> {
        let mut text = String::from("I\n");
        for i in 0..100 {
            text.push_str(&format!("+ {i}\n"));
        }
        let batch = ChangeBatch::from_pretty(&text);
        let a = partition_of_rows(&batch, &[0], 4)?;
        let b = partition_of_rows(&batch, &[0], 4)?;
        assert_eq!(a, b);
        for p in 0..4 {
            assert!(a.iter().filter(|x| **x == p).count() > 5, "partition {p} is nearly empty");
        }
        Ok(())
    }
}
