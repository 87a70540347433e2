//! The `postgres-cdc` connector: upstream tables, each a snapshot then the pgoutput stream.
//!
//! The tables of one source share its replication slot and publication: one walsender
//! streams for all of them ([`super::pg_slot`] hands each its own changes), and the slot
//! retains WAL only up to what every table has durably absorbed. A new table
//! - copies its rows in the snapshot exported by a temporary slot created after the shared
//!   one (progress in `eddy_catalog.cdc_progress`), then takes from the shared stream every
//!   transaction that commits after that snapshot, so no change is missed or seen twice;
//! - on resume, takes from the stream what commits after its stored position (delivery after
//!   a crash is at-least-once, and already-absorbed transactions are skipped);
//! - reconnects after a dropped connection and stops, with the error in `cdc_progress`, on
//!   what a retry cannot fix (slot gone, incompatible schema change).
//!
//! Background tasks own the connections and send decoded changes over a channel, so
//! [`SourceReader::next_chunk`] only waits on that channel and is cancel-safe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use eddy_common::{ChangeBatch, SqlState};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::pg_slot::{self, MemberSpec, Membership};
use super::pg_values::{RowsBuilder, compatible, format_lsn};
use super::pg_wire::{ConnectParams, ReplicationConnection, SESSION_OPTIONS, WireError, quote_ident, quote_literal};
use super::progress::{self, CdcProgress};
use crate::error::{ConnectorError, Result};
use crate::source::{SourceReader, SourceStats};

/// Options of `postgres-cdc`.
pub const OPTIONS: &[&str] = &[
    "connector",
    "hostname",
    "port",
    "username",
    "password",
    "database.name",
    "slot.name",
    "publication.name",
    "schema.name",
    "table.name",
];

/// Rows per batch handed to the table (snapshot chunks and coalesced transactions).
pub(super) const CHUNK_ROWS: usize = 8192;

/// A parsed `postgres-cdc` configuration.
#[derive(Debug, Clone)]
pub struct PgCdcConfig {
    pub params: ConnectParams,
    pub slot: String,
    pub publication: String,
    /// The publication is ours (named after the slot) and is dropped with the table.
    pub owns_publication: bool,
    pub schema: String,
    /// `None` for a shared source that tables name with `FROM source TABLE '...'`.
    pub table: Option<String>,
}

impl PgCdcConfig {
    /// # Errors
    /// Unknown or missing options, a bad port, an invalid slot name.
    pub fn parse(options: &HashMap<String, String>) -> Result<Self> {
        for key in options.keys() {
            if !OPTIONS.contains(&key.as_str()) {
                return Err(ConnectorError::InvalidOption(format!(
                    "unknown option \"{key}\" for connector postgres-cdc; valid options: {}",
                    OPTIONS.join(", ")
                )));
            }
        }
        let get = |k: &str| options.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let host = get("hostname").unwrap_or_else(|| "127.0.0.1".into());
        let port = match get("port") {
            None => 5432,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| ConnectorError::InvalidOption(format!("port = '{p}' is not a TCP port")))?,
        };
        let user =
            get("username").ok_or_else(|| ConnectorError::InvalidOption("postgres-cdc needs username".into()))?;
        let password = options.get("password").cloned().unwrap_or_default();
        let database = get("database.name")
            .ok_or_else(|| ConnectorError::InvalidOption("postgres-cdc needs database.name".into()))?;
        let (mut schema, table) = match get("table.name") {
            None => ("public".to_string(), None),
            Some(t) => match t.split_once('.') {
                Some((s, t)) => (s.to_string(), Some(t.to_string())),
                None => ("public".to_string(), Some(t)),
            },
        };
        if let Some(s) = get("schema.name") {
            schema = s;
        }
        let slot = match get("slot.name") {
            Some(s) => s,
            None => match &table {
                Some(t) => sanitize(&format!("eddy_{database}_{schema}_{t}")),
                // A source's tables share its slot.
                None => sanitize(&format!("eddy_{database}")),
            },
        };
        if slot.is_empty()
            || slot.len() > 63
            || !slot.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(ConnectorError::InvalidOption(format!(
                "slot.name = '{slot}' is not a valid replication slot name: use at most 63 lower-case letters, digits and underscores"
            )));
        }
        let (publication, owns_publication) = match get("publication.name") {
            Some(p) => (p, false),
            None => (format!("{slot}_pub"), true),
        };
        Ok(Self {
            params: ConnectParams { host, port, user, password, database },
            slot,
            publication,
            owns_publication,
            schema,
            table,
        })
    }

    /// The options of a table read `FROM` a shared source: the source's connection, slot
    /// and publication (the table is added to it), and the table's name.
    pub fn table_options(source: &HashMap<String, String>, table: &str) -> HashMap<String, String> {
        let mut options = source.clone();
        if !options.contains_key("slot.name")
            && let Ok(shared) = Self::parse(source)
        {
            options.insert("slot.name".into(), shared.slot);
        }
        options.insert("table.name".into(), table.to_string());
        options
    }

    /// Where the slot lives and its name: tables with the same identity share one slot.
    pub fn slot_identity(&self) -> String {
        format!("{}:{}/{}/{}", self.params.host, self.params.port, self.params.database, self.slot)
    }

    fn upstream_table(&self) -> String {
        format!("{}.{}", self.schema, self.table.as_deref().unwrap_or("*"))
    }

    fn qualified_table(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(self.table.as_deref().unwrap_or_default()))
    }
}

fn sanitize(name: &str) -> String {
    let mut s: String =
        name.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    s.truncate(63);
    s
}

fn upstream(state: SqlState, message: String) -> ConnectorError {
    ConnectorError::Upstream { state, message }
}

fn sql_error(p: &ConnectParams, e: tokio_postgres::Error) -> ConnectorError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            if code.starts_with("28") {
                upstream(
                    SqlState::InvalidPassword,
                    format!(
                        "Postgres at {}:{} refused user \"{}\": {}; check the username and password options",
                        p.host,
                        p.port,
                        p.user,
                        db.message()
                    ),
                )
            } else if code == "3D000" {
                upstream(
                    SqlState::UndefinedObject,
                    format!("database \"{}\" does not exist upstream; check database.name", p.database),
                )
            } else {
                upstream(
                    SqlState::ObjectNotInPrerequisiteState,
                    format!("upstream Postgres: {} ({code})", db.message()),
                )
            }
        }
        None => upstream(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "cannot connect to Postgres at {}:{}: {e}; check hostname and port, and that Postgres is running",
                p.host, p.port
            ),
        ),
    }
}

/// An ordinary (non-replication) connection for catalog checks and the snapshot.
async fn sql_client(p: &ConnectParams) -> Result<tokio_postgres::Client> {
    let mut c = tokio_postgres::Config::new();
    c.host(&p.host).port(p.port).user(&p.user).dbname(&p.database).options(SESSION_OPTIONS);
    c.application_name("eddy-cdc").connect_timeout(Duration::from_secs(10));
    if !p.password.is_empty() {
        c.password(&p.password);
    }
    let (client, connection) = c.connect(tokio_postgres::NoTls).await.map_err(|e| sql_error(p, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres-cdc catalog connection closed");
        }
    });
    Ok(client)
}

/// Checks at `CREATE` time everything that would otherwise fail later: connection and
/// credentials, `wal_level`, the REPLICATION privilege, the table, its key or replica
/// identity, the declared columns and their types, and SELECT permission; creates the
/// publication (or adds the table to it).
///
/// # Errors
/// Each names the cause and the fix.
pub async fn validate(config: &PgCdcConfig, declared: &Schema) -> Result<()> {
    let p = &config.params;
    let client = sql_client(p).await?;
    let q = |e| sql_error(p, e);
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await.map_err(q)?.get(0);
    if wal_level != "logical" {
        return Err(upstream(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "upstream Postgres has wal_level = {wal_level}; CDC needs logical decoding: run ALTER SYSTEM SET wal_level = logical and restart Postgres"
            ),
        ));
    }
    let can_replicate: bool = client
        .query_one("SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map_err(q)?
        .get(0);
    if !can_replicate {
        return Err(upstream(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "user \"{}\" may not use replication upstream; grant it with ALTER ROLE {} WITH REPLICATION",
                p.user,
                quote_ident(&p.user)
            ),
        ));
    }
    let Some(table) = &config.table else { return Ok(()) };
    let rows = client
        .query(
            "SELECT c.oid, c.relreplident::text, has_table_privilege(c.oid, 'SELECT'),
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&config.schema, table],
        )
        .await
        .map_err(q)?;
    let Some(row) = rows.first() else {
        return Err(upstream(
            SqlState::UndefinedTable,
            format!(
                "table {}.{table} does not exist in upstream database \"{}\"; check table.name (schema.table)",
                config.schema, p.database
            ),
        ));
    };
    let oid: u32 = row.get(0);
    let identity: String = row.get(1);
    let can_select: bool = row.get(2);
    let has_primary_key: bool = row.get(3);
    let qualified = config.qualified_table();
    if !(identity == "f" || identity == "i" || (identity == "d" && has_primary_key)) {
        return Err(upstream(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "upstream table {} has no primary key and REPLICA IDENTITY is not FULL, so its updates and deletes cannot be followed; add a primary key or run ALTER TABLE {qualified} REPLICA IDENTITY FULL",
                config.upstream_table()
            ),
        ));
    }
    if !can_select {
        return Err(upstream(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "user \"{}\" cannot read upstream table {}; run GRANT SELECT ON {qualified} TO {}",
                p.user,
                config.upstream_table(),
                quote_ident(&p.user)
            ),
        ));
    }
    let columns = client
        .query(
            "SELECT attname::text, atttypid FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(q)?;
    let upstream_columns: Vec<(String, u32)> = columns.iter().map(|r| (r.get(0), r.get(1))).collect();
    for field in declared.fields() {
        let Some((_, type_oid)) = upstream_columns.iter().find(|(n, _)| n == field.name()) else {
            let names: Vec<&str> = upstream_columns.iter().map(|(n, _)| n.as_str()).collect();
            return Err(ConnectorError::Schema(format!(
                "upstream table {} has no column \"{}\"; it has: {}",
                config.upstream_table(),
                field.name(),
                names.join(", ")
            )));
        };
        if !compatible(*type_oid, field.data_type()) {
            return Err(ConnectorError::Schema(format!(
                "column \"{}\" of upstream table {} (type oid {type_oid}) cannot be read as {}; declare it as VARCHAR to receive its text",
                field.name(),
                config.upstream_table(),
                field.data_type()
            )));
        }
    }
    ensure_publication(&client, config).await
}

async fn ensure_publication(client: &tokio_postgres::Client, config: &PgCdcConfig) -> Result<()> {
    let p = &config.params;
    let table = config.table.as_deref().unwrap_or_default();
    let exists = client
        .query_opt("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&config.publication])
        .await
        .map_err(|e| sql_error(p, e))?;
    let publication = quote_ident(&config.publication);
    let qualified = config.qualified_table();
    let statement = match exists {
        Some(row) => {
            let all: bool = row.get(0);
            let listed = client
                .query_opt(
                    "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                    &[&config.publication, &config.schema, &table],
                )
                .await
                .map_err(|e| sql_error(p, e))?
                .is_some();
            if all || listed {
                return Ok(());
            }
            format!("ALTER PUBLICATION {publication} ADD TABLE {qualified}")
        }
        None => format!("CREATE PUBLICATION {publication} FOR TABLE {qualified}"),
    };
    client.batch_execute(&statement).await.map_err(|e| match e.as_db_error() {
        Some(db) if db.code().code() == "42501" => upstream(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "user \"{}\" may not publish upstream table {} ({}); run `{statement}` as the table's owner, or make \"{}\" its owner",
                p.user,
                config.upstream_table(),
                db.message(),
                p.user
            ),
        ),
        _ => sql_error(p, e),
    })
}

/// Releases what a dropped table held upstream. While other tables still read the slot, only
/// the table leaves the publication; the last one drops the slot (so Postgres stops retaining
/// WAL for it) and the publication it created.
///
/// # Errors
/// When upstream cannot be reached or refuses; the message says what to drop by hand.
pub async fn drop_upstream(config: &PgCdcConfig, slot_still_used: bool) -> Result<()> {
    if slot_still_used {
        if config.owns_publication && config.table.is_some() {
            let client = sql_client(&config.params).await?;
            let statement = format!(
                "ALTER PUBLICATION {} DROP TABLE {}",
                quote_ident(&config.publication),
                config.qualified_table()
            );
            if let Err(e) = client.batch_execute(&statement).await {
                tracing::info!(error = %e, %statement, "the table stays in the shared publication");
            }
        }
        return Ok(());
    }
    let client = sql_client(&config.params).await.map_err(|e| ConnectorError::Upstream {
        state: SqlState::ObjectNotInPrerequisiteState,
        message: format!("{e}; drop the slot by hand: SELECT pg_drop_replication_slot('{}')", config.slot),
    })?;
    let mut last_error = None;
    for _ in 0..50 {
        let _ = client
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&config.slot],
            )
            .await;
        match client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&config.slot],
            )
            .await
        {
            Ok(_) => {
                last_error = None;
                break;
            }
            Err(e) => {
                last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if let Some(e) = last_error {
        return Err(ConnectorError::Upstream {
            state: SqlState::ObjectNotInPrerequisiteState,
            message: format!(
                "could not drop replication slot {}: {e}; drop it by hand: SELECT pg_drop_replication_slot('{}')",
                config.slot, config.slot
            ),
        });
    }
    if config.owns_publication {
        let _ = client.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&config.publication))).await;
    }
    Ok(())
}

/// Where a reader stands: before the end of its snapshot, or after the transaction that
/// committed at this LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Fresh,
    Streaming(u64),
}

impl Position {
    fn encode(self) -> Vec<u8> {
        match self {
            Position::Fresh => vec![0],
            Position::Streaming(lsn) => {
                let mut v = vec![1];
                v.extend_from_slice(&lsn.to_be_bytes());
                v
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        match bytes {
            [0] => Ok(Position::Fresh),
            [1, rest @ ..] if rest.len() == 8 => {
                let mut lsn = [0u8; 8];
                lsn.copy_from_slice(rest);
                Ok(Position::Streaming(u64::from_be_bytes(lsn)))
            }
            _ => Err(ConnectorError::InvalidOption(format!("corrupt postgres-cdc position ({} bytes)", bytes.len()))),
        }
    }
}

/// What the snapshot task and the slot's stream hand the reader.
pub(super) enum Event {
    /// Snapshot rows, or part of a large transaction (no new position).
    Rows(ChangeBatch),
    SnapshotDone(u64),
    /// The end of a transaction: its remaining rows (if any) and commit end LSN.
    Committed(Option<ChangeBatch>, u64),
    /// The table stops: what a retry cannot fix.
    Failed(String),
}

pub struct PgCdcReader {
    config: Arc<PgCdcConfig>,
    declared: SchemaRef,
    stats: Arc<SourceStats>,
    position: Position,
    events: mpsc::Receiver<Event>,
    /// The sending side, until the snapshot task takes it.
    sender: Option<mpsc::Sender<Event>>,
    pending: Option<Event>,
    membership: Arc<Membership>,
    snapshot_task: Option<tokio::task::JoinHandle<()>>,
    started: bool,
    stopped: bool,
    progress: Arc<Mutex<CdcProgress>>,
}

impl PgCdcReader {
    /// # Errors
    /// A shared source (no table), or a corrupt position.
    pub fn new(
        config: PgCdcConfig,
        declared: SchemaRef,
        position: Option<&[u8]>,
        stats: Arc<SourceStats>,
    ) -> Result<Self> {
        let Some(table) = config.table.clone() else {
            return Err(ConnectorError::InvalidOption(
                "a postgres-cdc source is read through tables: CREATE TABLE t (...) FROM source TABLE 'schema.table'"
                    .into(),
            ));
        };
        let position = match position {
            Some(p) => Position::decode(p)?,
            None => Position::Fresh,
        };
        let streaming_from = match position {
            Position::Streaming(lsn) => Some(lsn),
            Position::Fresh => None,
        };
        let progress = progress::register(&config.slot, &config.upstream_table());
        progress.lock().confirmed_lsn = streaming_from.unwrap_or(0);
        let (sender, events) = mpsc::channel(16);
        // Joining now, before any checkpoint can be taken, keeps the slot from being
        // acknowledged past this table's position by the other tables of the source.
        let membership = Arc::new(pg_slot::join(
            &config.params,
            &config.slot,
            &config.publication,
            MemberSpec {
                schema: config.schema.clone(),
                table,
                declared: declared.clone(),
                events: sender.clone(),
                stats: stats.clone(),
                progress: progress.clone(),
            },
            streaming_from,
        ));
        Ok(Self {
            config: Arc::new(config),
            declared,
            stats,
            position,
            events,
            sender: Some(sender),
            pending: None,
            membership,
            snapshot_task: None,
            started: false,
            stopped: false,
            progress,
        })
    }

    fn start(&mut self) {
        self.started = true;
        let sender = self.sender.take();
        match (self.position, sender) {
            (Position::Fresh, Some(events)) => {
                let task = SnapshotTask {
                    config: self.config.clone(),
                    declared: self.declared.clone(),
                    events,
                    stats: self.stats.clone(),
                    progress: self.progress.clone(),
                    membership: Arc::downgrade(&self.membership),
                };
                self.snapshot_task = Some(tokio::spawn(task.run()));
            }
            _ => self.membership.ensure_running(),
        }
    }

    fn keeps_columns(batch: &ChangeBatch) -> bool {
        batch.data().schema().metadata().contains_key(super::KEEP_COLUMNS_METADATA)
    }
}

impl Drop for PgCdcReader {
    fn drop(&mut self) {
        if let Some(w) = self.snapshot_task.take() {
            w.abort();
        }
        progress::unregister(&self.progress);
    }
}

#[async_trait]
impl SourceReader for PgCdcReader {
    async fn next_chunk(&mut self) -> Result<Option<ChangeBatch>> {
        if !self.started {
            self.start();
        }
        loop {
            if self.stopped {
                std::future::pending::<()>().await;
            }
            let event = match self.pending.take() {
                Some(e) => e,
                None => match self.events.recv().await {
                    Some(e) => e,
                    None => Event::Failed("the CDC task ended".into()),
                },
            };
            let mut out: Vec<ChangeBatch> = Vec::new();
            let mut rows = 0;
            let mut event = Some(event);
            while let Some(e) = event.take() {
                // A batch whose columns the table fills from its current row travels alone:
                // its metadata would not survive being concatenated.
                let alone = match &e {
                    Event::Rows(b) | Event::Committed(Some(b), _) => Self::keeps_columns(b),
                    _ => false,
                };
                if alone && !out.is_empty() {
                    self.pending = Some(e);
                    break;
                }
                match e {
                    Event::SnapshotDone(lsn) => self.position = Position::Streaming(lsn),
                    Event::Failed(message) => {
                        tracing::error!(table = %self.config.upstream_table(), %message, "postgres-cdc table stopped");
                        self.stats.bad_record(message);
                        self.stopped = true;
                        break;
                    }
                    Event::Rows(batch) => {
                        rows += batch.num_rows();
                        out.push(batch);
                    }
                    Event::Committed(batch, lsn) => {
                        self.position = Position::Streaming(lsn);
                        if let Some(batch) = batch {
                            rows += batch.num_rows();
                            out.push(batch);
                        }
                    }
                }
                if alone || rows >= CHUNK_ROWS {
                    break;
                }
                event = self.events.try_recv().ok();
            }
            match out.len() {
                0 => continue,
                1 => return Ok(out.pop()),
                _ => {
                    let schema = out[0].schema();
                    return Ok(Some(ChangeBatch::concat(&schema, &out)?));
                }
            }
        }
    }

    fn position(&self) -> Vec<u8> {
        self.position.encode()
    }

    fn checkpoint_committed(&mut self, position: &[u8]) {
        if let Ok(Position::Streaming(lsn)) = Position::decode(position) {
            self.membership.durable(lsn);
        }
    }
}

/// A failure of one session with upstream.
pub(super) enum SessionError {
    /// Reconnect and go on.
    Retry(String),
    /// Stop the table (or every table of the slot).
    Fatal(String),
    /// The reader is gone.
    Closed,
}

impl From<WireError> for SessionError {
    fn from(e: WireError) -> Self {
        if e.is_permanent() { SessionError::Fatal(e.to_string()) } else { SessionError::Retry(e.to_string()) }
    }
}

/// Names of temporary snapshot slots, unique within the process.
static SNAPSHOT_SLOTS: AtomicU64 = AtomicU64::new(0);

/// Copies a new table's rows as of a consistent point, then has the slot's stream feed it
/// from that point.
struct SnapshotTask {
    config: Arc<PgCdcConfig>,
    declared: SchemaRef,
    events: mpsc::Sender<Event>,
    stats: Arc<SourceStats>,
    progress: Arc<Mutex<CdcProgress>>,
    membership: Weak<Membership>,
}

impl SnapshotTask {
    async fn run(self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.snapshot().await {
                Ok(consistent_point) => {
                    if self.events.send(Event::SnapshotDone(consistent_point)).await.is_err() {
                        return;
                    }
                    if let Some(membership) = self.membership.upgrade() {
                        membership.start_streaming(consistent_point);
                    }
                    return;
                }
                Err(SessionError::Closed) => return,
                Err(SessionError::Fatal(message)) => {
                    {
                        let mut p = self.progress.lock();
                        p.phase = "stopped".into();
                        p.healthy = false;
                        p.last_error = Some(message.clone());
                    }
                    if let Some(membership) = self.membership.upgrade() {
                        membership.stop();
                    }
                    let _ = self.events.send(Event::Failed(message)).await;
                    return;
                }
                Err(SessionError::Retry(message)) => {
                    tracing::warn!(table = %self.config.upstream_table(), %message, "postgres-cdc snapshot failed; retrying");
                    {
                        let mut p = self.progress.lock();
                        p.phase = "reconnecting".into();
                        p.last_error = Some(message);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn send(&self, event: Event) -> std::result::Result<(), SessionError> {
        self.events.send(event).await.map_err(|_| SessionError::Closed)
    }

    /// Makes sure the source's slot exists, then copies the table in the snapshot exported by
    /// a temporary slot created after it: the shared slot has every change after the copy.
    /// Returns the temporary slot's consistent point.
    async fn snapshot(&self) -> std::result::Result<u64, SessionError> {
        let slot = &self.config.slot;
        let mut conn = ReplicationConnection::connect(&self.config.params).await?;
        let existing = conn
            .simple_query(&format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = {}", quote_literal(slot)))
            .await?;
        if existing.is_empty() {
            match conn
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing')",
                    quote_ident(slot)
                ))
                .await
            {
                Ok(_) => tracing::info!(%slot, "postgres-cdc replication slot created"),
                // Another table of the source created it meanwhile.
                Err(WireError::Server { code, .. }) if code == "42710" => {}
                Err(e) => return Err(e.into()),
            }
        }
        let temporary = format!(
            "{}_snap_{}_{}",
            &slot[..slot.len().min(40)],
            std::process::id(),
            SNAPSHOT_SLOTS.fetch_add(1, Ordering::Relaxed)
        );
        let created = conn
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')",
                quote_ident(&temporary)
            ))
            .await?;
        let row =
            created.first().ok_or_else(|| SessionError::Retry("CREATE_REPLICATION_SLOT returned nothing".into()))?;
        let consistent_point = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|l| super::pg_values::parse_lsn(&l))
            .ok_or_else(|| SessionError::Retry("CREATE_REPLICATION_SLOT returned no consistent point".into()))?;
        let snapshot_name = row
            .get(2)
            .cloned()
            .flatten()
            .ok_or_else(|| SessionError::Retry("CREATE_REPLICATION_SLOT exported no snapshot".into()))?;

        let client = sql_client(&self.config.params).await?;
        let retry = |e: tokio_postgres::Error| SessionError::Retry(format!("snapshot read failed: {e}"));
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(&snapshot_name)
            ))
            .await
            .map_err(retry)?;
        let qualified = self.config.qualified_table();
        let estimate = client
            .query_one(
                &format!("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = '{qualified}'::regclass"),
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        {
            let mut p = self.progress.lock();
            p.phase = "snapshot".into();
            p.snapshot_rows_copied = 0;
            p.snapshot_rows_estimated = estimate.max(0) as u64;
        }
        let columns: Vec<String> = self.declared.fields().iter().map(|f| quote_ident(f.name())).collect();
        client
            .batch_execute(&format!(
                "DECLARE eddy_snapshot NO SCROLL CURSOR FOR SELECT {} FROM {qualified}",
                columns.join(", ")
            ))
            .await
            .map_err(retry)?;
        let table = self.config.upstream_table();
        let mut copied = 0u64;
        loop {
            let messages =
                client.simple_query(&format!("FETCH {CHUNK_ROWS} FROM eddy_snapshot")).await.map_err(retry)?;
            let mut builder = RowsBuilder::new(self.declared.clone());
            for m in &messages {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                    let values = (0..self.declared.fields().len()).map(|i| row.get(i).map(str::as_bytes));
                    builder.push(values, 1, consistent_point);
                }
            }
            let n = builder.len();
            if n == 0 {
                break;
            }
            copied += n as u64;
            if let Some(batch) = builder.finish(&table, &self.stats).map_err(|e| SessionError::Retry(e.to_string()))? {
                self.send(Event::Rows(batch)).await?;
            }
            let mut p = self.progress.lock();
            p.snapshot_rows_copied = copied;
            p.snapshot_rows_estimated = p.snapshot_rows_estimated.max(copied);
        }
        client.batch_execute("COMMIT").await.map_err(retry)?;
        // The temporary slot goes with its connection.
        drop(conn);
        self.progress.lock().phase = "streaming".into();
        tracing::info!(%table, rows = copied, lsn = %format_lsn(consistent_point), "postgres-cdc snapshot copied");
        Ok(consistent_point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_positions() {
        let options: HashMap<String, String> = [
            ("connector", "postgres-cdc"),
            ("username", "postgres"),
            ("database.name", "shop"),
            ("table.name", "public.Orders"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = PgCdcConfig::parse(&options).expect("config");
        assert_eq!(c.slot, "eddy_shop_public_orders");
        assert_eq!(c.publication, "eddy_shop_public_orders_pub");
        assert_eq!(c.table.as_deref(), Some("Orders"));
        let mut bad = options.clone();
        bad.insert("slot.name".into(), "Bad-Name".into());
        assert!(PgCdcConfig::parse(&bad).is_err());
        bad.insert("bogus".into(), "1".into());
        assert!(PgCdcConfig::parse(&bad).expect_err("unknown option").to_string().contains("valid options"));
        for p in [Position::Fresh, Position::Streaming(0x16_B374_D848)] {
            assert_eq!(Position::decode(&p.encode()).expect("decode"), p);
        }
        assert!(Position::decode(&[1, 2]).is_err());
    }
}
