//! The `postgres-cdc` connector: one upstream table, snapshot then pgoutput stream.
//!
//! A background task owns the connections and sends decoded changes over a channel, so
//! [`SourceReader::next_chunk`] only waits on that channel and is cancel-safe. The task
//! - on a fresh start, (re)creates the slot with an exported snapshot, reads the table in
//!   that snapshot through a cursor in chunks (progress in `eddy_catalog.cdc_progress`), then
//!   streams from the slot's consistent point, so no change is missed or seen twice;
//! - on resume, streams from the slot and skips transactions whose commit is at or before the
//!   stored position (delivery after a crash is at-least-once);
//! - reconnects after a dropped connection and stops the table, with the error in
//!   `cdc_progress`, on what a retry cannot fix (slot gone, incompatible schema change).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use async_trait::async_trait;
use eddy_common::{ChangeBatch, SqlState};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::pg_values::{RowsBuilder, compatible, format_lsn};
use super::pg_wire::{
    ConnectParams, ReplicationConnection, SESSION_OPTIONS, StreamMessage, WireError, quote_ident, quote_literal,
};
use super::pgoutput::{Datum, Message, OldKind, Relation, decode};
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
const CHUNK_ROWS: usize = 8192;

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
            None => {
                let t = table.clone().unwrap_or_default();
                sanitize(&format!("eddy_{database}_{schema}_{t}"))
            }
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

    /// The options of a table read `FROM` a shared source: the source's connection (and
    /// publication, when it names one; the table is added to it), the table's name, and a slot
    /// of its own named after the source's.
    pub fn table_options(source: &HashMap<String, String>, table: &str) -> HashMap<String, String> {
        let mut options = source.clone();
        options.insert("table.name".into(), table.to_string());
        let base = source.get("slot.name").cloned().unwrap_or_else(|| "eddy".into());
        options.insert("slot.name".into(), sanitize(&format!("{base}_{}", table.replace('.', "_"))));
        options
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

/// Drops what the table left upstream: its replication slot (so Postgres stops retaining
/// WAL for it) and the publication it created.
///
/// # Errors
/// When upstream cannot be reached or refuses; the message says what to drop by hand.
pub async fn drop_upstream(config: &PgCdcConfig) -> Result<()> {
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

/// What the background task hands the reader.
enum Event {
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
    events: Option<mpsc::Receiver<Event>>,
    pending: Option<Event>,
    ack: watch::Sender<u64>,
    worker: Option<tokio::task::JoinHandle<()>>,
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
        if config.table.is_none() {
            return Err(ConnectorError::InvalidOption(
                "a postgres-cdc source is read through tables: CREATE TABLE t (...) FROM source TABLE 'schema.table'"
                    .into(),
            ));
        }
        let position = match position {
            Some(p) => Position::decode(p)?,
            None => Position::Fresh,
        };
        let acked = match position {
            Position::Streaming(lsn) => lsn,
            Position::Fresh => 0,
        };
        let progress = progress::register(&config.slot, &config.upstream_table());
        progress.lock().confirmed_lsn = acked;
        Ok(Self {
            config: Arc::new(config),
            declared,
            stats,
            position,
            events: None,
            pending: None,
            ack: watch::channel(acked).0,
            worker: None,
            stopped: false,
            progress,
        })
    }

    fn start(&mut self) {
        let (tx, rx) = mpsc::channel(16);
        let worker = Worker {
            config: self.config.clone(),
            declared: self.declared.clone(),
            events: tx,
            acks: self.ack.subscribe(),
            stats: self.stats.clone(),
            progress: self.progress.clone(),
            last_emitted: match self.position {
                Position::Fresh => None,
                Position::Streaming(lsn) => Some(lsn),
            },
            relation: None,
            columns: Vec::new(),
        };
        self.worker = Some(tokio::spawn(worker.run()));
        self.events = Some(rx);
    }

    fn keeps_columns(batch: &ChangeBatch) -> bool {
        batch.data().schema().metadata().contains_key(super::KEEP_COLUMNS_METADATA)
    }
}

impl Drop for PgCdcReader {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.abort();
        }
        progress::unregister(&self.config.slot, &self.progress);
    }
}

#[async_trait]
impl SourceReader for PgCdcReader {
    async fn next_chunk(&mut self) -> Result<Option<ChangeBatch>> {
        if self.events.is_none() {
            self.start();
        }
        loop {
            if self.stopped {
                std::future::pending::<()>().await;
            }
            let event = match self.pending.take() {
                Some(e) => e,
                None => match self.events.as_mut() {
                    Some(rx) => match rx.recv().await {
                        Some(e) => e,
                        None => Event::Failed("the CDC task ended".into()),
                    },
                    None => Event::Failed("the CDC task did not start".into()),
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
                if let Some(rx) = self.events.as_mut() {
                    event = rx.try_recv().ok();
                }
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
            self.ack.send_if_modified(|acked| {
                let newer = lsn > *acked;
                if newer {
                    *acked = lsn;
                }
                newer
            });
        }
    }
}

/// A failure of one session with upstream.
enum SessionError {
    /// Reconnect and go on.
    Retry(String),
    /// Stop the table.
    Fatal(String),
    /// The reader is gone.
    Closed,
}

impl From<WireError> for SessionError {
    fn from(e: WireError) -> Self {
        if e.is_permanent() { SessionError::Fatal(e.to_string()) } else { SessionError::Retry(e.to_string()) }
    }
}

impl From<ConnectorError> for SessionError {
    fn from(e: ConnectorError) -> Self {
        SessionError::Retry(e.to_string())
    }
}

struct Worker {
    config: Arc<PgCdcConfig>,
    declared: SchemaRef,
    events: mpsc::Sender<Event>,
    acks: watch::Receiver<u64>,
    stats: Arc<SourceStats>,
    progress: Arc<Mutex<CdcProgress>>,
    /// Commit end LSN of the last transaction handed out; `None` until the snapshot is done.
    last_emitted: Option<u64>,
    /// The upstream relation id of our table, once announced.
    relation: Option<Relation>,
    /// For each declared column, its index among the relation's columns.
    columns: Vec<usize>,
}

impl Worker {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.session().await {
                Ok(()) | Err(SessionError::Closed) => return,
                Err(SessionError::Fatal(message)) => {
                    {
                        let mut p = self.progress.lock();
                        p.phase = "stopped".into();
                        p.healthy = false;
                        p.last_error = Some(message.clone());
                    }
                    let _ = self.events.send(Event::Failed(message)).await;
                    return;
                }
                Err(SessionError::Retry(message)) => {
                    tracing::warn!(slot = %self.config.slot, %message, "postgres-cdc connection lost; reconnecting");
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

    async fn session(&mut self) -> std::result::Result<(), SessionError> {
        let mut conn = ReplicationConnection::connect(&self.config.params).await?;
        if self.last_emitted.is_none() {
            let consistent_point = self.snapshot(&mut conn).await?;
            self.last_emitted = Some(consistent_point);
            self.send(Event::SnapshotDone(consistent_point)).await?;
        }
        self.progress.lock().phase = "streaming".into();
        if let Err(e) = conn.start_replication(&self.config.slot, 0, &self.config.publication).await {
            if let WireError::Server { code, .. } = &e
                && code == "42704"
            {
                return Err(SessionError::Fatal(format!(
                    "replication slot {} no longer exists upstream, so changes since the last checkpoint are lost; drop and recreate the table",
                    self.config.slot
                )));
            }
            return Err(e.into());
        }
        self.stream(&mut conn).await
    }

    /// Creates the slot with an exported snapshot and copies the table as of that snapshot.
    /// Returns the slot's consistent point.
    async fn snapshot(&mut self, conn: &mut ReplicationConnection) -> std::result::Result<u64, SessionError> {
        let slot = &self.config.slot;
        let existing = conn
            .simple_query(&format!(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = {}",
                quote_literal(slot)
            ))
            .await?;
        if let Some(row) = existing.first() {
            // A slot without a stored position has no baseline here: start it over.
            if let Some(Some(pid)) = row.first() {
                conn.simple_query(&format!("SELECT pg_terminate_backend({})", pid.parse::<i32>().unwrap_or(0))).await?;
            }
            conn.simple_query(&format!("DROP_REPLICATION_SLOT {} WAIT", quote_ident(slot))).await?;
        }
        let created = conn
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
                quote_ident(slot)
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
            if let Some(batch) = builder.finish(&table, &self.stats)? {
                self.send(Event::Rows(batch)).await?;
            }
            let mut p = self.progress.lock();
            p.snapshot_rows_copied = copied;
            p.snapshot_rows_estimated = p.snapshot_rows_estimated.max(copied);
        }
        client.batch_execute("COMMIT").await.map_err(retry)?;
        tracing::info!(%table, rows = copied, lsn = %format_lsn(consistent_point), "postgres-cdc snapshot copied");
        Ok(consistent_point)
    }

    /// Checks a Relation message of our table against the declared columns.
    fn on_relation(&mut self, relation: Relation) -> std::result::Result<(), SessionError> {
        let mut columns = Vec::with_capacity(self.declared.fields().len());
        for field in self.declared.fields() {
            let Some(i) = relation.columns.iter().position(|c| c.name == *field.name()) else {
                return Err(SessionError::Fatal(format!(
                    "upstream table {} no longer has column \"{}\" (dropped or renamed); the table stopped to avoid wrong rows: drop it and create it again with the new columns",
                    self.config.upstream_table(),
                    field.name()
                )));
            };
            let oid = relation.columns[i].type_oid;
            if !compatible(oid, field.data_type()) {
                return Err(SessionError::Fatal(format!(
                    "column \"{}\" of upstream table {} changed to type oid {oid}, which cannot be read as {}; the table stopped: drop it and create it again",
                    field.name(),
                    self.config.upstream_table(),
                    field.data_type()
                )));
            }
            columns.push(i);
        }
        if let Some(old) = &self.relation
            && old.columns.len() != relation.columns.len()
        {
            tracing::info!(table = %self.config.upstream_table(), "upstream columns changed compatibly; continuing");
        }
        self.columns = columns;
        self.relation = Some(relation);
        Ok(())
    }

    fn is_ours(&self, relation: u32) -> bool {
        self.relation.as_ref().is_some_and(|r| r.id == relation)
    }

    /// Adds a row to `builder` from a tuple; values missing from the tuple (NULL in a key-only
    /// old tuple) become placeholders in NOT NULL columns, which a delete by key never reads.
    fn push_tuple(&self, builder: &mut RowsBuilder, tuple: &[Datum], weight: i64, lsn: u64, key_only: bool) {
        let values = self.columns.iter().enumerate().map(|(declared, &i)| match tuple.get(i) {
            Some(Datum::Text(b)) => Some(b.as_ref()),
            _ if key_only && !self.declared.field(declared).is_nullable() => {
                placeholder(self.declared.field(declared).data_type())
            }
            _ => None,
        });
        builder.push(values, weight, lsn);
    }

    async fn stream(&mut self, conn: &mut ReplicationConnection) -> std::result::Result<(), SessionError> {
        let table = self.config.upstream_table();
        let mut status = tokio::time::interval(Duration::from_secs(1));
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut builder = RowsBuilder::new(self.declared.clone());
        let mut skipping = false;
        let mut in_transaction = false;
        let mut commit_lsn = 0;
        enum Wake {
            Message(std::result::Result<StreamMessage, WireError>),
            Status,
            Acked,
        }
        loop {
            let wake = tokio::select! {
                m = conn.next_message() => Wake::Message(m),
                _ = status.tick() => Wake::Status,
                Ok(()) = self.acks.changed() => Wake::Acked,
            };
            let message = match wake {
                Wake::Status | Wake::Acked => {
                    let acked = *self.acks.borrow_and_update();
                    self.progress.lock().confirmed_lsn = acked;
                    conn.send_status(acked, false).await?;
                    continue;
                }
                Wake::Message(m) => m?,
            };
            let (wal_start, data) = match message {
                StreamMessage::Keepalive { wal_end, reply } => {
                    self.progress.lock().server_lsn = wal_end;
                    // Between transactions, everything committed before `wal_end` has been
                    // sent: moving the position there lets the slot free WAL written by
                    // tables we do not follow (pgoutput sends nothing for them).
                    if !in_transaction && self.last_emitted.is_some_and(|done| done < wal_end) {
                        self.last_emitted = Some(wal_end);
                        self.send(Event::Committed(None, wal_end)).await?;
                    }
                    if reply {
                        let acked = *self.acks.borrow();
                        conn.send_status(acked, false).await?;
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
                    self.progress.lock().healthy = false;
                    self.stats.bad_record(format!("postgres-cdc table {table}: at LSN {}: {e}", format_lsn(wal_start)));
                    continue;
                }
            };
            match message {
                Message::Begin { final_lsn, .. } => {
                    in_transaction = true;
                    commit_lsn = final_lsn;
                    // Already handed out before a reconnect or crash: skip it.
                    skipping = self.last_emitted.is_some_and(|done| final_lsn < done);
                }
                Message::Relation(relation)
                    if relation.namespace == self.config.schema
                        && Some(relation.name.as_str()) == self.config.table.as_deref() =>
                {
                    self.on_relation(relation)?;
                }
                Message::Insert { relation, new } if !skipping && self.is_ours(relation) => {
                    self.push_tuple(&mut builder, &new, 1, commit_lsn, false);
                }
                Message::Update { relation, old, new } if !skipping && self.is_ours(relation) => {
                    self.on_update(&mut builder, old, new, commit_lsn).await?;
                }
                Message::Delete { relation, old: (kind, old) } if !skipping && self.is_ours(relation) => {
                    self.push_tuple(&mut builder, &old, -1, commit_lsn, kind == OldKind::Key);
                }
                Message::Truncate { relations } if !skipping && relations.iter().any(|r| self.is_ours(*r)) => {
                    return Err(SessionError::Fatal(format!(
                        "upstream table {table} was truncated; following TRUNCATE is not supported yet, so the table stopped: drop it and create it again"
                    )));
                }
                Message::Commit { end_lsn, .. } => {
                    in_transaction = false;
                    if skipping {
                        skipping = false;
                        continue;
                    }
                    let batch = builder.finish(&table, &self.stats)?;
                    self.last_emitted = Some(end_lsn);
                    if let Some(batch) = batch {
                        self.send(Event::Committed(Some(batch), end_lsn)).await?;
                    } else {
                        self.send(Event::Committed(None, end_lsn)).await?;
                    }
                    if self.stats.bad_records() > 0 {
                        self.progress.lock().healthy = false;
                    }
                }
                _ => {}
            }
            if builder.len() >= CHUNK_ROWS
                && let Some(batch) = builder.finish(&table, &self.stats)?
            {
                self.send(Event::Rows(batch)).await?;
            }
        }
    }

    async fn on_update(
        &mut self,
        builder: &mut RowsBuilder,
        old: Option<(OldKind, Vec<Datum>)>,
        mut new: Vec<Datum>,
        lsn: u64,
    ) -> std::result::Result<(), SessionError> {
        let table = self.config.upstream_table();
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
                self.push_tuple(builder, old, -1, lsn, *kind == OldKind::Key);
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
            self.push_tuple(builder, &new, 1, lsn, false);
            return Ok(());
        }
        // The table fills these columns from its current row: send the row on its own, after
        // what came before it.
        if let Some(batch) = builder.finish(&table, &self.stats)? {
            self.send(Event::Rows(batch)).await?;
        }
        let mut single = RowsBuilder::new(self.declared.clone());
        self.push_tuple(&mut single, &new, 1, lsn, true);
        if let Some(batch) = single.finish(&table, &self.stats)? {
            let (data, weights) = batch.into_parts();
            let mut metadata = data.schema().metadata().clone();
            let list: Vec<String> = keep.iter().map(|i| i.to_string()).collect();
            metadata.insert(super::KEEP_COLUMNS_METADATA.to_string(), list.join(","));
            let schema = Arc::new(data.schema().as_ref().clone().with_metadata(metadata));
            let data = RecordBatch::try_new(schema, data.columns().to_vec()).map_err(ConnectorError::from)?;
            let batch = ChangeBatch::try_new(data, weights).map_err(ConnectorError::from)?;
            self.send(Event::Rows(batch)).await?;
        }
        Ok(())
    }
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
