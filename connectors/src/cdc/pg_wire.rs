//! A logical replication connection to Postgres (`replication=database`).
//!
//! tokio-postgres cannot run `START_REPLICATION` (it has no CopyBoth mode), so this speaks
//! the few protocol messages replication needs itself: startup and authentication (trust,
//! cleartext, MD5, SCRAM-SHA-256 via `postgres-protocol`), simple queries (replication
//! commands and SQL), and the CopyBoth stream of `XLogData` / keepalive messages with our
//! standby status updates. TLS is not supported yet.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why talking to the walsender failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot reach Postgres at {0}")]
    Io(String, #[source] std::io::Error),
    /// An error the server sent: SQLSTATE and message.
    #[error("Postgres error {code}: {message}")]
    Server { code: String, message: String },
    #[error("unexpected replication protocol data: {0}")]
    Protocol(String),
}

impl WireError {
    /// Errors a retry cannot fix (bad credentials, missing objects, no permission).
    pub fn is_permanent(&self) -> bool {
        match self {
            WireError::Server { code, .. } => {
                code.starts_with("28") || code.starts_with("42") || code == "3D000" || code == "55000"
            }
            _ => false,
        }
    }
}

type Result<T> = std::result::Result<T, WireError>;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

/// What arrives on the replication stream.
#[derive(Debug)]
pub enum StreamMessage {
    /// A pgoutput message and the WAL position it starts at.
    XLogData { wal_start: u64, data: Bytes },
    /// The server's current WAL end; answer at once when `reply` is set.
    Keepalive { wal_end: u64, reply: bool },
    /// The server ended the stream.
    Done,
}

/// Session settings that make value text deterministic.
pub const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3 -c bytea_output=hex";

pub struct ReplicationConnection {
    stream: TcpStream,
    read: BytesMut,
    write: BytesMut,
}

impl ReplicationConnection {
    /// Connects and authenticates.
    ///
    /// # Errors
    /// Unreachable server, refused authentication, unknown database.
    pub async fn connect(params: &ConnectParams) -> Result<Self> {
        let address = format!("{}:{}", params.host, params.port);
        let stream = TcpStream::connect(&address).await.map_err(|e| WireError::Io(address.clone(), e))?;
        stream.set_nodelay(true).map_err(|e| WireError::Io(address.clone(), e))?;
        let mut conn = Self { stream, read: BytesMut::with_capacity(64 * 1024), write: BytesMut::new() };
        frontend::startup_message(
            [
                ("user", params.user.as_str()),
                ("database", params.database.as_str()),
                ("replication", "database"),
                ("application_name", "eddy-cdc"),
                ("options", SESSION_OPTIONS),
            ],
            &mut conn.write,
        )
        .map_err(|e| WireError::Protocol(e.to_string()))?;
        conn.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, mut body) = conn.read_message().await?;
            match tag {
                b'R' => {
                    let code = take_u32(&mut body)?;
                    match code {
                        0 => {}
                        3 => {
                            frontend::password_message(params.password.as_bytes(), &mut conn.write)
                                .map_err(|e| WireError::Protocol(e.to_string()))?;
                            conn.flush().await?;
                        }
                        5 => {
                            let salt: [u8; 4] = body
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| WireError::Protocol("short MD5 salt".into()))?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                params.user.as_bytes(),
                                params.password.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut conn.write)
                                .map_err(|e| WireError::Protocol(e.to_string()))?;
                            conn.flush().await?;
                        }
                        10 => {
                            let offers_scram = body.split(|b| *b == 0).any(|m| m == SCRAM_SHA_256.as_bytes());
                            if !offers_scram {
                                return Err(WireError::Protocol("the server offers no SCRAM-SHA-256".into()));
                            }
                            let s = ScramSha256::new(params.password.as_bytes(), ChannelBinding::unsupported());
                            frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut conn.write)
                                .map_err(|e| WireError::Protocol(e.to_string()))?;
                            conn.flush().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| WireError::Protocol("SASL out of order".into()))?;
                            s.update(&body).map_err(|e| WireError::Protocol(e.to_string()))?;
                            frontend::sasl_response(s.message(), &mut conn.write)
                                .map_err(|e| WireError::Protocol(e.to_string()))?;
                            conn.flush().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| WireError::Protocol("SASL out of order".into()))?;
                            s.finish(&body).map_err(|e| WireError::Protocol(e.to_string()))?;
                        }
                        other => {
                            return Err(WireError::Protocol(format!("unsupported authentication method {other}")));
                        }
                    }
                }
                b'E' => return Err(server_error(&body)),
                b'Z' => return Ok(conn),
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    /// Runs a simple query (SQL or a replication command) and returns its rows as text.
    ///
    /// # Errors
    /// The server's error, or a broken connection.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.write).map_err(|e| WireError::Protocol(e.to_string()))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, mut body) = self.read_message().await?;
            match tag {
                b'D' => {
                    if body.len() < 2 {
                        return Err(WireError::Protocol("short data row".into()));
                    }
                    let n = body.get_u16() as usize;
                    let mut row = Vec::with_capacity(n);
                    for _ in 0..n {
                        let len = take_u32(&mut body)? as i32;
                        if len < 0 {
                            row.push(None);
                        } else {
                            let len = len as usize;
                            if body.len() < len {
                                return Err(WireError::Protocol("short data row".into()));
                            }
                            row.push(Some(String::from_utf8_lossy(&body.split_to(len)).into_owned()));
                        }
                    }
                    rows.push(row);
                }
                b'E' => error = Some(server_error(&body)),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Sends `START_REPLICATION` and waits until the server enters CopyBoth mode.
    ///
    /// # Errors
    /// The server's error (unknown slot or publication, slot in use).
    pub async fn start_replication(&mut self, slot: &str, lsn: u64, publication: &str) -> Result<()> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
            quote_ident(slot),
            super::pg_values::format_lsn(lsn),
            quote_literal(&quote_ident(publication)),
        );
        frontend::query(&sql, &mut self.write).map_err(|e| WireError::Protocol(e.to_string()))?;
        self.flush().await?;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => return Err(server_error(&body)),
                _ => {}
            }
        }
    }

    /// The next message of the replication stream. Cancel-safe: bytes read are kept in the
    /// connection's buffer until a whole message is there.
    ///
    /// # Errors
    /// A broken connection or an error the server sent.
    pub async fn next_message(&mut self) -> Result<StreamMessage> {
        loop {
            let (tag, mut body) = self.read_message().await?;
            match tag {
                b'd' => {
                    if body.is_empty() {
                        return Err(WireError::Protocol("empty CopyData".into()));
                    }
                    match body.get_u8() {
                        b'w' => {
                            if body.len() < 24 {
                                return Err(WireError::Protocol("short XLogData".into()));
                            }
                            let wal_start = body.get_u64();
                            let _wal_end = body.get_u64();
                            let _sent_at = body.get_i64();
                            return Ok(StreamMessage::XLogData { wal_start, data: body });
                        }
                        b'k' => {
                            if body.len() < 17 {
                                return Err(WireError::Protocol("short keepalive".into()));
                            }
                            let wal_end = body.get_u64();
                            let _sent_at = body.get_i64();
                            let reply = body.get_u8() == 1;
                            return Ok(StreamMessage::Keepalive { wal_end, reply });
                        }
                        other => return Err(WireError::Protocol(format!("unknown CopyData kind {other}"))),
                    }
                }
                b'c' | b'C' => return Ok(StreamMessage::Done),
                b'E' => return Err(server_error(&body)),
                _ => {}
            }
        }
    }

    /// Sends a standby status update: everything up to `lsn` is durably applied here.
    ///
    /// # Errors
    /// A broken connection.
    pub async fn send_status(&mut self, lsn: u64, reply_requested: bool) -> Result<()> {
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(lsn);
        body.put_u64(lsn);
        body.put_u64(lsn);
        body.put_i64(postgres_epoch_micros());
        body.put_u8(u8::from(reply_requested));
        frontend::CopyData::new(body.freeze()).map_err(|e| WireError::Protocol(e.to_string()))?.write(&mut self.write);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<()> {
        let data = self.write.split();
        self.stream.write_all(&data).await.map_err(|e| WireError::Io("the replication connection".into(), e))
    }

    /// One backend message: its tag and body. Cancel-safe (see [`Self::next_message`]).
    async fn read_message(&mut self) -> Result<(u8, Bytes)> {
        loop {
            if self.read.len() >= 5 {
                let len = u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]) as usize;
                if len < 4 {
                    return Err(WireError::Protocol(format!("message length {len}")));
                }
                if self.read.len() > len {
                    let mut message = self.read.split_to(len + 1).freeze();
                    let tag = message.get_u8();
                    message.advance(4);
                    return Ok((tag, message));
                }
                self.read.reserve(len + 1 - self.read.len());
            }
            let n = self
                .stream
                .read_buf(&mut self.read)
                .await
                .map_err(|e| WireError::Io("the replication connection".into(), e))?;
            if n == 0 {
                return Err(WireError::Io(
                    "the replication connection".into(),
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed by the server"),
                ));
            }
        }
    }
}

fn take_u32(body: &mut Bytes) -> Result<u32> {
    if body.len() < 4 {
        return Err(WireError::Protocol("short message".into()));
    }
    Ok(body.get_u32())
}

fn server_error(body: &[u8]) -> WireError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        if let Some((&kind, value)) = field.split_first() {
            let value = String::from_utf8_lossy(value).into_owned();
            match kind {
                b'C' => code = value,
                b'M' => message = value,
                _ => {}
            }
        }
    }
    WireError::Server { code, message }
}

/// Microseconds since 2000-01-01, the clock of the replication protocol.
fn postgres_epoch_micros() -> i64 {
    const POSTGRES_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    now - POSTGRES_EPOCH_UNIX_SECS * 1_000_000
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
