//! One replication slot shared by every table read from a `postgres-cdc` source.
//!
//! A slot's pgoutput stream carries the changes of every table in its publication, so one
//! walsender (and one slot retaining WAL) serves them all: the hub's task reads the stream and
//! hands each table the changes of its own relation. Each table keeps its own position (the
//! commit end LSN of the last transaction handed to it, or its snapshot's consistent point) and
//! skips what it already has, which makes restarting the stream from the slot's confirmed point
//! always safe. The hub does so whenever a table starts streaming, so the newcomer sees every
//! transaction after its own position. The slot is acknowledged up to the smallest durable
//! position of its tables; a table still copying its snapshot holds the acknowledgement back,
//! so the slot keeps what it will need.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use eddy_common::ChangeBatch;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use super::pg_values::{RowsBuilder, compatible, format_lsn};
use super::pg_wire::{ConnectParams, ReplicationConnection, StreamMessage, WireError, quote_literal};
use super::pgoutput::{Datum, Message, OldKind, Relation, decode};
use super::postgres::{CHUNK_ROWS, Event, SessionError};
use super::progress::CdcProgress;
use crate::error::ConnectorError;
use crate::source::SourceStats;

/// What the hub needs to feed one table.
pub(super) struct MemberSpec {
    pub schema: String,
    pub table: String,
    pub declared: SchemaRef,
    pub events: mpsc::Sender<Event>,
    pub stats: Arc<SourceStats>,
    pub progress: Arc<Mutex<CdcProgress>>,
}

impl MemberSpec {
    fn upstream_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

struct Member {
    spec: Arc<MemberSpec>,
    /// Set once the table reads the stream: it wants transactions that commit at or after
    /// this LSN. `None` while it copies its snapshot (the stream ignores it).
    streaming_from: Option<u64>,
    /// The newest position of the table durably checkpointed here; 0 before the first.
    durable: u64,
    /// Stopped on an error of its own: neither fed nor waited for.
    stopped: bool,
}

#[derive(Default)]
struct HubState {
    next_id: u64,
    members: BTreeMap<u64, Member>,
    /// A table started streaming: the stream restarts from the slot's confirmed point.
    restart: bool,
    running: bool,
}

impl HubState {
    /// What the slot may be acknowledged up to: every table that is not stopped has made
    /// its changes up to there durable (0 when one has nothing durable yet).
    fn acknowledgeable(&self) -> u64 {
        self.members.values().filter(|m| !m.stopped).map(|m| m.durable).min().unwrap_or(0)
    }
}

/// A slot and the tables it feeds.
pub(super) struct SlotHub {
    params: ConnectParams,
    slot: String,
    publication: String,
    state: Mutex<HubState>,
    wake: Notify,
}

type HubKey = (String, u16, String, String);

static HUBS: LazyLock<Mutex<HashMap<HubKey, Arc<SlotHub>>>> = LazyLock::new(Default::default);

/// A table's place in its slot's hub; it leaves the hub when dropped.
pub(super) struct Membership {
    hub: Arc<SlotHub>,
    id: u64,
}

/// Joins the hub of `slot` (creating it): `streaming_from` is the table's stored position when
/// it resumes, `None` when it starts with a snapshot.
pub(super) fn join(
    params: &ConnectParams,
    slot: &str,
    publication: &str,
    spec: MemberSpec,
    streaming_from: Option<u64>,
) -> Membership {
    let key = (params.host.clone(), params.port, params.database.clone(), slot.to_string());
    let hub = {
        let mut hubs = HUBS.lock();
        let hub = hubs
            .entry(key)
            .or_insert_with(|| {
                Arc::new(SlotHub {
                    params: params.clone(),
                    slot: slot.to_string(),
                    publication: publication.to_string(),
                    state: Mutex::new(HubState::default()),
                    wake: Notify::new(),
                })
            })
            .clone();
        let mut state = hub.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.members.insert(
            id,
            Member { spec: Arc::new(spec), streaming_from, durable: streaming_from.unwrap_or(0), stopped: false },
        );
        state.restart |= streaming_from.is_some();
        drop(state);
        Membership { hub: hub.clone(), id }
    };
    hub.hub.wake.notify_one();
    hub
}

impl Membership {
    /// Starts the hub's stream task unless it runs (or no table streams yet).
    pub(super) fn ensure_running(&self) {
        let mut state = self.hub.state.lock();
        if !state.running && state.members.values().any(|m| m.streaming_from.is_some() && !m.stopped) {
            state.running = true;
            state.restart = false;
            tokio::spawn(self.hub.clone().run());
        }
    }

    /// The table's snapshot is copied as of `consistent_point`: feed it from there.
    pub(super) fn start_streaming(&self, consistent_point: u64) {
        {
            let mut state = self.hub.state.lock();
            if let Some(m) = state.members.get_mut(&self.id) {
                m.streaming_from = Some(consistent_point);
            }
            state.restart = true;
        }
        self.hub.wake.notify_one();
        self.ensure_running();
    }

    /// The table stopped before it streamed: the slot no longer waits for it.
    pub(super) fn stop(&self) {
        if let Some(m) = self.hub.state.lock().members.get_mut(&self.id) {
            m.stopped = true;
        }
        self.hub.wake.notify_one();
    }

    /// The table's changes up to `lsn` are durable here.
    pub(super) fn durable(&self, lsn: u64) {
        {
            let mut state = self.hub.state.lock();
            if let Some(m) = state.members.get_mut(&self.id) {
                m.durable = m.durable.max(lsn);
            }
        }
        self.hub.wake.notify_one();
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut hubs = HUBS.lock();
        let empty = {
            let mut state = self.hub.state.lock();
            state.members.remove(&self.id);
            state.members.is_empty()
        };
        if empty {
            let key = (
                self.hub.params.host.clone(),
                self.hub.params.port,
                self.hub.params.database.clone(),
                self.hub.slot.clone(),
            );
            if hubs.get(&key).is_some_and(|h| Arc::ptr_eq(h, &self.hub)) {
                hubs.remove(&key);
            }
        }
        drop(hubs);
        self.hub.wake.notify_one();
    }
}

/// The stream's view of one table: its relation, rows of the open transaction, position.
struct Decoder {
    spec: Arc<MemberSpec>,
    relation: Option<Relation>,
    /// For each declared column, its index among the relation's columns.
    columns: Vec<usize>,
    builder: RowsBuilder,
    /// Commit end LSN of the last transaction handed out (or the consistent point).
    last_emitted: u64,
    /// The open transaction was handed out before (a replay): skip it.
    skipping: bool,
    /// The reader is gone or the table stopped.
    closed: bool,
}

impl Decoder {
    fn new(spec: Arc<MemberSpec>, from: u64) -> Self {
        let builder = RowsBuilder::new(spec.declared.clone());
        Self { spec, relation: None, columns: Vec::new(), builder, last_emitted: from, skipping: false, closed: false }
    }

    fn new_session(&mut self) {
        self.relation = None;
        self.columns.clear();
        self.builder = RowsBuilder::new(self.spec.declared.clone());
        self.skipping = false;
    }

    fn wants(&self, relation: &Relation) -> bool {
        relation.namespace == self.spec.schema && relation.name == self.spec.table
    }

    fn is_ours(&self, relation: u32) -> bool {
        !self.closed && !self.skipping && self.relation.as_ref().is_some_and(|r| r.id == relation)
    }

    async fn send(&mut self, event: Event) {
        if self.spec.events.send(event).await.is_err() {
            self.closed = true;
        }
    }

    /// Stops this table (only): the error goes to its reader and to `cdc_progress`.
    async fn fail(&mut self, message: String) {
        {
            let mut p = self.spec.progress.lock();
            p.phase = "stopped".into();
            p.healthy = false;
            p.last_error = Some(message.clone());
        }
        self.send(Event::Failed(message)).await;
        self.closed = true;
    }

    /// Checks a Relation message of our table against the declared columns.
    fn on_relation(&mut self, relation: Relation) -> std::result::Result<(), String> {
        let declared = self.spec.declared.clone();
        let mut columns = Vec::with_capacity(declared.fields().len());
        for field in declared.fields() {
            let Some(i) = relation.columns.iter().position(|c| c.name == *field.name()) else {
                return Err(format!(
                    "upstream table {} no longer has column \"{}\" (dropped or renamed); the table stopped to avoid wrong rows: drop it and create it again with the new columns",
                    self.spec.upstream_table(),
                    field.name()
                ));
            };
            let oid = relation.columns[i].type_oid;
            if !compatible(oid, field.data_type()) {
                return Err(format!(
                    "column \"{}\" of upstream table {} changed to type oid {oid}, which cannot be read as {}; the table stopped: drop it and create it again",
                    field.name(),
                    self.spec.upstream_table(),
                    field.data_type()
                ));
            }
            columns.push(i);
        }
        if let Some(old) = &self.relation
            && old.columns.len() != relation.columns.len()
        {
            tracing::info!(table = %self.spec.upstream_table(), "upstream columns changed compatibly; continuing");
        }
        self.columns = columns;
        self.relation = Some(relation);
        Ok(())
    }

    fn push(&mut self, tuple: &[Datum], weight: i64, lsn: u64, key_only: bool) {
        push_tuple(&self.spec.declared, &self.columns, &mut self.builder, tuple, weight, lsn, key_only);
    }

    /// Hands out the rows collected so far (part of a transaction).
    async fn flush_rows(&mut self) -> std::result::Result<(), ConnectorError> {
        if let Some(batch) = self.builder.finish(&self.spec.upstream_table(), &self.spec.stats)? {
            self.send(Event::Rows(batch)).await;
        }
        Ok(())
    }

    async fn on_update(
        &mut self,
        old: Option<(OldKind, Vec<Datum>)>,
        mut new: Vec<Datum>,
        lsn: u64,
    ) -> std::result::Result<(), ConnectorError> {
        let key_columns: Vec<usize> = self
            .relation
            .as_ref()
            .map(|r| r.columns.iter().enumerate().filter(|(_, c)| c.flags & 1 == 1).map(|(i, _)| i).collect())
            .unwrap_or_default();
        if let Some((kind, old)) = &old {
            let key_changed = key_columns
                .iter()
                .any(|&i| matches!((old.get(i), new.get(i)), (Some(Datum::Text(a)), Some(Datum::Text(b))) if a != b));
            if key_changed {
                self.push(old, -1, lsn, *kind == OldKind::Key);
            }
            // A full old row carries the TOAST values the new row left out.
            if *kind == OldKind::Full {
                for (i, d) in new.iter_mut().enumerate() {
                    if *d == Datum::UnchangedToast
                        && let Some(v) = old.get(i)
                    {
                        *d = v.clone();
                    }
                }
            }
        }
        let keep: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .filter(|(_, i)| new.get(**i) == Some(&Datum::UnchangedToast))
            .map(|(declared, _)| declared)
            .collect();
        if keep.is_empty() {
            self.push(&new, 1, lsn, false);
            return Ok(());
        }
        // The table fills these columns from its current row: send the row on its own, after
        // what came before it.
        self.flush_rows().await?;
        let mut single = RowsBuilder::new(self.spec.declared.clone());
        push_tuple(&self.spec.declared, &self.columns, &mut single, &new, 1, lsn, true);
        if let Some(batch) = single.finish(&self.spec.upstream_table(), &self.spec.stats)? {
            let (data, weights) = batch.into_parts();
            let mut metadata = data.schema().metadata().clone();
            let list: Vec<String> = keep.iter().map(|i| i.to_string()).collect();
            metadata.insert(super::KEEP_COLUMNS_METADATA.to_string(), list.join(","));
            let schema = Arc::new(data.schema().as_ref().clone().with_metadata(metadata));
            let data = RecordBatch::try_new(schema, data.columns().to_vec())?;
            let batch = ChangeBatch::try_new(data, weights)?;
            self.send(Event::Rows(batch)).await;
        }
        Ok(())
    }

    async fn on_commit(&mut self, end_lsn: u64) -> std::result::Result<(), ConnectorError> {
        if self.closed {
            return Ok(());
        }
        if std::mem::take(&mut self.skipping) {
            return Ok(());
        }
        let batch = self.builder.finish(&self.spec.upstream_table(), &self.spec.stats)?;
        self.last_emitted = end_lsn;
        match batch {
            Some(batch) => self.send(Event::Committed(Some(batch), end_lsn)).await,
            // Only a position: a full channel loses nothing but a hint.
            None => {
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    self.spec.events.try_send(Event::Committed(None, end_lsn))
                {
                    self.closed = true;
                }
            }
        }
        if self.spec.stats.bad_records() > 0 {
            self.spec.progress.lock().healthy = false;
        }
        Ok(())
    }
}

impl SlotHub {
    async fn run(self: Arc<Self>) {
        let mut decoders: BTreeMap<u64, Decoder> = BTreeMap::new();
        let mut backoff = Duration::from_millis(200);
        loop {
            if !self.sync(&mut decoders) {
                return;
            }
            match self.session(&mut decoders).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(SessionError::Closed) => {}
                Err(SessionError::Retry(message)) => {
                    tracing::warn!(slot = %self.slot, %message, "postgres-cdc connection lost; reconnecting");
                    for d in decoders.values() {
                        let mut p = d.spec.progress.lock();
                        p.phase = "reconnecting".into();
                        p.last_error = Some(message.clone());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(SessionError::Fatal(message)) => {
                    for d in decoders.values_mut() {
                        d.fail(message.clone()).await;
                    }
                    let mut state = self.state.lock();
                    for id in decoders.keys() {
                        if let Some(m) = state.members.get_mut(id) {
                            m.stopped = true;
                        }
                    }
                    state.running = false;
                    return;
                }
            }
        }
    }

    /// Brings the decoders in line with the members: new streaming tables get one, tables
    /// that left or stopped lose theirs. False (and the task ends) when none streams.
    fn sync(&self, decoders: &mut BTreeMap<u64, Decoder>) -> bool {
        let mut state = self.state.lock();
        state.restart = false;
        for (id, d) in decoders.iter() {
            if d.closed
                && let Some(m) = state.members.get_mut(id)
            {
                m.stopped = true;
            }
        }
        decoders.retain(|id, d| !d.closed && state.members.get(id).is_some_and(|m| !m.stopped));
        for (id, m) in &state.members {
            if let (Some(from), false) = (m.streaming_from, m.stopped) {
                decoders.entry(*id).or_insert_with(|| Decoder::new(m.spec.clone(), from));
            }
        }
        if decoders.is_empty() {
            state.running = false;
            return false;
        }
        true
    }

    /// Sends the slot's acknowledgement and shows it on every table.
    async fn acknowledge(
        &self,
        conn: &mut ReplicationConnection,
        decoders: &BTreeMap<u64, Decoder>,
        reply: bool,
    ) -> std::result::Result<(), SessionError> {
        let acked = self.state.lock().acknowledgeable();
        for d in decoders.values() {
            d.spec.progress.lock().confirmed_lsn = acked;
        }
        conn.send_status(acked, reply).await?;
        Ok(())
    }

    /// One replication connection: streams until it breaks or the members change so that
    /// the stream must restart (`Ok`).
    async fn session(&self, decoders: &mut BTreeMap<u64, Decoder>) -> std::result::Result<(), SessionError> {
        let mut conn = ReplicationConnection::connect(&self.params).await?;
        for d in decoders.values_mut() {
            d.new_session();
        }
        if let Err(e) = conn.start_replication(&self.slot, 0, &self.publication).await {
            if let WireError::Server { code, .. } = &e {
                if code == "42704" {
                    return Err(SessionError::Fatal(format!(
                        "replication slot {} no longer exists upstream, so changes since the last checkpoint are lost; drop and recreate the table",
                        self.slot
                    )));
                }
                if code == "55006" {
                    // Still held by a walsender of ours that has not noticed its client died.
                    let mut admin = ReplicationConnection::connect(&self.params).await?;
                    admin
                        .simple_query(&format!(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = {} AND active_pid IS NOT NULL",
                            quote_literal(&self.slot)
                        ))
                        .await?;
                    return Err(SessionError::Retry(e.to_string()));
                }
            }
            return Err(e.into());
        }
        for d in decoders.values() {
            let mut p = d.spec.progress.lock();
            p.phase = "streaming".into();
            p.last_error = None;
        }
        let mut status = tokio::time::interval(Duration::from_secs(1));
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_transaction = false;
        let mut restart_pending = false;
        let mut commit_lsn = 0;
        enum Wake {
            Message(std::result::Result<StreamMessage, WireError>),
            Status,
            Members,
        }
        loop {
            let wake = tokio::select! {
                m = conn.next_message() => Wake::Message(m),
                _ = status.tick() => Wake::Status,
                () = self.wake.notified() => Wake::Members,
            };
            let message = match wake {
                Wake::Status => {
                    self.acknowledge(&mut conn, decoders, false).await?;
                    continue;
                }
                Wake::Members => {
                    {
                        let state = self.state.lock();
                        restart_pending |= state.restart;
                        for (id, d) in decoders.iter_mut() {
                            if !state.members.contains_key(id) {
                                d.closed = true;
                            }
                        }
                    }
                    // Restart between transactions only: a transaction half handed out
                    // would otherwise be handed out again.
                    if (restart_pending || decoders.values().all(|d| d.closed)) && !in_transaction {
                        return Ok(());
                    }
                    self.acknowledge(&mut conn, decoders, false).await?;
                    continue;
                }
                Wake::Message(m) => m?,
            };
            let (wal_start, data) = match message {
                StreamMessage::Keepalive { wal_end, reply } => {
                    for d in decoders.values_mut() {
                        d.spec.progress.lock().server_lsn = wal_end;
                        // Between transactions, everything committed before `wal_end` has been
                        // sent: moving the position there lets the slot free WAL written by
                        // tables we do not follow (pgoutput sends nothing for them).
                        if !in_transaction && d.last_emitted < wal_end && !d.closed {
                            d.last_emitted = wal_end;
                            if let Err(mpsc::error::TrySendError::Closed(_)) =
                                d.spec.events.try_send(Event::Committed(None, wal_end))
                            {
                                d.closed = true;
                            }
                        }
                    }
                    if reply {
                        self.acknowledge(&mut conn, decoders, false).await?;
                    }
                    continue;
                }
                StreamMessage::Done => {
                    return Err(SessionError::Retry("the server ended the replication stream".into()));
                }
                StreamMessage::XLogData { wal_start, data } => (wal_start, data),
            };
            let message = match decode(data) {
                Ok(m) => m,
                Err(e) => {
                    // Which table it belonged to is unknown: every table hears of it.
                    for d in decoders.values() {
                        d.spec.progress.lock().healthy = false;
                        d.spec.stats.bad_record(format!(
                            "postgres-cdc slot {}: at LSN {}: {e}",
                            self.slot,
                            format_lsn(wal_start)
                        ));
                    }
                    continue;
                }
            };
            match message {
                Message::Begin { final_lsn, .. } => {
                    in_transaction = true;
                    commit_lsn = final_lsn;
                    for d in decoders.values_mut() {
                        // Already handed out before a reconnect, a restart or a crash.
                        d.skipping = final_lsn < d.last_emitted;
                    }
                }
                Message::Relation(relation) => {
                    for d in decoders.values_mut().filter(|d| !d.closed && d.wants(&relation)) {
                        if let Err(message) = d.on_relation(relation.clone()) {
                            d.fail(message).await;
                        }
                    }
                }
                Message::Insert { relation, new } => {
                    for d in decoders.values_mut().filter(|d| d.is_ours(relation)) {
                        d.push(&new, 1, commit_lsn, false);
                    }
                }
                Message::Update { relation, old, new } => {
                    // Usually one table reads the relation: it gets the tuples without a copy.
                    let mut readers = decoders.values().filter(|d| d.is_ours(relation)).count();
                    let mut tuples = Some((old, new));
                    for d in decoders.values_mut().filter(|d| d.is_ours(relation)) {
                        readers -= 1;
                        let (old, new) = if readers == 0 { tuples.take() } else { tuples.clone() }.unwrap_or_default();
                        d.on_update(old, new, commit_lsn).await?;
                    }
                }
                Message::Delete { relation, old: (kind, old) } => {
                    for d in decoders.values_mut().filter(|d| d.is_ours(relation)) {
                        d.push(&old, -1, commit_lsn, kind == OldKind::Key);
                    }
                }
                Message::Truncate { relations } => {
                    for d in decoders.values_mut().filter(|d| relations.iter().any(|r| d.is_ours(*r))) {
                        let message = format!(
                            "upstream table {} was truncated; following TRUNCATE is not supported yet, so the table stopped: drop it and create it again",
                            d.spec.upstream_table()
                        );
                        d.fail(message).await;
                    }
                }
                Message::Commit { end_lsn, .. } => {
                    in_transaction = false;
                    for d in decoders.values_mut() {
                        d.on_commit(end_lsn).await?;
                    }
                    if restart_pending {
                        return Ok(());
                    }
                }
                _ => {}
            }
            for d in decoders.values_mut() {
                if d.builder.len() >= CHUNK_ROWS {
                    d.flush_rows().await?;
                }
            }
            if decoders.values().all(|d| d.closed) {
                return Ok(());
            }
        }
    }
}

impl From<ConnectorError> for SessionError {
    fn from(e: ConnectorError) -> Self {
        SessionError::Retry(e.to_string())
    }
}

/// Adds a row to `builder` from a tuple; values missing from the tuple (NULL in a key-only
/// old tuple) become placeholders in NOT NULL columns, which a delete by key never reads.
fn push_tuple(
    declared: &SchemaRef,
    columns: &[usize],
    builder: &mut RowsBuilder,
    tuple: &[Datum],
    weight: i64,
    lsn: u64,
    key_only: bool,
) {
    let values = columns.iter().enumerate().map(|(d, &i)| match tuple.get(i) {
        Some(Datum::Text(b)) => Some(b.as_ref()),
        _ if key_only && !declared.field(d).is_nullable() => placeholder(declared.field(d).data_type()),
        _ => None,
    });
    builder.push(values, weight, lsn);
}

/// A stand-in value for a NOT NULL column of a delete-by-key row (never read).
fn placeholder(t: &DataType) -> Option<&'static [u8]> {
    Some(match t {
        DataType::Boolean => b"f",
        DataType::Binary => b"\\x",
        DataType::Utf8 => b"",
        DataType::Date32 => b"1970-01-01",
        DataType::Timestamp(_, None) => b"1970-01-01 00:00:00",
        DataType::Timestamp(_, Some(_)) => b"1970-01-01 00:00:00+00:00",
        DataType::List(_) => b"{}",
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(_, _) => b"0",
        _ => return None,
    })
}
