//! Live changes of stored relations, for `SUBSCRIBE`.
//!
//! A subscriber asks for one stored relation (a table or a materialized view). After every
//! committed epoch the coordinator hands the feed the epoch's deltas of the relations someone
//! subscribes to, together with a snapshot of the store taken *before* the commit; a worker
//! task turns each delta into a [`ChangeBatch`] (an update of a keyed row becomes an adjacent
//! `-old, +new` pair, read from that snapshot) and offers it to every subscriber of the
//! relation.
//!
//! Nothing here ever waits on a subscriber: each one has a bounded buffer, and a subscriber
//! whose buffer is full when an epoch's changes arrive is cut off with an error that only it
//! sees. The dataflow and the coordinator never slow down for a slow client.
//!
//! The feed also follows the committed epoch and its wall-clock time (a `watch`), so a
//! subscriber can report progress and knows which epochs its starting snapshot already holds.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{Int64Array, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use eddy_common::ChangeBatch;
use eddy_common::ids::{Epoch, ObjectId};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::error::Result;
use crate::store::{RelationDelta, RowCodec, Snapshot, Store};

/// Epochs of changes a subscriber may have waiting before it is cut off.
pub const DEFAULT_BUFFER_EPOCHS: usize = 1024;

/// One epoch's changes to the subscribed relation.
#[derive(Debug, Clone)]
pub struct FeedChanges {
    pub epoch: Epoch,
    /// When the epoch committed, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub changes: Arc<ChangeBatch>,
}

/// The last committed epoch and when it committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub epoch: Epoch,
    pub time_ms: i64,
}

/// Why a subscription ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FeedError {
    #[error("the subscription fell behind: the client did not read for {0} epochs of changes")]
    FellBehind(usize),
    #[error("{0} was dropped")]
    Dropped(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

struct Slot {
    id: u64,
    codec: Arc<RowCodec>,
    tx: mpsc::Sender<FeedChanges>,
    ended: Arc<Mutex<Option<FeedError>>>,
}

/// What one commit hands the worker.
struct Published {
    committed: Committed,
    deltas: Vec<(ObjectId, RelationDelta)>,
    before: Option<Snapshot>,
}

/// The fan-out point between the coordinator's commits and the subscribers.
pub struct ChangeFeed {
    slots: Mutex<HashMap<ObjectId, Vec<Slot>>>,
    next_id: Mutex<u64>,
    worker: mpsc::UnboundedSender<Published>,
    committed: watch::Sender<Committed>,
    last_time_ms: Mutex<i64>,
    /// Held by the coordinator from capturing an epoch's deltas until the commit is
    /// published, and by a new subscriber while it registers and reads its snapshot: every
    /// epoch is then either in the subscriber's snapshot or captured for it, never neither.
    gate: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed").finish_non_exhaustive()
    }
}

/// What the coordinator captured before committing an epoch.
pub struct Captured {
    deltas: Vec<(ObjectId, RelationDelta)>,
    before: Option<Snapshot>,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl ChangeFeed {
    /// Creates the feed and starts its worker (on the current tokio runtime).
    pub fn start(last_epoch: Epoch) -> Arc<Self> {
        let (worker, rx) = mpsc::unbounded_channel();
        let feed = Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            next_id: Mutex::new(1),
            worker,
            committed: watch::channel(Committed { epoch: last_epoch, time_ms: now_ms() }).0,
            last_time_ms: Mutex::new(0),
            gate: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(run_worker(Arc::downgrade(&feed), rx));
        feed
    }

    /// Taken by the coordinator around capture, commit and publish (see the field's doc).
    pub async fn commit_gate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Subscribes to `relation` and reads the store: the snapshot holds every epoch whose
    /// changes the subscription will not see, and the subscription every later one.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn subscribe_with_snapshot(
        self: &Arc<Self>,
        store: &Store,
        relation: ObjectId,
        codec: Arc<RowCodec>,
        buffer: usize,
    ) -> Result<(Subscription, Snapshot)> {
        let _gate = self.gate.lock().await;
        let subscription = self.subscribe(relation, codec, buffer);
        let snapshot = store.snapshot()?;
        Ok((subscription, snapshot))
    }

    /// Called by the coordinator right before it commits `relations`: copies the deltas of
    /// subscribed relations and takes a snapshot of the store as it is before the commit.
    /// Cheap (nothing is copied) when nobody subscribes to any of them.
    pub fn capture(&self, store: &Store, relations: &[(ObjectId, RelationDelta)]) -> Captured {
        let deltas: Vec<(ObjectId, RelationDelta)> = {
            let slots = self.slots.lock();
            if slots.is_empty() {
                Vec::new()
            } else {
                relations.iter().filter(|(id, _)| slots.contains_key(id)).cloned().collect()
            }
        };
        let before = if deltas.is_empty() {
            None
        } else {
            match store.snapshot() {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the store for subscribers; ending their subscriptions");
                    self.end_relations(deltas.iter().map(|(id, _)| *id), |_| FeedError::ShuttingDown);
                    return Captured { deltas: Vec::new(), before: None };
                }
            }
        };
        Captured { deltas, before }
    }

    /// Called by the coordinator once `epoch` committed.
    pub fn publish(&self, epoch: Epoch, captured: Captured) {
        let time_ms = {
            let mut last = self.last_time_ms.lock();
            *last = now_ms().max(*last);
            *last
        };
        let published =
            Published { committed: Committed { epoch, time_ms }, deltas: captured.deltas, before: captured.before };
        // The worker only goes away with the feed.
        let _ = self.worker.send(published);
    }

    /// The last committed epoch the feed has passed on to subscribers.
    pub fn committed(&self) -> watch::Receiver<Committed> {
        self.committed.subscribe()
    }

    /// Subscribes to the changes of `relation` from the next published epoch on.
    pub fn subscribe(self: &Arc<Self>, relation: ObjectId, codec: Arc<RowCodec>, buffer: usize) -> Subscription {
        let id = {
            let mut next = self.next_id.lock();
            *next += 1;
            *next
        };
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let ended = Arc::new(Mutex::new(None));
        self.slots.lock().entry(relation).or_default().push(Slot { id, codec, tx, ended: ended.clone() });
        Subscription { id, relation, rx, ended, buffer, feed: Arc::downgrade(self) }
    }

    /// Ends every subscription to `relations` (they were dropped): each sees what was
    /// buffered, then the error.
    pub fn end_relations(&self, relations: impl IntoIterator<Item = ObjectId>, error: impl Fn(ObjectId) -> FeedError) {
        let mut slots = self.slots.lock();
        for id in relations {
            for slot in slots.remove(&id).unwrap_or_default() {
                *slot.ended.lock() = Some(error(id));
            }
        }
    }

    /// Number of live subscriptions, for system views and metrics.
    pub fn subscriber_count(&self) -> usize {
        self.slots.lock().values().map(Vec::len).sum()
    }

    /// Live subscriptions per relation.
    pub fn subscribers(&self) -> Vec<(ObjectId, usize)> {
        let mut out: Vec<_> = self.slots.lock().iter().map(|(id, l)| (*id, l.len())).collect();
        out.sort();
        out
    }

    fn remove(&self, relation: ObjectId, id: u64) {
        let mut slots = self.slots.lock();
        if let Some(list) = slots.get_mut(&relation) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                slots.remove(&relation);
            }
        }
    }
}

async fn run_worker(feed: Weak<ChangeFeed>, mut rx: mpsc::UnboundedReceiver<Published>) {
    while let Some(published) = rx.recv().await {
        let Some(feed) = feed.upgrade() else { return };
        for (relation, delta) in &published.deltas {
            deliver(&feed, *relation, delta, published.before.as_ref(), published.committed);
        }
        feed.committed.send_replace(published.committed);
    }
}

fn deliver(feed: &ChangeFeed, relation: ObjectId, delta: &RelationDelta, before: Option<&Snapshot>, at: Committed) {
    let codec = {
        let slots = feed.slots.lock();
        match slots.get(&relation).and_then(|l| l.first()) {
            Some(s) => s.codec.clone(),
            None => return,
        }
    };
    let changes = match delta_changes(relation, &codec, delta, before) {
        Ok(Some(c)) => Arc::new(c),
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(relation = relation.0, error = %e, "cannot decode changes for subscribers");
            feed.end_relations([relation], |_| FeedError::ShuttingDown);
            return;
        }
    };
    let mut slots = feed.slots.lock();
    let Some(list) = slots.get_mut(&relation) else { return };
    list.retain(|slot| {
        let item = FeedChanges { epoch: at.epoch, time_ms: at.time_ms, changes: changes.clone() };
        match slot.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                *slot.ended.lock() = Some(FeedError::FellBehind(slot.tx.max_capacity()));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    });
    if list.is_empty() {
        slots.remove(&relation);
    }
}

/// Turns one relation's committed delta into changes: for keyed relations `-old` (read from
/// the store before the commit) right before `+new`, for counted relations each row with its
/// change of multiplicity.
fn delta_changes(
    relation: ObjectId,
    codec: &RowCodec,
    delta: &RelationDelta,
    before: Option<&Snapshot>,
) -> Result<Option<ChangeBatch>> {
    match delta {
        RelationDelta::Keyed(entries) => {
            let mut old_keys = Vec::new();
            let mut old_values = Vec::new();
            let mut new_keys = Vec::new();
            let mut new_values = Vec::new();
            // (is the old row, index into its list)
            let mut order: Vec<(bool, usize)> = Vec::new();
            for (key, new) in entries {
                let old = match before {
                    Some(s) => s.get_value(relation, key)?,
                    None => None,
                };
                if old.as_deref() == new.as_deref() {
                    continue;
                }
                if let Some(old) = old {
                    order.push((true, old_keys.len()));
                    old_keys.push(key.clone());
                    old_values.push(old);
                }
                if let Some(new) = new {
                    order.push((false, new_keys.len()));
                    new_keys.push(key.clone());
                    new_values.push(new.clone());
                }
            }
            if order.is_empty() {
                return Ok(None);
            }
            let olds = codec.decode(&old_keys, &old_values)?;
            let news = codec.decode(&new_keys, &new_values)?;
            let both = concat_batches(codec.schema(), [&olds, &news])?;
            let offset = olds.num_rows() as u32;
            let indices: UInt32Array =
                order.iter().map(|(old, i)| if *old { *i as u32 } else { offset + *i as u32 }).collect();
            let weights: Int64Array = order.iter().map(|(old, _)| if *old { -1i64 } else { 1 }).collect();
            Ok(Some(ChangeBatch::try_new(take_record_batch(&both, &indices)?, weights)?))
        }
        RelationDelta::Counted(entries) => {
            // Removals first, so an update of an unkeyed row still reads as -old, +new.
            let mut rows: Vec<&(Vec<u8>, i64)> = entries.iter().filter(|(_, w)| *w != 0).collect();
            if rows.is_empty() {
                return Ok(None);
            }
            rows.sort_by_key(|(_, w)| *w > 0);
            let keys: Vec<Vec<u8>> = rows.iter().map(|(k, _)| k.clone()).collect();
            let ones: Vec<Vec<u8>> = rows.iter().map(|_| 1i64.to_le_bytes().to_vec()).collect();
            let data = codec.decode(&keys, &ones)?;
            let weights: Int64Array = rows.iter().map(|(_, w)| *w).collect();
            Ok(Some(ChangeBatch::try_new(data, weights)?))
        }
    }
}

/// One client's subscription to a relation. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    relation: ObjectId,
    rx: mpsc::Receiver<FeedChanges>,
    ended: Arc<Mutex<Option<FeedError>>>,
    buffer: usize,
    feed: Weak<ChangeFeed>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("relation", &self.relation).finish_non_exhaustive()
    }
}

impl Subscription {
    pub fn relation(&self) -> ObjectId {
        self.relation
    }

    /// The next epoch's changes if one is waiting.
    ///
    /// # Errors
    /// When the subscription ended (its buffer overflowed, its relation was dropped) and
    /// everything buffered before that was taken.
    pub fn try_next(&mut self) -> std::result::Result<Option<FeedChanges>, FeedError> {
        match self.rx.try_recv() {
            Ok(c) => Ok(Some(c)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(self.end_reason()),
        }
    }

    /// Waits for the next epoch's changes.
    ///
    /// # Errors
    /// As [`Subscription::try_next`].
    pub async fn next(&mut self) -> std::result::Result<FeedChanges, FeedError> {
        match self.rx.recv().await {
            Some(c) => Ok(c),
            None => Err(self.end_reason()),
        }
    }

    fn end_reason(&self) -> FeedError {
        self.ended.lock().clone().unwrap_or(if self.feed.upgrade().is_some() {
            FeedError::FellBehind(self.buffer)
        } else {
            FeedError::ShuttingDown
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(feed) = self.feed.upgrade() {
            feed.remove(self.relation, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use eddy_planner::catalog::StorageLayout;

    fn codec() -> Arc<RowCodec> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, false),
            Field::new("v", DataType::Int32, true),
        ]));
        Arc::new(RowCodec::new(schema, StorageLayout::Keyed { key: vec![0] }).expect("codec"))
    }

    fn rows(codec: &RowCodec, k: &[i32], v: &[i32]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let batch = RecordBatch::try_new(
            codec.schema().clone(),
            vec![Arc::new(Int32Array::from(k.to_vec())), Arc::new(Int32Array::from(v.to_vec()))],
        )
        .expect("batch");
        (codec.encode_keys(&batch).expect("keys"), codec.encode_values(&batch).expect("values"))
    }

    #[tokio::test]
    async fn updates_arrive_as_adjacent_pairs_and_slow_subscribers_are_cut_off() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), false).expect("store");
        let feed = ChangeFeed::start(0);
        let relation = ObjectId(7);
        let codec = codec();
        let mut fast = feed.subscribe(relation, codec.clone(), 8);
        let mut slow = feed.subscribe(relation, codec.clone(), 1);

        let (k, v) = rows(&codec, &[1, 2], &[10, 20]);
        let epoch1 = vec![(relation, RelationDelta::Keyed(k.into_iter().zip(v.into_iter().map(Some)).collect()))];
        let captured = feed.capture(&store, &epoch1);
        store.commit(&crate::store::EpochCommit { relations: epoch1, ..Default::default() }).expect("commit");
        feed.publish(1, captured);

        let (k, v) = rows(&codec, &[1, 2], &[11, 0]);
        let epoch2 =
            vec![(relation, RelationDelta::Keyed(vec![(k[0].clone(), Some(v[0].clone())), (k[1].clone(), None)]))];
        let captured = feed.capture(&store, &epoch2);
        store.commit(&crate::store::EpochCommit { relations: epoch2, ..Default::default() }).expect("commit");
        feed.publish(2, captured);

        let first = fast.next().await.expect("epoch 1");
        assert_eq!(first.epoch, 1);
        assert_eq!(first.changes.weights().values().to_vec(), vec![1, 1]);
        let second = fast.next().await.expect("epoch 2");
        let pretty = second.changes.to_pretty();
        // key 1: -old +new adjacent; key 2: deleted.
        assert_eq!(second.changes.weights().values().to_vec(), vec![-1, 1, -1], "{pretty}");
        let values = second.changes.data().column(1).as_any().downcast_ref::<Int32Array>().expect("ints").clone();
        assert_eq!(values.values().to_vec(), vec![10, 11, 20]);

        // The slow subscriber had room for one epoch: it gets it, then the error.
        assert_eq!(slow.next().await.expect("buffered").epoch, 1);
        assert!(matches!(slow.next().await, Err(FeedError::FellBehind(1))));
        assert_eq!(feed.subscriber_count(), 1);

        feed.end_relations([relation], |_| FeedError::Dropped("v".into()));
        assert!(matches!(fast.next().await, Err(FeedError::Dropped(_))));
        drop(fast);
        assert_eq!(feed.subscriber_count(), 0);
    }
}
