//! A small MySQL/MariaDB client-protocol connection: handshake and authentication
//! (`mysql_native_password`, and `caching_sha2_password` while the server has the user's
//! credentials cached), text-protocol queries read row by row, and `COM_BINLOG_DUMP`.
//!
//! Written here rather than taken from a crate because the crates' binlog readers do not
//! follow MariaDB's stream (MariaDB-only events, GTIDs, the session variables a MariaDB master
//! expects before it sends ROW events); this needs only the few commands CDC uses.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use super::sha1::sha1;

/// How to reach the upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot connect to MySQL at {addr}: {source}; check hostname and port, and that the server is running")]
    Connect { addr: String, source: std::io::Error },
    #[error("connection to MySQL lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("{message} (MySQL error {code}, SQLSTATE {state})")]
    Server { code: u16, state: String, message: String },
    #[error("unexpected reply from MySQL: {0}")]
    Protocol(String),
    #[error("{0}")]
    Auth(String),
    #[error("no data from MySQL for {0:?}; the connection is considered lost")]
    Timeout(Duration),
}

/// MySQL error codes that a reconnect cannot fix.
const ER_ACCESS_DENIED: u16 = 1045;
const ER_DBACCESS_DENIED: u16 = 1044;
const ER_MASTER_FATAL_READING_BINLOG: u16 = 1236;
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;

impl WireError {
    /// True for refusals a retry cannot fix (credentials, privileges, a purged binlog).
    pub fn is_permanent(&self) -> bool {
        match self {
            WireError::Server { code, .. } => matches!(
                *code,
                ER_ACCESS_DENIED | ER_DBACCESS_DENIED | ER_MASTER_FATAL_READING_BINLOG | ER_SPECIFIC_ACCESS_DENIED
            ),
            WireError::Auth(_) => true,
            _ => false,
        }
    }

    pub fn code(&self) -> Option<u16> {
        match self {
            WireError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, WireError>;

const CLIENT_LONG_PASSWORD: u32 = 1;
const CLIENT_LONG_FLAG: u32 = 4;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_MULTI_RESULTS: u32 = 0x20000;
const CLIENT_PLUGIN_AUTH: u32 = 0x80000;
/// utf8mb4_general_ci: every text value arrives as UTF-8.
const CHARSET_UTF8MB4: u8 = 45;
const MAX_PACKET: usize = 0xFF_FFFF;

/// One column of a text result set.
#[derive(Debug, Clone)]
pub struct ColumnDef {
    pub name: String,
    /// The MySQL field type (`MYSQL_TYPE_*`).
    pub kind: u8,
    pub flags: u16,
}

/// A row of a text result set: each value as the server printed it, or NULL.
pub type TextRow = Vec<Option<Vec<u8>>>;

pub struct Connection {
    stream: BufStream<TcpStream>,
    seq: u8,
    pub server_version: String,
    pub connection_id: u32,
    /// Columns of the result set being read by [`Connection::next_row`].
    reading_rows: bool,
}

impl Connection {
    /// Connects and authenticates.
    ///
    /// # Errors
    /// Unreachable server, refused credentials, an authentication method not supported here.
    pub async fn connect(p: &ConnectParams) -> Result<Self> {
        let addr = format!("{}:{}", p.host, p.port);
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr))
            .await
            .map_err(|_| WireError::Connect { addr: addr.clone(), source: std::io::ErrorKind::TimedOut.into() })?
            .map_err(|source| WireError::Connect { addr: addr.clone(), source })?;
        tcp.set_nodelay(true)?;
        let mut conn = Connection {
            stream: BufStream::new(tcp),
            seq: 0,
            server_version: String::new(),
            connection_id: 0,
            reading_rows: false,
        };
        tokio::time::timeout(Duration::from_secs(20), conn.handshake(p)).await.map_err(|_| {
            WireError::Protocol(format!("the server at {addr} did not complete the handshake within 20 s"))
        })??;
        Ok(conn)
    }

    /// True for a MariaDB server (as opposed to Oracle MySQL).
    pub fn is_mariadb(&self) -> bool {
        self.server_version.contains("MariaDB")
    }

    async fn handshake(&mut self, p: &ConnectParams) -> Result<()> {
        let greeting = self.read_packet().await?;
        if greeting.first() == Some(&0xFF) {
            return Err(parse_error(&greeting));
        }
        let mut r = Reader::new(&greeting);
        let protocol = r.u8()?;
        if protocol != 10 {
            return Err(WireError::Protocol(format!("handshake protocol {protocol} (expected 10)")));
        }
        self.server_version = String::from_utf8_lossy(r.nul_str()?).into_owned();
        self.connection_id = r.u32()?;
        let mut scramble = r.bytes(8)?.to_vec();
        r.skip(1)?;
        let caps_low = r.u16()? as u32;
        let mut server_caps = caps_low;
        let mut plugin = "mysql_native_password".to_string();
        if !r.is_empty() {
            r.skip(1 + 2)?; // charset, status
            server_caps |= (r.u16()? as u32) << 16;
            let auth_len = r.u8()? as usize;
            r.skip(10)?;
            if server_caps & CLIENT_SECURE_CONNECTION != 0 {
                let n = auth_len.saturating_sub(8).max(13);
                let part = r.bytes(n.min(r.remaining()))?;
                // The second part is NUL-terminated: 12 bytes of scramble.
                scramble.extend_from_slice(&part[..part.len().min(12)]);
            }
            if server_caps & CLIENT_PLUGIN_AUTH != 0 && !r.is_empty() {
                plugin = String::from_utf8_lossy(r.nul_str_or_rest()).into_owned();
            }
        }
        if server_caps & CLIENT_PROTOCOL_41 == 0 {
            return Err(WireError::Protocol(format!("server {} is too old (no protocol 4.1)", self.server_version)));
        }
        let caps = (CLIENT_LONG_PASSWORD
            | CLIENT_LONG_FLAG
            | CLIENT_PROTOCOL_41
            | CLIENT_TRANSACTIONS
            | CLIENT_SECURE_CONNECTION
            | CLIENT_MULTI_RESULTS
            | CLIENT_PLUGIN_AUTH)
            & (server_caps | CLIENT_LONG_PASSWORD);
        let auth = auth_response(&plugin, &p.password, &scramble)?;
        let mut out = Vec::with_capacity(64 + p.user.len());
        out.extend_from_slice(&caps.to_le_bytes());
        out.extend_from_slice(&(MAX_PACKET as u32).to_le_bytes());
        out.push(CHARSET_UTF8MB4);
        out.extend_from_slice(&[0u8; 23]);
        out.extend_from_slice(p.user.as_bytes());
        out.push(0);
        out.push(auth.len() as u8);
        out.extend_from_slice(&auth);
        out.extend_from_slice(plugin.as_bytes());
        out.push(0);
        self.write_packet(&out).await?;
        loop {
            let reply = self.read_packet().await?;
            match reply.first() {
                Some(0x00) => return Ok(()),
                Some(0xFF) => return Err(parse_error(&reply)),
                Some(0xFE) => {
                    // Auth switch: another method, with a fresh scramble.
                    let mut r = Reader::new(&reply[1..]);
                    plugin = String::from_utf8_lossy(r.nul_str_or_rest()).into_owned();
                    let mut data = r.rest().to_vec();
                    if data.last() == Some(&0) {
                        data.pop();
                    }
                    scramble = data;
                    let auth = auth_response(&plugin, &p.password, &scramble)?;
                    self.write_packet(&auth).await?;
                }
                Some(0x01) if plugin == "caching_sha2_password" => match reply.get(1) {
                    Some(3) => continue, // fast authentication succeeded; an OK follows
                    _ => {
                        return Err(WireError::Auth(format!(
                            "MySQL wants full caching_sha2_password authentication for user \"{}\", which needs TLS; \
                             give the user mysql_native_password, or log in once with the mysql client so the server caches the credentials",
                            p.user
                        )));
                    }
                },
                _ => return Err(WireError::Protocol("unexpected packet during authentication".into())),
            }
        }
    }

    /// Reads one packet (joining packets split at 16 MB).
    pub async fn read_packet(&mut self) -> Result<Vec<u8>> {
        let mut payload = Vec::new();
        loop {
            let mut header = [0u8; 4];
            self.stream.read_exact(&mut header).await?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
            self.seq = header[3].wrapping_add(1);
            let start = payload.len();
            payload.resize(start + len, 0);
            self.stream.read_exact(&mut payload[start..]).await?;
            if len < MAX_PACKET {
                return Ok(payload);
            }
        }
    }

    async fn write_packet(&mut self, payload: &[u8]) -> Result<()> {
        // A payload of a multiple of 16 MB ends with an empty packet.
        let mut rest = payload;
        loop {
            let n = rest.len().min(MAX_PACKET);
            self.write_chunk(&rest[..n]).await?;
            rest = &rest[n..];
            if n < MAX_PACKET {
                break;
            }
        }
        self.stream.flush().await?;
        Ok(())
    }

    async fn write_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        let len = chunk.len() as u32;
        let header = [len as u8, (len >> 8) as u8, (len >> 16) as u8, self.seq];
        self.seq = self.seq.wrapping_add(1);
        self.stream.write_all(&header).await?;
        self.stream.write_all(chunk).await?;
        Ok(())
    }

    async fn command(&mut self, command: u8, body: &[u8]) -> Result<()> {
        if self.reading_rows {
            // A result set left unread: drain it so the next reply is ours.
            while self.next_row().await?.is_some() {}
        }
        self.seq = 0;
        let mut payload = Vec::with_capacity(body.len() + 1);
        payload.push(command);
        payload.extend_from_slice(body);
        self.write_packet(&payload).await
    }

    /// Runs `sql`; returns the columns of its result set, whose rows [`Connection::next_row`]
    /// then reads one by one, or `None` for a statement without one.
    ///
    /// # Errors
    /// The server's error, a lost connection.
    pub async fn query_start(&mut self, sql: &str) -> Result<Option<Vec<ColumnDef>>> {
        self.command(0x03, sql.as_bytes()).await?;
        let first = self.read_packet().await?;
        match first.first() {
            Some(0x00) => return Ok(None),
            Some(0xFF) => return Err(parse_error(&first)),
            Some(0xFB) => return Err(WireError::Protocol("LOAD DATA LOCAL is not supported".into())),
            _ => {}
        }
        let count = Reader::new(&first).lenenc()? as usize;
        let mut columns = Vec::with_capacity(count);
        for _ in 0..count {
            let def = self.read_packet().await?;
            let mut r = Reader::new(&def);
            for _ in 0..4 {
                r.lenenc_bytes()?; // catalog, schema, table, original table
            }
            let name = String::from_utf8_lossy(r.lenenc_bytes()?).into_owned();
            r.lenenc_bytes()?; // original name
            r.lenenc()?; // length of the fixed fields
            r.skip(2 + 4)?; // charset, column length
            let kind = r.u8()?;
            let flags = r.u16()?;
            columns.push(ColumnDef { name, kind, flags });
        }
        let eof = self.read_packet().await?;
        if eof.first() != Some(&0xFE) {
            return Err(WireError::Protocol("missing EOF after column definitions".into()));
        }
        self.reading_rows = true;
        Ok(Some(columns))
    }

    /// The next row of the result set started by [`Connection::query_start`], or `None` at
    /// its end.
    ///
    /// # Errors
    /// The server's error (a query can fail midway), a lost connection.
    pub async fn next_row(&mut self) -> Result<Option<TextRow>> {
        if !self.reading_rows {
            return Ok(None);
        }
        let packet = self.read_packet().await?;
        match packet.first() {
            Some(0xFE) if packet.len() < 9 => {
                self.reading_rows = false;
                return Ok(None);
            }
            Some(0xFF) => {
                self.reading_rows = false;
                return Err(parse_error(&packet));
            }
            _ => {}
        }
        let mut r = Reader::new(&packet);
        let mut row = Vec::new();
        while !r.is_empty() {
            if r.peek() == Some(0xFB) {
                r.skip(1)?;
                row.push(None);
            } else {
                row.push(Some(r.lenenc_bytes()?.to_vec()));
            }
        }
        Ok(Some(row))
    }

    /// Runs `sql` and collects its rows (for small results).
    ///
    /// # Errors
    /// As [`Connection::query_start`].
    pub async fn query(&mut self, sql: &str) -> Result<Vec<TextRow>> {
        let mut rows = Vec::new();
        if self.query_start(sql).await?.is_some() {
            while let Some(row) = self.next_row().await? {
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// The first column of the first row of `sql`, as text.
    ///
    /// # Errors
    /// As [`Connection::query_start`].
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>> {
        let rows = self.query(sql).await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Runs statements that return no rows.
    ///
    /// # Errors
    /// As [`Connection::query_start`].
    pub async fn execute(&mut self, sql: &str) -> Result<()> {
        self.query(sql).await.map(|_| ())
    }

    /// Asks for the binlog from `file` at `position` (`COM_BINLOG_DUMP`); events then arrive
    /// through [`Connection::next_event`]. `server_id` must be unique among the server's
    /// replicas: the server ends an older dump with the same id.
    ///
    /// # Errors
    /// A lost connection (errors of the dump itself arrive with the first event).
    pub async fn binlog_dump(&mut self, file: &str, position: u32, server_id: u32) -> Result<()> {
        let mut body = Vec::with_capacity(10 + file.len());
        body.extend_from_slice(&position.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&server_id.to_le_bytes());
        body.extend_from_slice(file.as_bytes());
        self.command(0x12, &body).await
    }

    /// The next binlog event (header and body, checksum included), waiting at most `idle`.
    ///
    /// # Errors
    /// The server's error (e.g. the binlog file was purged), end of stream, a lost or silent
    /// connection.
    pub async fn next_event(&mut self, idle: Duration) -> Result<Vec<u8>> {
        let packet = tokio::time::timeout(idle, self.read_packet()).await.map_err(|_| WireError::Timeout(idle))??;
        match packet.first() {
            Some(0x00) => Ok(packet[1..].to_vec()),
            Some(0xFF) => Err(parse_error(&packet)),
            Some(0xFE) if packet.len() < 9 => Err(WireError::Protocol("the server ended the binlog stream".into())),
            _ => Err(WireError::Protocol("unexpected packet in the binlog stream".into())),
        }
    }
}

/// The scrambled password for an authentication method.
fn auth_response(plugin: &str, password: &str, scramble: &[u8]) -> Result<Vec<u8>> {
    if password.is_empty() {
        return Ok(Vec::new());
    }
    let scramble = &scramble[..scramble.len().min(20)];
    match plugin {
        "mysql_native_password" | "" => {
            // SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))
            let stage1 = sha1(password.as_bytes());
            let stage2 = sha1(&stage1);
            let mut input = scramble.to_vec();
            input.extend_from_slice(&stage2);
            let mask = sha1(&input);
            Ok(stage1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect())
        }
        "caching_sha2_password" => {
            // SHA256(password) XOR SHA256(SHA256(SHA256(password)) + scramble)
            use sha2::{Digest, Sha256};
            let stage1 = Sha256::digest(password.as_bytes());
            let stage2 = Sha256::digest(stage1);
            let mut h = Sha256::new();
            h.update(stage2);
            h.update(scramble);
            let mask = h.finalize();
            Ok(stage1.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect())
        }
        other => Err(WireError::Auth(format!(
            "the upstream user authenticates with {other}, which Eddy does not support; use mysql_native_password \
             (ALTER USER ... IDENTIFIED WITH mysql_native_password BY '...' / MariaDB: IDENTIFIED VIA mysql_native_password USING PASSWORD('...'))"
        ))),
    }
}

fn parse_error(packet: &[u8]) -> WireError {
    let code = packet.get(1..3).map(|b| u16::from_le_bytes([b[0], b[1]])).unwrap_or(0);
    let (state, message) = match packet.get(3) {
        Some(b'#') if packet.len() >= 9 => {
            (String::from_utf8_lossy(&packet[4..9]).into_owned(), String::from_utf8_lossy(&packet[9..]).into_owned())
        }
        _ => ("HY000".to_string(), String::from_utf8_lossy(packet.get(3..).unwrap_or_default()).into_owned()),
    };
    WireError::Server { code, state, message }
}

/// Reads little-endian protocol fields from a packet.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn short(&self, n: usize) -> WireError {
        WireError::Protocol(format!("truncated packet: wanted {n} bytes at {} of {}", self.pos, self.data.len()))
    }

    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(self.short(n));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn skip(&mut self, n: usize) -> Result<()> {
        self.bytes(n).map(|_| ())
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.data[self.pos.min(self.data.len())..];
        self.pos = self.data.len();
        out
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// An unsigned little-endian integer of `n` bytes (n <= 8).
    pub fn uint(&mut self, n: usize) -> Result<u64> {
        let b = self.bytes(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }

    /// A length-encoded integer.
    pub fn lenenc(&mut self) -> Result<u64> {
        match self.u8()? {
            0xFC => Ok(self.uint(2)?),
            0xFD => Ok(self.uint(3)?),
            0xFE => Ok(self.uint(8)?),
            n => Ok(n as u64),
        }
    }

    pub fn lenenc_bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.lenenc()? as usize;
        self.bytes(n)
    }

    pub fn nul_str(&mut self) -> Result<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == 0).ok_or_else(|| self.short(1))?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    /// A NUL-terminated string, or the rest of the packet when there is no NUL.
    pub fn nul_str_or_rest(&mut self) -> &'a [u8] {
        let rest = &self.data[self.pos.min(self.data.len())..];
        match rest.iter().position(|&b| b == 0) {
            Some(end) => {
                self.pos += end + 1;
                &rest[..end]
            }
            None => {
                self.pos = self.data.len();
                rest
            }
        }
    }
}

/// Quotes a MySQL identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes a string literal (backslashes and quotes escaped).
pub fn quote_literal(value: &str) -> String {
    let mut s = String::with_capacity(value.len() + 2);
    s.push('\'');
    for c in value.chars() {
        match c {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            '\0' => s.push_str("\\0"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_password_scramble_and_lenenc() {
        // An empty password sends an empty response.
        assert!(auth_response("mysql_native_password", "", &[1; 20]).expect("auth").is_empty());
        let a = auth_response("mysql_native_password", "secret", &[7; 20]).expect("auth");
        assert_eq!(a.len(), 20);
        assert_ne!(a, auth_response("mysql_native_password", "secret", &[8; 20]).expect("auth"));
        assert!(auth_response("client_ed25519", "x", &[0; 20]).is_err());
        let data = [0xFC, 0x34, 0x12, 0xFB, 3, b'a', b'b', b'c'];
        let mut r = Reader::new(&data);
        assert_eq!(r.lenenc().expect("lenenc"), 0x1234);
        assert_eq!(r.peek(), Some(0xFB));
        r.skip(1).expect("skip");
        assert_eq!(r.lenenc_bytes().expect("bytes"), b"abc");
        assert!(r.u8().is_err());
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_literal("it's \\"), "'it''s \\\\'");
    }
}
