//! The `mysql-cdc` connector: one upstream MySQL/MariaDB table, snapshot then binlog.
//!
//! A background task owns the connections and sends decoded changes over a channel, so
//! [`SourceReader::next_chunk`] only waits on that channel and is cancel-safe. The task
//! - on a fresh start, opens a consistent-snapshot transaction and notes the binlog position
//!   that matches it (MariaDB: `binlog_snapshot_file/position`; MySQL: under a brief
//!   `FLUSH TABLES WITH READ LOCK`), reads the table in that transaction row by row in chunks
//!   (progress in `eddy_catalog.cdc_progress`), then streams the binlog from that position, so
//!   no change is missed or seen twice;
//! - keeps as its position the binlog file and offset after the last transaction handed out
//!   (plus, inside a large transaction, how many of its rows were handed out already), and
//!   resumes exactly there after a reconnect or a restart from a checkpoint;
//! - stops the table, with the error in `cdc_progress`, on what a retry cannot fix (binlog
//!   purged, table dropped or truncated, incompatible column change).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use eddy_common::{ChangeBatch, SqlState};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::binlog::{self, Event as BinlogEvent, RowsKind, TableMap, Value};
use super::my_values::{ColumnInfo, compatible, render, render_text};
use super::my_wire::{ConnectParams, Connection, WireError, quote_ident, quote_literal};
use super::pg_values::RowsBuilder;
use super::progress::{self, CdcProgress};
use crate::error::{ConnectorError, Result};
use crate::source::{SourceReader, SourceStats};

/// Options of `mysql-cdc`.
pub const OPTIONS: &[&str] =
    &["connector", "hostname", "port", "username", "password", "database.name", "table.name", "server.id"];

/// Rows per batch handed to the table (snapshot chunks and coalesced transactions).
const CHUNK_ROWS: usize = 8192;

/// With a heartbeat every second, this much silence means the connection is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed `mysql-cdc` configuration.
#[derive(Debug, Clone)]
pub struct MyCdcConfig {
    pub params: ConnectParams,
    pub database: String,
    /// `None` for a shared source that tables name with `FROM source TABLE 'db.table'`.
    pub table: Option<String>,
    /// The replica id this reader registers with; unique among the server's replicas.
    pub server_id: u32,
}

fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811C_9DC5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

impl MyCdcConfig {
    /// # Errors
    /// Unknown or missing options, a bad port or server id.
    pub fn parse(options: &HashMap<String, String>) -> Result<Self> {
        for key in options.keys() {
            if !OPTIONS.contains(&key.as_str()) {
                return Err(ConnectorError::InvalidOption(format!(
                    "unknown option \"{key}\" for connector mysql-cdc; valid options: {}",
                    OPTIONS.join(", ")
                )));
            }
        }
        let get = |k: &str| options.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let host = get("hostname").unwrap_or_else(|| "127.0.0.1".into());
        let port = match get("port") {
            None => 3306,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| ConnectorError::InvalidOption(format!("port = '{p}' is not a TCP port")))?,
        };
        let user = get("username").ok_or_else(|| ConnectorError::InvalidOption("mysql-cdc needs username".into()))?;
        let password = options.get("password").cloned().unwrap_or_default();
        let mut database = get("database.name");
        let table = match get("table.name") {
            None => None,
            Some(t) => match t.split_once('.') {
                Some((d, t)) => {
                    database = Some(d.to_string());
                    Some(t.to_string())
                }
                None => Some(t),
            },
        };
        let database = database.ok_or_else(|| {
            ConnectorError::InvalidOption("mysql-cdc needs database.name (or table.name = 'database.table')".into())
        })?;
        let server_id = match get("server.id") {
            Some(s) => match s.parse::<u32>() {
                Ok(id) if id > 0 => id,
                _ => {
                    return Err(ConnectorError::InvalidOption(format!(
                        "server.id = '{s}' must be a replica id between 1 and 4294967295"
                    )));
                }
            },
            // Stable for the table, away from the small ids servers usually have.
            None => 100_000 + fnv1a(&format!("{database}.{}", table.as_deref().unwrap_or(""))) % 1_000_000_000,
        };
        Ok(Self { params: ConnectParams { host, port, user, password }, database, table, server_id })
    }

    /// The options of a table read `FROM` a shared source: the source's connection, the
    /// table's name, and a replica id of its own derived from the source's (two binlog
    /// readers with one id would end each other's streams).
    pub fn table_options(source: &HashMap<String, String>, table: &str) -> HashMap<String, String> {
        let mut options = source.clone();
        options.insert("table.name".into(), table.to_string());
        if let Some(base) = source.get("server.id").and_then(|s| s.trim().parse::<u32>().ok()) {
            let id = base.wrapping_add(1 + fnv1a(table) % 1_000_000).max(1);
            options.insert("server.id".into(), id.to_string());
        }
        options
    }

    pub fn upstream_table(&self) -> String {
        format!("{}.{}", self.database, self.table.as_deref().unwrap_or("*"))
    }

    fn qualified_table(&self) -> String {
        format!("{}.{}", quote_ident(&self.database), quote_ident(self.table.as_deref().unwrap_or_default()))
    }

    fn progress_key(&self) -> String {
        format!("mysql:{}:{}:{}", self.params.host, self.params.port, self.server_id)
    }
}

fn upstream(state: SqlState, message: String) -> ConnectorError {
    ConnectorError::Upstream { state, message }
}

/// An error of the upstream server as a CREATE-time error naming cause and fix.
fn wire_error(p: &ConnectParams, e: WireError) -> ConnectorError {
    match &e {
        WireError::Server { code: 1045, message, .. } => upstream(
            SqlState::InvalidPassword,
            format!(
                "MySQL at {}:{} refused user \"{}\": {message}; check the username and password options",
                p.host, p.port, p.user
            ),
        ),
        WireError::Auth(m) => upstream(SqlState::InvalidPassword, m.clone()),
        WireError::Connect { .. } => upstream(SqlState::ObjectNotInPrerequisiteState, e.to_string()),
        _ => upstream(SqlState::ObjectNotInPrerequisiteState, format!("upstream MySQL: {e}")),
    }
}

/// A connection for catalog checks and the snapshot, with UTC session time.
async fn sql_connection(p: &ConnectParams) -> std::result::Result<Connection, WireError> {
    let mut conn = Connection::connect(p).await?;
    conn.execute("SET time_zone = '+00:00', NAMES utf8mb4").await?;
    Ok(conn)
}

/// The upstream table's columns, in table order.
async fn table_columns(
    conn: &mut Connection,
    database: &str,
    table: &str,
) -> std::result::Result<Vec<ColumnInfo>, WireError> {
    let rows = conn
        .query(&format!(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COLUMN_KEY FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
            quote_literal(database),
            quote_literal(table)
        ))
        .await?;
    let text = |v: &Option<Vec<u8>>| v.as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
    Ok(rows
        .iter()
        .filter(|r| r.len() >= 4)
        .map(|r| ColumnInfo::new(&text(&r[0]), &text(&r[1]), &text(&r[2]), &text(&r[3])))
        .collect())
}

/// For each declared column, its index among the upstream columns.
fn map_columns(config: &MyCdcConfig, declared: &Schema, upstream_columns: &[ColumnInfo]) -> Result<Vec<usize>> {
    declared
        .fields()
        .iter()
        .map(|field| {
            let Some(i) = upstream_columns.iter().position(|c| c.name == *field.name()) else {
                let names: Vec<&str> = upstream_columns.iter().map(|c| c.name.as_str()).collect();
                return Err(ConnectorError::Schema(format!(
                    "upstream table {} has no column \"{}\"; it has: {}",
                    config.upstream_table(),
                    field.name(),
                    names.join(", ")
                )));
            };
            let column = &upstream_columns[i];
            if !compatible(&column.data_type, field.data_type()) {
                return Err(ConnectorError::Schema(format!(
                    "column \"{}\" of upstream table {} ({}) cannot be read as {}; declare it as VARCHAR to receive its text",
                    field.name(),
                    config.upstream_table(),
                    column.data_type,
                    field.data_type()
                )));
            }
            Ok(i)
        })
        .collect()
}

/// Checks at `CREATE` time what would otherwise fail later: connection and credentials, the
/// binlog (on, ROW format, full row images), replication privileges, the table, its primary
/// key, the declared columns and their types, and SELECT permission.
///
/// # Errors
/// Each names the cause and the fix.
pub async fn validate(config: &MyCdcConfig, declared: &Schema) -> Result<()> {
    let p = &config.params;
    let q = |e| wire_error(p, e);
    let mut conn = sql_connection(p).await.map_err(q)?;
    let settings = conn
        .query("SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@server_id")
        .await
        .map_err(q)?
        .into_iter()
        .next()
        .unwrap_or_default();
    let setting = |i: usize| {
        settings.get(i).cloned().flatten().map(|v| String::from_utf8_lossy(&v).to_uppercase()).unwrap_or_default()
    };
    if setting(0) != "1" && setting(0) != "ON" {
        return Err(upstream(
            SqlState::ObjectNotInPrerequisiteState,
            "the upstream server has no binary log (log_bin is OFF); CDC reads the binlog: start it with log_bin = mysql-bin and binlog_format = ROW".into(),
        ));
    }
    if setting(1) != "ROW" {
        return Err(upstream(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "the upstream binlog_format is {}; CDC needs row events: SET GLOBAL binlog_format = 'ROW' (and binlog_format = ROW in the server's configuration)",
                setting(1)
            ),
        ));
    }
    if setting(2) != "FULL" {
        return Err(upstream(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "the upstream binlog_row_image is {}; CDC needs whole rows: SET GLOBAL binlog_row_image = 'FULL'",
                setting(2)
            ),
        ));
    }
    if setting(3) == config.server_id.to_string() {
        return Err(ConnectorError::InvalidOption(format!(
            "server.id = {} is the upstream server's own id; choose another replica id",
            config.server_id
        )));
    }
    if let Err(e) = conn.query("SHOW MASTER STATUS").await {
        return Err(upstream(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "user \"{}\" may not read the binlog upstream ({e}); grant it with GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO ...",
                p.user
            ),
        ));
    }
    let Some(table) = &config.table else { return Ok(()) };
    let exists = conn
        .query_value(&format!(
            "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            quote_literal(&config.database),
            quote_literal(table)
        ))
        .await
        .map_err(q)?;
    if exists.is_none() {
        return Err(upstream(
            SqlState::UndefinedTable,
            format!(
                "table {} does not exist upstream (or user \"{}\" cannot see it); check database.name and table.name (database.table)",
                config.upstream_table(),
                p.user
            ),
        ));
    }
    let columns = table_columns(&mut conn, &config.database, table).await.map_err(q)?;
    if !columns.iter().any(|c| c.primary_key) {
        return Err(upstream(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "upstream table {} has no primary key, so its updates and deletes cannot be followed by key; add one (ALTER TABLE {} ADD PRIMARY KEY (...))",
                config.upstream_table(),
                config.qualified_table()
            ),
        ));
    }
    map_columns(config, declared, &columns)?;
    if let Err(e) = conn.query(&format!("SELECT 1 FROM {} LIMIT 0", config.qualified_table())).await {
        return Err(upstream(
            SqlState::ObjectNotInPrerequisiteState,
            format!("user \"{}\" cannot read upstream table {}: {e}", p.user, config.upstream_table()),
        ));
    }
    Ok(())
}

/// A binlog position: after the transaction that ended at `offset` in `file`, or inside the
/// transaction that starts there with `skip` of its rows already handed out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BinlogPosition {
    pub file: String,
    pub offset: u64,
    pub skip: u64,
    /// The MariaDB GTID of the last transaction handed out, when known (informational).
    pub gtid: String,
}

impl std::fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.offset)?;
        if self.skip > 0 {
            write!(f, "+{} rows", self.skip)?;
        }
        Ok(())
    }
}

/// Where a reader stands: before the end of its snapshot, or at a binlog position.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    Fresh,
    Streaming(BinlogPosition),
}

/// Positions of this connector start with this byte, so a position of another connector is
/// never misread.
const POSITION_TAG: u8 = b'M';

impl Position {
    fn encode(&self) -> Vec<u8> {
        match self {
            Position::Fresh => vec![POSITION_TAG, 0],
            Position::Streaming(p) => {
                let mut v = vec![POSITION_TAG, 1];
                v.extend_from_slice(&p.offset.to_be_bytes());
                v.extend_from_slice(&p.skip.to_be_bytes());
                for s in [&p.file, &p.gtid] {
                    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
                    v.extend_from_slice(s.as_bytes());
                }
                v
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || ConnectorError::InvalidOption(format!("corrupt mysql-cdc position ({} bytes)", bytes.len()));
        match bytes {
            [POSITION_TAG, 0] => Ok(Position::Fresh),
            [POSITION_TAG, 1, rest @ ..] => {
                let mut r = super::my_wire::Reader::new(rest);
                let mut be = |n: usize| -> Result<u64> {
                    Ok(r.bytes(n).map_err(|_| corrupt())?.iter().fold(0u64, |a, &x| (a << 8) | x as u64))
                };
                let offset = be(8)?;
                let skip = be(8)?;
                let file_len = be(2)? as usize;
                let file = be_string(&mut be, file_len).ok_or_else(corrupt)?;
                let gtid_len = be(2)? as usize;
                let gtid = be_string(&mut be, gtid_len).ok_or_else(corrupt)?;
                Ok(Position::Streaming(BinlogPosition { file, offset, skip, gtid }))
            }
            _ => Err(corrupt()),
        }
    }
}

/// Reads `len` bytes one at a time through `be` as a UTF-8 string.
fn be_string(be: &mut impl FnMut(usize) -> Result<u64>, len: usize) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..len).map(|_| be(1).ok().map(|b| b as u8)).collect();
    String::from_utf8(bytes?).ok()
}

/// How bad-record messages print a row's position: the binlog offset.
fn format_offset(offset: u64) -> String {
    format!("binlog offset {offset}")
}

/// What the background task hands the reader: changes and the position after them.
enum Event {
    /// A chunk of the snapshot before its last: the position stays before the snapshot.
    Rows(ChangeBatch),
    Changes(Option<ChangeBatch>, BinlogPosition),
    /// The table stops: what a retry cannot fix.
    Failed(String),
}

pub struct MyCdcReader {
    config: Arc<MyCdcConfig>,
    declared: SchemaRef,
    stats: Arc<SourceStats>,
    position: Position,
    events: Option<mpsc::Receiver<Event>>,
    pending: Option<Event>,
    acked: watch::Sender<Option<BinlogPosition>>,
    worker: Option<tokio::task::JoinHandle<()>>,
    stopped: bool,
    progress: Arc<Mutex<CdcProgress>>,
}

impl MyCdcReader {
    /// # Errors
    /// A shared source (no table), or a corrupt position.
    pub fn new(
        config: MyCdcConfig,
        declared: SchemaRef,
        position: Option<&[u8]>,
        stats: Arc<SourceStats>,
    ) -> Result<Self> {
        if config.table.is_none() {
            return Err(ConnectorError::InvalidOption(
                "a mysql-cdc source is read through tables: CREATE TABLE t (...) FROM source TABLE 'database.table'"
                    .into(),
            ));
        }
        let position = match position {
            Some(p) => Position::decode(p)?,
            None => Position::Fresh,
        };
        let progress = progress::register(&config.progress_key(), &config.upstream_table());
        {
            let mut p = progress.lock();
            p.slot = format!("server_id {}", config.server_id);
            if let Position::Streaming(pos) = &position {
                p.confirmed_text = Some(pos.to_string());
            }
        }
        Ok(Self {
            config: Arc::new(config),
            declared,
            stats,
            position,
            events: None,
            pending: None,
            acked: watch::channel(None).0,
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
            stats: self.stats.clone(),
            progress: self.progress.clone(),
            acked: self.acked.subscribe(),
            position: match &self.position {
                Position::Fresh => None,
                Position::Streaming(p) => Some(p.clone()),
            },
            columns: Vec::new(),
            mapping: Vec::new(),
            mariadb: false,
        };
        self.worker = Some(tokio::spawn(worker.run()));
        self.events = Some(rx);
    }
}

impl Drop for MyCdcReader {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.abort();
        }
        progress::unregister(&self.progress);
    }
}

#[async_trait]
impl SourceReader for MyCdcReader {
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
                match e {
                    Event::Failed(message) => {
                        tracing::error!(table = %self.config.upstream_table(), %message, "mysql-cdc table stopped");
                        self.stats.bad_record(message);
                        self.stopped = true;
                        break;
                    }
                    Event::Rows(batch) => {
                        rows += batch.num_rows();
                        out.push(batch);
                    }
                    Event::Changes(batch, position) => {
                        self.position = Position::Streaming(position);
                        if let Some(batch) = batch {
                            rows += batch.num_rows();
                            out.push(batch);
                        }
                    }
                }
                if rows >= CHUNK_ROWS {
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
        if let Ok(Position::Streaming(p)) = Position::decode(position) {
            self.acked.send_replace(Some(p));
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
        if e.code() == Some(1236) {
            return SessionError::Fatal(format!(
                "the upstream server can no longer send the binlog from the stored position ({e}); the binlog was probably purged, so changes since the last checkpoint are lost: drop and recreate the table, and keep binlogs longer (binlog_expire_logs_seconds)"
            ));
        }
        if e.is_permanent() { SessionError::Fatal(e.to_string()) } else { SessionError::Retry(e.to_string()) }
    }
}

impl From<ConnectorError> for SessionError {
    fn from(e: ConnectorError) -> Self {
        SessionError::Retry(e.to_string())
    }
}

struct Worker {
    config: Arc<MyCdcConfig>,
    declared: SchemaRef,
    events: mpsc::Sender<Event>,
    stats: Arc<SourceStats>,
    progress: Arc<Mutex<CdcProgress>>,
    acked: watch::Receiver<Option<BinlogPosition>>,
    /// After the last transaction handed out; `None` until the snapshot is done.
    position: Option<BinlogPosition>,
    /// The upstream table's columns, as last read.
    columns: Vec<ColumnInfo>,
    /// For each declared column, its index among `columns`.
    mapping: Vec<usize>,
    /// The upstream is MariaDB, whose table maps lay out signedness differently from MySQL's.
    mariadb: bool,
}

/// How the rows of one table map are read (see [`Worker::layout_for`]).
struct Layout {
    map: TableMap,
    columns: Vec<ColumnInfo>,
    /// For each declared column, its binlog column index.
    mapping: Vec<usize>,
    /// Binlog column indices of the primary key.
    keys: Vec<usize>,
    unsigned: Vec<bool>,
}

/// What the stream is in the middle of.
struct Transaction {
    /// Where it started (the position before it).
    start: BinlogPosition,
    /// Row changes of our table seen so far in it (an update counts once).
    rows_seen: u64,
    /// Of those, how many were handed out before a reconnect or restart.
    skip: u64,
    gtid: Option<String>,
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
                    tracing::warn!(table = %self.config.upstream_table(), %message, "mysql-cdc connection lost; reconnecting");
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

    fn table(&self) -> &str {
        self.config.table.as_deref().unwrap_or_default()
    }

    /// Reads the upstream columns and maps the declared ones onto them.
    async fn load_columns(&mut self, conn: &mut Connection) -> std::result::Result<(), SessionError> {
        let columns = table_columns(conn, &self.config.database, self.table()).await?;
        if columns.is_empty() {
            return Err(SessionError::Fatal(format!(
                "upstream table {} no longer exists; the table stopped: drop it here",
                self.config.upstream_table()
            )));
        }
        let mapping = map_columns(&self.config, &self.declared, &columns).map_err(|e| {
            SessionError::Fatal(format!("{e}; the table stopped to avoid wrong rows: drop it and create it again"))
        })?;
        self.columns = columns;
        self.mapping = mapping;
        Ok(())
    }

    async fn session(&mut self) -> std::result::Result<(), SessionError> {
        let mut conn = sql_connection(&self.config.params).await?;
        self.mariadb = conn.is_mariadb();
        self.load_columns(&mut conn).await?;
        let start = match self.position.clone() {
            Some(p) => p,
            None => {
                let p = self.snapshot(&mut conn).await?;
                self.position = Some(p.clone());
                p
            }
        };
        self.progress.lock().phase = "streaming".into();
        let checksum = conn.query_value("SELECT @@global.binlog_checksum").await?.unwrap_or_default();
        // A master sends checksummed events only to a replica that says it can check them,
        // and MariaDB sends its own events (GTIDs) only to a replica that says it knows them.
        conn.execute(&format!(
            "SET @master_binlog_checksum = {}, @mariadb_slave_capability = 4, @master_heartbeat_period = 1000000000",
            quote_literal(&checksum)
        ))
        .await?;
        conn.binlog_dump(&start.file, start.offset.min(u32::MAX as u64) as u32, self.config.server_id).await?;
        tracing::info!(table = %self.config.upstream_table(), position = %start, server_id = self.config.server_id, "mysql-cdc streaming the binlog");
        self.stream(&mut conn, start, checksum.eq_ignore_ascii_case("CRC32")).await
    }

    /// Copies the table in a consistent snapshot; returns the binlog position matching it.
    async fn snapshot(&mut self, conn: &mut Connection) -> std::result::Result<BinlogPosition, SessionError> {
        let position = if conn.is_mariadb() {
            conn.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?;
            let status = conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'").await?;
            let get = |name: &str| {
                status.iter().find_map(|r| match (r.first(), r.get(1)) {
                    (Some(Some(n)), Some(Some(v))) if n.eq_ignore_ascii_case(name.as_bytes()) => {
                        Some(String::from_utf8_lossy(v).into_owned())
                    }
                    _ => None,
                })
            };
            let file = get("binlog_snapshot_file").unwrap_or_default();
            let offset = get("binlog_snapshot_position").and_then(|p| p.parse().ok()).unwrap_or(0);
            BinlogPosition { file, offset, ..Default::default() }
        } else {
            // MySQL has no position tied to a snapshot: hold writes off while taking both.
            conn.execute("FLUSH TABLES WITH READ LOCK").await?;
            let taken = async {
                conn.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?;
                let rows = match conn.query("SHOW MASTER STATUS").await {
                    Ok(r) => r,
                    Err(_) => conn.query("SHOW BINARY LOG STATUS").await?,
                };
                Ok::<_, WireError>(rows)
            }
            .await;
            conn.execute("UNLOCK TABLES").await?;
            let rows = taken?;
            let row = rows.into_iter().next().unwrap_or_default();
            let text = |i: usize| row.get(i).cloned().flatten().map(|v| String::from_utf8_lossy(&v).into_owned());
            BinlogPosition {
                file: text(0).unwrap_or_default(),
                offset: text(1).and_then(|p| p.parse().ok()).unwrap_or(0),
                ..Default::default()
            }
        };
        if position.file.is_empty() || position.offset == 0 {
            return Err(SessionError::Fatal(
                "the upstream server reported no binlog position for the snapshot; is log_bin on?".into(),
            ));
        }
        let table = self.config.upstream_table();
        let estimate = conn
            .query_value(&format!(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
                quote_literal(&self.config.database),
                quote_literal(self.table())
            ))
            .await?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        {
            let mut p = self.progress.lock();
            p.phase = "snapshot".into();
            p.snapshot_rows_copied = 0;
            p.snapshot_rows_estimated = estimate;
        }
        let names: Vec<String> = self.mapping.iter().map(|&i| quote_ident(&self.columns[i].name)).collect();
        let columns = conn
            .query_start(&format!("SELECT {} FROM {}", names.join(", "), self.config.qualified_table()))
            .await?
            .unwrap_or_default();
        let kinds: Vec<u8> = columns.iter().map(|c| c.kind).collect();
        let mut builder = RowsBuilder::with_origin(self.declared.clone(), "mysql-cdc", format_offset);
        let mut copied = 0u64;
        loop {
            let row = conn.next_row().await?;
            let done = row.is_none();
            if let Some(row) = &row {
                let values: Vec<Option<Vec<u8>>> = self
                    .declared
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let kind = kinds.get(i).copied().unwrap_or(0);
                        render_text(row.get(i).and_then(|v| v.as_deref()), kind, f.data_type())
                    })
                    .collect();
                builder.push(values.iter().map(|v| v.as_deref()), 1, position.offset);
            }
            if builder.len() >= CHUNK_ROWS || done {
                copied += builder.len() as u64;
                let batch = builder.finish(&table, &self.stats)?;
                if done {
                    // The last chunk carries the position the stream starts from; until
                    // then a restart copies the table again.
                    self.send(Event::Changes(batch, position.clone())).await?;
                } else if let Some(batch) = batch {
                    self.send(Event::Rows(batch)).await?;
                }
                let mut p = self.progress.lock();
                p.snapshot_rows_copied = copied;
                p.snapshot_rows_estimated = p.snapshot_rows_estimated.max(copied);
            }
            if done {
                break;
            }
        }
        conn.execute("COMMIT").await?;
        tracing::info!(%table, rows = copied, position = %position, "mysql-cdc snapshot copied");
        Ok(position)
    }

    /// How the rows of a table map are read: per binlog column, what is known of it, and for
    /// each declared column its binlog index. With column names in the map
    /// (`binlog_row_metadata = FULL`) columns are matched by name, so events written before an
    /// added or dropped column still read right; without, by position against the upstream
    /// table as it is now (re-read when the column count changes).
    async fn layout_for(&mut self, map: &TableMap) -> std::result::Result<Layout, SessionError> {
        let stopped = |what: String| {
            SessionError::Fatal(format!(
                "{what}; the table stopped to avoid wrong rows: drop it and create it again with the new columns"
            ))
        };
        let upstream_table = self.config.upstream_table();
        let columns: Vec<ColumnInfo> = match &map.names {
            Some(names) => {
                if names.iter().any(|n| !self.columns.iter().any(|c| c.name == *n))
                    || self.declared.fields().iter().any(|f| !self.columns.iter().any(|c| c.name == *f.name()))
                {
                    let mut conn = sql_connection(&self.config.params).await?;
                    self.load_columns(&mut conn).await?;
                }
                names
                    .iter()
                    .map(|n| {
                        self.columns
                            .iter()
                            .find(|c| c.name == *n)
                            .cloned()
                            .unwrap_or_else(|| ColumnInfo::new(n, "", "", ""))
                    })
                    .collect()
            }
            None => {
                if map.types.len() != self.columns.len() {
                    let mut conn = sql_connection(&self.config.params).await?;
                    self.load_columns(&mut conn).await?;
                }
                if map.types.len() != self.columns.len() {
                    return Err(stopped(format!(
                        "upstream table {upstream_table} changed: the binlog has {} columns, the table now {}",
                        map.types.len(),
                        self.columns.len()
                    )));
                }
                self.columns.clone()
            }
        };
        let mut mapping = Vec::with_capacity(self.declared.fields().len());
        for field in self.declared.fields() {
            let Some(i) = columns.iter().position(|c| c.name == *field.name()) else {
                return Err(stopped(format!(
                    "upstream table {upstream_table} has no column \"{}\" any more",
                    field.name()
                )));
            };
            if !columns[i].data_type.is_empty() && !compatible(&columns[i].data_type, field.data_type()) {
                return Err(stopped(format!(
                    "column \"{}\" of upstream table {upstream_table} changed to {}, which cannot be read as {}",
                    field.name(),
                    columns[i].data_type,
                    field.data_type()
                )));
            }
            mapping.push(i);
        }
        let keys = columns.iter().enumerate().filter(|(_, c)| c.primary_key).map(|(i, _)| i).collect();
        let unsigned = match map.unsigned_columns(self.mariadb) {
            Some(u) => u,
            None => columns.iter().map(|c| c.unsigned).collect(),
        };
        Ok(Layout { map: map.clone(), columns, mapping, keys, unsigned })
    }

    /// Adds one row image to `builder` with `weight`; a value that cannot be represented marks
    /// the row bad (counted, skipped).
    fn push_row(&self, layout: &Layout, builder: &mut RowsBuilder, row: &[Value], weight: i64, offset: u64) {
        let mut why = None;
        let values: Vec<Option<Vec<u8>>> = layout
            .mapping
            .iter()
            .zip(self.declared.fields())
            .map(|(&i, field)| {
                match render(row.get(i).unwrap_or(&Value::Null), &layout.columns[i], field.data_type()) {
                    Ok(v) => v,
                    Err(e) => {
                        why.get_or_insert(e);
                        None
                    }
                }
            })
            .collect();
        builder.push(values.iter().map(|v| v.as_deref()), weight, offset);
        if let Some(why) = why {
            builder.mark_last_bad(why);
        }
    }

    async fn stream(
        &mut self,
        conn: &mut Connection,
        start: BinlogPosition,
        mut checksum: bool,
    ) -> std::result::Result<(), SessionError> {
        let table = self.config.upstream_table();
        let mut builder = RowsBuilder::with_origin(self.declared.clone(), "mysql-cdc", format_offset);
        let mut file = start.file.clone();
        let mut txn: Option<Transaction> = None;
        let mut pending_skip = start.skip;
        let mut ours: Option<Layout> = None;
        let mut last_idle_update = Instant::now();
        let mut last_gtid = start.gtid.clone();
        loop {
            // What the checkpoints made durable, for cdc_progress.
            if self.acked.has_changed().unwrap_or(false) {
                let acked = self.acked.borrow_and_update().clone();
                if let Some(a) = acked {
                    self.progress.lock().confirmed_text = Some(a.to_string());
                }
            }
            let raw = conn.next_event(IDLE_TIMEOUT).await?;
            let (header, event) = match binlog::parse(&raw, checksum) {
                Ok(e) => e,
                Err(e) => return Err(SessionError::Retry(format!("binlog in {file}: {e}"))),
            };
            if header.next_position > 0 && !matches!(event, BinlogEvent::Heartbeat) {
                self.progress.lock().server_text = Some(format!("{file}:{}", header.next_position));
            }
            let end = BinlogPosition {
                file: file.clone(),
                offset: header.next_position as u64,
                skip: 0,
                gtid: String::new(),
            };
            match event {
                BinlogEvent::FormatDescription { checksum: alg } => checksum = alg == 1,
                BinlogEvent::Rotate { file: next, position } => {
                    file = next;
                    if txn.is_none() {
                        let p =
                            BinlogPosition { file: file.clone(), offset: position, skip: 0, gtid: last_gtid.clone() };
                        if let Some(current) = &self.position
                            && (current.file != p.file || current.offset < p.offset)
                        {
                            self.position = Some(p);
                        }
                    }
                }
                BinlogEvent::Heartbeat => {
                    if let Some(p) = &self.position
                        && txn.is_none()
                        && last_idle_update.elapsed() > Duration::from_secs(1)
                    {
                        last_idle_update = Instant::now();
                        self.send(Event::Changes(None, p.clone())).await?;
                    }
                }
                BinlogEvent::Gtid { gtid, standalone } => {
                    let start = self.position.clone().unwrap_or_default();
                    if !standalone {
                        txn = Some(Transaction {
                            start,
                            rows_seen: 0,
                            skip: std::mem::take(&mut pending_skip),
                            gtid: Some(gtid),
                        });
                    } else {
                        last_gtid = gtid;
                    }
                }
                BinlogEvent::Query { sql, database } => {
                    let trimmed = sql.trim();
                    if trimmed.eq_ignore_ascii_case("BEGIN") {
                        if txn.is_none() {
                            let start = self.position.clone().unwrap_or_default();
                            txn = Some(Transaction {
                                start,
                                rows_seen: 0,
                                skip: std::mem::take(&mut pending_skip),
                                gtid: None,
                            });
                        }
                        continue;
                    }
                    if trimmed.eq_ignore_ascii_case("COMMIT") {
                        self.commit(&mut builder, txn.take(), &end, &mut last_gtid, &table).await?;
                        continue;
                    }
                    if let Some(message) = self.ddl_stops_us(trimmed, &database) {
                        return Err(SessionError::Fatal(message));
                    }
                    if txn.is_none() && header.next_position > 0 {
                        // A statement on its own (DDL): the position moves past it.
                        self.position = Some(BinlogPosition { gtid: last_gtid.clone(), ..end });
                        if mentions(trimmed, self.table()) {
                            let mut c = sql_connection(&self.config.params).await?;
                            self.load_columns(&mut c).await?;
                        }
                    }
                }
                BinlogEvent::TableMap(map) if map.database == self.config.database && map.table == self.table() => {
                    // The same map is sent before every row event: reuse its layout while
                    // everything but the table id matches (a changed length, precision or
                    // signedness needs a new layout as much as a changed type does).
                    let same = ours.as_ref().is_some_and(|l| TableMap { id: l.map.id, ..map.clone() } == l.map);
                    if same {
                        if let Some(layout) = ours.as_mut() {
                            layout.map.id = map.id;
                        }
                    } else {
                        ours = Some(self.layout_for(&map).await?);
                    }
                }
                BinlogEvent::CompressedRows { table_id } if ours.as_ref().is_some_and(|l| l.map.id == table_id) => {
                    return Err(SessionError::Fatal(format!(
                        "upstream table {table} is logged in compressed row events (log_bin_compress = ON), which mysql-cdc cannot read; the table stopped: turn log_bin_compress off, then drop and recreate the table"
                    )));
                }
                BinlogEvent::Rows { kind, table_id, body, v2 } => {
                    let Some(layout) = ours.as_ref().filter(|l| l.map.id == table_id) else { continue };
                    let rows = match binlog::decode_rows(kind, &body, v2, &layout.map, &layout.unsigned) {
                        Ok(r) => r,
                        Err(e) => {
                            self.progress.lock().healthy = false;
                            self.stats.bad_record(format!(
                                "mysql-cdc table {table}: row event at {file}:{} cannot be decoded: {e}",
                                header.next_position
                            ));
                            continue;
                        }
                    };
                    if !rows.full_image {
                        return Err(SessionError::Fatal(format!(
                            "upstream binlog for {table} does not carry whole rows (binlog_row_image is not FULL); the table stopped: SET GLOBAL binlog_row_image = 'FULL', then drop and recreate the table"
                        )));
                    }
                    let t = txn.get_or_insert_with(|| Transaction {
                        start: self.position.clone().unwrap_or_default(),
                        rows_seen: 0,
                        skip: std::mem::take(&mut pending_skip),
                        gtid: None,
                    });
                    let offset = header.next_position as u64;
                    for (before, after) in rows.rows {
                        t.rows_seen += 1;
                        if t.rows_seen <= t.skip {
                            continue;
                        }
                        match kind {
                            RowsKind::Write => self.push_row(layout, &mut builder, &after, 1, offset),
                            RowsKind::Delete => self.push_row(layout, &mut builder, &after, -1, offset),
                            RowsKind::Update => {
                                // A changed key is a delete of the old row and an insert.
                                if let Some(before) = before
                                    && layout.keys.iter().any(|&k| before.get(k) != after.get(k))
                                {
                                    self.push_row(layout, &mut builder, &before, -1, offset);
                                }
                                self.push_row(layout, &mut builder, &after, 1, offset);
                            }
                        }
                    }
                    if builder.len() >= CHUNK_ROWS
                        && let Some(batch) = builder.finish(&table, &self.stats)?
                    {
                        // Part of a large transaction: its start, and how many of its rows
                        // are out.
                        let at = BinlogPosition { skip: t.rows_seen, ..t.start.clone() };
                        self.send(Event::Changes(Some(batch), at)).await?;
                    }
                }
                BinlogEvent::Xid => {
                    self.commit(&mut builder, txn.take(), &end, &mut last_gtid, &table).await?;
                }
                _ => {}
            }
            if self.stats.bad_records() > 0 {
                self.progress.lock().healthy = false;
            }
        }
    }

    /// Ends a transaction at `end`: hands out its rows with the position after it. Transactions
    /// without rows of this table only move the position (handed out at most once a second).
    async fn commit(
        &mut self,
        builder: &mut RowsBuilder,
        txn: Option<Transaction>,
        end: &BinlogPosition,
        last_gtid: &mut String,
        table: &str,
    ) -> std::result::Result<(), SessionError> {
        if let Some(g) = txn.as_ref().and_then(|t| t.gtid.clone()) {
            *last_gtid = g;
        }
        if end.offset == 0 {
            return Ok(());
        }
        let position = BinlogPosition { gtid: last_gtid.clone(), ..end.clone() };
        self.position = Some(position.clone());
        let had_rows = txn.as_ref().is_some_and(|t| t.rows_seen > 0);
        let batch = builder.finish(table, &self.stats)?;
        if batch.is_some() || had_rows {
            self.send(Event::Changes(batch, position)).await?;
        } else if self.events.capacity() > 8 {
            // Keep the reader's position near the stream's so a restart replays little.
            self.send(Event::Changes(None, position)).await?;
        }
        Ok(())
    }

    /// The error that stops the table when `sql` (a statement in the binlog) drops, truncates
    /// or renames it.
    fn ddl_stops_us(&self, sql: &str, database: &str) -> Option<String> {
        let lower = sql.to_ascii_lowercase();
        let words: Vec<&str> = lower.split_whitespace().collect();
        let verb = match words.as_slice() {
            ["truncate", ..] => "truncated",
            ["drop", "table", ..] => "dropped",
            ["rename", "table", ..] => "renamed",
            ["alter", "table", ..] if lower.contains(" rename ") => "renamed",
            ["drop", "database" | "schema", ..] => "dropped with its database",
            _ => return None,
        };
        let table = self.table().to_ascii_lowercase();
        let db = self.config.database.to_ascii_lowercase();
        let hit = if verb == "dropped with its database" {
            mentions(&lower, &db)
        } else {
            mentions(&lower, &table) && (database.eq_ignore_ascii_case(&db) || mentions(&lower, &db))
        };
        hit.then(|| {
            format!(
                "upstream table {} was {verb} ({sql}); following that is not supported, so the table stopped: drop it and create it again",
                self.config.upstream_table()
            )
        })
    }
}

/// True when `name` appears in `sql` as a whole identifier (backticks allowed).
fn mentions(sql: &str, name: &str) -> bool {
    let sql = sql.to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    if name.is_empty() {
        return false;
    }
    let bytes = sql.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    let mut from = 0;
    while let Some(i) = sql[from..].find(&name) {
        let at = from + i;
        let before = at.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(at + name.len()).copied();
        if !before.is_some_and(ident) && !after.is_some_and(ident) {
            return true;
        }
        from = at + name.len();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_positions() {
        let options: HashMap<String, String> =
            [("connector", "mysql-cdc"), ("username", "root"), ("table.name", "shop.orders"), ("server.id", "5454")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let c = MyCdcConfig::parse(&options).expect("config");
        assert_eq!((c.database.as_str(), c.table.as_deref(), c.server_id), ("shop", Some("orders"), 5454));
        let mut bad = options.clone();
        bad.insert("server.id".into(), "0".into());
        assert!(MyCdcConfig::parse(&bad).is_err());
        bad.insert("bogus".into(), "1".into());
        assert!(MyCdcConfig::parse(&bad).expect_err("unknown option").to_string().contains("valid options"));
        let mut source = options.clone();
        source.remove("table.name");
        source.insert("database.name".into(), "shop".into());
        let a = MyCdcConfig::table_options(&source, "shop.a");
        let b = MyCdcConfig::table_options(&source, "shop.b");
        assert_ne!(a.get("server.id"), b.get("server.id"));
        for p in [
            Position::Fresh,
            Position::Streaming(BinlogPosition {
                file: "mysql-bin.000003".into(),
                offset: 1234,
                skip: 7,
                gtid: "0-1-99".into(),
            }),
        ] {
            assert_eq!(Position::decode(&p.encode()).expect("decode"), p);
        }
        assert!(Position::decode(&[1, 2]).is_err());
        assert!(mentions("alter table `shop`.`orders` add x int", "orders"));
        assert!(!mentions("truncate table orders_archive", "orders"));
    }
}
