//! Binlog events of MySQL and MariaDB in ROW format: the few a CDC reader needs (table maps,
//! row events v1/v2, transaction boundaries, rotations, MariaDB GTIDs) and the binary values
//! inside row events.

use super::my_wire::{Reader, WireError};

type Result<T> = std::result::Result<T, WireError>;

fn bad(what: impl Into<String>) -> WireError {
    WireError::Protocol(what.into())
}

// Event types.
const QUERY_EVENT: u8 = 2;
const ROTATE_EVENT: u8 = 4;
const FORMAT_DESCRIPTION_EVENT: u8 = 15;
const XID_EVENT: u8 = 16;
const TABLE_MAP_EVENT: u8 = 19;
const WRITE_ROWS_V1: u8 = 23;
const UPDATE_ROWS_V1: u8 = 24;
const DELETE_ROWS_V1: u8 = 25;
const HEARTBEAT_EVENT: u8 = 27;
const WRITE_ROWS_V2: u8 = 30;
const UPDATE_ROWS_V2: u8 = 31;
const DELETE_ROWS_V2: u8 = 32;
const MARIADB_GTID_EVENT: u8 = 162;
/// MariaDB's compressed row events (`log_bin_compress=ON`), not decoded here.
const MARIADB_COMPRESSED_ROWS: std::ops::RangeInclusive<u8> = 166..=171;

/// MariaDB GTID flag: the event group has no XID/COMMIT terminator (DDL).
const FL_STANDALONE: u8 = 1;

// Column types (`MYSQL_TYPE_*`).
pub const T_DECIMAL: u8 = 0;
pub const T_TINY: u8 = 1;
pub const T_SHORT: u8 = 2;
pub const T_LONG: u8 = 3;
pub const T_FLOAT: u8 = 4;
pub const T_DOUBLE: u8 = 5;
pub const T_NULL: u8 = 6;
pub const T_TIMESTAMP: u8 = 7;
pub const T_LONGLONG: u8 = 8;
pub const T_INT24: u8 = 9;
pub const T_DATE: u8 = 10;
pub const T_TIME: u8 = 11;
pub const T_DATETIME: u8 = 12;
pub const T_YEAR: u8 = 13;
pub const T_NEWDATE: u8 = 14;
pub const T_VARCHAR: u8 = 15;
pub const T_BIT: u8 = 16;
pub const T_TIMESTAMP2: u8 = 17;
pub const T_DATETIME2: u8 = 18;
pub const T_TIME2: u8 = 19;
pub const T_JSON: u8 = 245;
pub const T_NEWDECIMAL: u8 = 246;
pub const T_ENUM: u8 = 247;
pub const T_SET: u8 = 248;
pub const T_TINY_BLOB: u8 = 249;
pub const T_MEDIUM_BLOB: u8 = 250;
pub const T_LONG_BLOB: u8 = 251;
pub const T_BLOB: u8 = 252;
pub const T_VAR_STRING: u8 = 253;
pub const T_STRING: u8 = 254;
pub const T_GEOMETRY: u8 = 255;

/// The common event header.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub kind: u8,
    pub server_id: u32,
    /// Where the next event starts in the binlog file (0 for events the master made up).
    pub next_position: u32,
}

pub const HEADER_LEN: usize = 19;

/// A table's layout as announced by a TABLE_MAP event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMap {
    pub id: u64,
    pub database: String,
    pub table: String,
    pub types: Vec<u8>,
    pub metadata: Vec<u16>,
    /// Column names, when the server logs them (`binlog_row_metadata = FULL`).
    pub names: Option<Vec<String>>,
    /// The optional metadata's signedness bitmap, when logged: one bit per numeric column,
    /// read by [`TableMap::unsigned_columns`].
    pub signedness: Option<Vec<u8>>,
}

impl TableMap {
    /// Per column, true when unsigned, from the signedness bitmap (when logged). MariaDB gives
    /// YEAR a bit of its own (it is an unsigned TINYINT to the server) while MySQL does not, so
    /// the caller says which server wrote the map; a wrong guess would shift the sign of every
    /// numeric column after a YEAR.
    pub fn unsigned_columns(&self, year_has_sign_bit: bool) -> Option<Vec<bool>> {
        let bits = self.signedness.as_ref()?;
        let mut n = 0;
        let unsigned = self
            .types
            .iter()
            .map(|&t| {
                if is_numeric(t) || (year_has_sign_bit && t == T_YEAR) {
                    let set = bits.get(n / 8).is_some_and(|b| b & (0x80 >> (n % 8)) != 0);
                    n += 1;
                    set
                } else {
                    false
                }
            })
            .collect();
        Some(unsigned)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsKind {
    Write,
    Update,
    Delete,
}

/// A decoded event (only what CDC uses; the rest is `Other`).
#[derive(Debug)]
pub enum Event {
    Rotate {
        file: String,
        position: u64,
    },
    /// The checksum algorithm the binlog uses (0 none, 1 CRC32).
    FormatDescription {
        checksum: u8,
    },
    TableMap(TableMap),
    /// A row event; its rows are decoded with the table's map by [`decode_rows`].
    Rows {
        kind: RowsKind,
        table_id: u64,
        body: Vec<u8>,
        v2: bool,
    },
    /// A compressed row event of this table (cannot be decoded here).
    CompressedRows {
        table_id: u64,
    },
    Xid,
    Query {
        database: String,
        sql: String,
    },
    /// MariaDB GTID `domain-server-seq`; `standalone` groups end without XID/COMMIT.
    Gtid {
        gtid: String,
        standalone: bool,
    },
    Heartbeat,
    Other(u8),
}

/// Splits an event into header and body (checksum removed, and verified when present).
///
/// # Errors
/// A truncated event, or a checksum that does not match.
pub fn parse(raw: &[u8], checksum: bool) -> Result<(Header, Event)> {
    if raw.len() < HEADER_LEN {
        return Err(bad("binlog event shorter than its header"));
    }
    let mut r = Reader::new(raw);
    r.skip(4)?; // timestamp
    let kind = r.u8()?;
    let server_id = r.u32()?;
    let _size = r.u32()?;
    let next_position = r.u32()?;
    let header = Header { kind, server_id, next_position };
    // The format description announces its own checksum algorithm, and carries a checksum
    // exactly when that algorithm is not "none"; every other event follows the session's.
    let has_checksum = if kind == FORMAT_DESCRIPTION_EVENT { fde_has_checksum(raw) } else { checksum };
    let end = if has_checksum && kind != HEARTBEAT_EVENT {
        if raw.len() < HEADER_LEN + 4 {
            return Err(bad("binlog event too short for its checksum"));
        }
        let body_end = raw.len() - 4;
        let expected = u32::from_le_bytes([raw[body_end], raw[body_end + 1], raw[body_end + 2], raw[body_end + 3]]);
        if crc32fast::hash(&raw[..body_end]) != expected {
            return Err(bad(format!("binlog event of type {kind} failed its CRC32 checksum")));
        }
        body_end
    } else if has_checksum {
        // MariaDB sends heartbeats with or without a checksum; nothing in them is read.
        raw.len()
    } else {
        raw.len()
    };
    let body = &raw[HEADER_LEN..end];
    let event = match kind {
        ROTATE_EVENT => {
            let mut r = Reader::new(body);
            let position = r.u64()?;
            Event::Rotate { file: String::from_utf8_lossy(r.rest()).into_owned(), position }
        }
        FORMAT_DESCRIPTION_EVENT => {
            Event::FormatDescription { checksum: if fde_has_checksum(raw) { raw[raw.len() - 5] } else { 0 } }
        }
        TABLE_MAP_EVENT => Event::TableMap(parse_table_map(body)?),
        WRITE_ROWS_V1 | UPDATE_ROWS_V1 | DELETE_ROWS_V1 | WRITE_ROWS_V2 | UPDATE_ROWS_V2 | DELETE_ROWS_V2 => {
            let rows_kind = match kind {
                WRITE_ROWS_V1 | WRITE_ROWS_V2 => RowsKind::Write,
                UPDATE_ROWS_V1 | UPDATE_ROWS_V2 => RowsKind::Update,
                _ => RowsKind::Delete,
            };
            let table_id = Reader::new(body).uint(6)?;
            Event::Rows { kind: rows_kind, table_id, body: body.to_vec(), v2: kind >= WRITE_ROWS_V2 }
        }
        k if MARIADB_COMPRESSED_ROWS.contains(&k) => Event::CompressedRows { table_id: Reader::new(body).uint(6)? },
        XID_EVENT => Event::Xid,
        QUERY_EVENT => {
            let mut r = Reader::new(body);
            r.skip(4 + 4)?; // thread id, execution time
            let db_len = r.u8()? as usize;
            r.skip(2)?; // error code
            let status_len = r.u16()? as usize;
            r.skip(status_len)?;
            let database = String::from_utf8_lossy(r.bytes(db_len)?).into_owned();
            r.skip(1)?;
            Event::Query { database, sql: String::from_utf8_lossy(r.rest()).into_owned() }
        }
        MARIADB_GTID_EVENT => {
            let mut r = Reader::new(body);
            let seq = r.u64()?;
            let domain = r.u32()?;
            let flags = r.u8()?;
            Event::Gtid { gtid: format!("{domain}-{server_id}-{seq}"), standalone: flags & FL_STANDALONE != 0 }
        }
        HEARTBEAT_EVENT => Event::Heartbeat,
        other => Event::Other(other),
    };
    Ok((header, event))
}

/// A format description event ends with the checksum algorithm byte and, unless it is 0
/// (none) or 255 (undefined: an old server), a 4-byte checksum.
fn fde_has_checksum(raw: &[u8]) -> bool {
    // binlog version (2), server version (50), timestamp (4), header length (1), then one
    // post-header length per event type; servers that know checksums add alg + CRC.
    const FIXED: usize = HEADER_LEN + 2 + 50 + 4 + 1;
    if raw.len() < FIXED + 5 {
        return false;
    }
    let version = String::from_utf8_lossy(&raw[HEADER_LEN + 2..HEADER_LEN + 52]);
    let numbers: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect();
    let aware = match numbers.as_slice() {
        [major, minor, patch, ..] => (*major, *minor, *patch) >= (5, 6, 1),
        _ => false,
    };
    aware && matches!(raw[raw.len() - 5], 1)
}

fn parse_table_map(body: &[u8]) -> Result<TableMap> {
    let mut r = Reader::new(body);
    let id = r.uint(6)?;
    r.skip(2)?; // flags
    let db_len = r.u8()? as usize;
    let database = String::from_utf8_lossy(r.bytes(db_len)?).into_owned();
    r.skip(1)?;
    let table_len = r.u8()? as usize;
    let table = String::from_utf8_lossy(r.bytes(table_len)?).into_owned();
    r.skip(1)?;
    let count = r.lenenc()? as usize;
    let types = r.bytes(count)?.to_vec();
    let meta_bytes = r.lenenc_bytes()?;
    let mut m = Reader::new(meta_bytes);
    let mut metadata = Vec::with_capacity(count);
    for &t in &types {
        let v = match t {
            T_FLOAT | T_DOUBLE | T_BLOB | T_TINY_BLOB | T_MEDIUM_BLOB | T_LONG_BLOB | T_GEOMETRY | T_JSON
            | T_TIMESTAMP2 | T_DATETIME2 | T_TIME2 => m.u8()? as u16,
            T_VARCHAR | T_VAR_STRING | T_BIT => m.u16()?,
            // Stored big-endian-ish: first byte then second.
            T_NEWDECIMAL | T_STRING | T_ENUM | T_SET => {
                let a = m.u8()? as u16;
                let b = m.u8()? as u16;
                (a << 8) | b
            }
            _ => 0,
        };
        metadata.push(v);
    }
    r.skip(count.div_ceil(8))?; // nullability
    let mut names = None;
    let mut signedness: Option<Vec<u8>> = None;
    while !r.is_empty() {
        let field = r.u8()?;
        let value = r.lenenc_bytes()?;
        match field {
            1 => signedness = Some(value.to_vec()),
            4 => {
                let mut v = Reader::new(value);
                let mut list = Vec::with_capacity(count);
                while !v.is_empty() {
                    list.push(String::from_utf8_lossy(v.lenenc_bytes()?).into_owned());
                }
                names = Some(list);
            }
            _ => {}
        }
    }
    Ok(TableMap { id, database, table, types, metadata, names, signedness })
}

fn is_numeric(t: u8) -> bool {
    matches!(t, T_TINY | T_SHORT | T_INT24 | T_LONG | T_LONGLONG | T_FLOAT | T_DOUBLE | T_NEWDECIMAL | T_DECIMAL)
}

/// A value from a row event.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    /// Exact decimal text.
    Decimal(String),
    /// Strings, BLOBs, JSON (MariaDB stores it as text), GEOMETRY bytes.
    Bytes(Vec<u8>),
    Date {
        year: u16,
        month: u8,
        day: u8,
    },
    DateTime {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        micros: u32,
    },
    /// Seconds since the epoch, UTC.
    Timestamp {
        seconds: i64,
        micros: u32,
    },
    Time {
        negative: bool,
        hours: u32,
        minutes: u8,
        seconds: u8,
        micros: u32,
    },
    Year(u16),
    /// 1-based index into the ENUM's values (0: the empty error value).
    Enum(u16),
    /// Bitmask of the SET's members.
    Set(u64),
    Bit(u64),
    /// A type this decoder does not read (MySQL's binary JSON).
    Unsupported(u8),
}

/// The rows of a row event: one image for WRITE and DELETE, before and after for UPDATE.
#[derive(Debug)]
pub struct Rows {
    pub rows: Vec<(Option<Vec<Value>>, Vec<Value>)>,
    /// False when the server logged only some columns (`binlog_row_image` not FULL).
    pub full_image: bool,
}

/// Decodes a row event's rows with its table's map; `unsigned[i]` says whether numeric column
/// `i` is unsigned.
///
/// # Errors
/// A row event that does not match its table map.
pub fn decode_rows(kind: RowsKind, body: &[u8], v2: bool, map: &TableMap, unsigned: &[bool]) -> Result<Rows> {
    let mut r = Reader::new(body);
    r.skip(6 + 2)?; // table id, flags
    if v2 {
        let extra = r.u16()? as usize;
        r.skip(extra.saturating_sub(2))?;
    }
    let count = r.lenenc()? as usize;
    if count != map.types.len() {
        return Err(bad(format!("row event has {count} columns, its table map {}", map.types.len())));
    }
    let bitmap_len = count.div_ceil(8);
    let present = r.bytes(bitmap_len)?.to_vec();
    let present_after = if kind == RowsKind::Update { r.bytes(bitmap_len)?.to_vec() } else { present.clone() };
    let all = |bits: &[u8]| (0..count).all(|i| bits[i / 8] & (1 << (i % 8)) != 0);
    let full_image = all(&present) && all(&present_after);
    let mut rows = Vec::new();
    while !r.is_empty() {
        let first = read_row(&mut r, &present, map, unsigned)?;
        if kind == RowsKind::Update {
            let after = read_row(&mut r, &present_after, map, unsigned)?;
            rows.push((Some(first), after));
        } else {
            rows.push((None, first));
        }
    }
    Ok(Rows { rows, full_image })
}

fn read_row(r: &mut Reader<'_>, present: &[u8], map: &TableMap, unsigned: &[bool]) -> Result<Vec<Value>> {
    let count = map.types.len();
    let columns: Vec<usize> = (0..count).filter(|i| present[i / 8] & (1 << (i % 8)) != 0).collect();
    let nulls = r.bytes(columns.len().div_ceil(8))?.to_vec();
    let mut row = vec![Value::Null; count];
    for (n, &i) in columns.iter().enumerate() {
        if nulls[n / 8] & (1 << (n % 8)) != 0 {
            continue;
        }
        row[i] = read_value(r, map.types[i], map.metadata[i], unsigned.get(i).copied().unwrap_or(false))?;
    }
    Ok(row)
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64)
}

/// Microseconds from the fractional part of a TIME2/DATETIME2/TIMESTAMP2 value.
fn fraction(r: &mut Reader<'_>, fsp: u16) -> Result<u32> {
    let bytes = (fsp as usize).div_ceil(2);
    let v = be(r.bytes(bytes)?) as u32;
    Ok(match bytes {
        1 => v * 10_000,
        2 => v * 100,
        _ => v,
    })
}

fn read_value(r: &mut Reader<'_>, t: u8, meta: u16, unsigned: bool) -> Result<Value> {
    Ok(match t {
        T_TINY => {
            let v = r.u8()?;
            if unsigned { Value::UInt(v as u64) } else { Value::Int(v as i8 as i64) }
        }
        T_SHORT => {
            let v = r.u16()?;
            if unsigned { Value::UInt(v as u64) } else { Value::Int(v as i16 as i64) }
        }
        T_INT24 => {
            let v = r.uint(3)? as u32;
            if unsigned { Value::UInt(v as u64) } else { Value::Int(((v << 8) as i32 >> 8) as i64) }
        }
        T_LONG => {
            let v = r.u32()?;
            if unsigned { Value::UInt(v as u64) } else { Value::Int(v as i32 as i64) }
        }
        T_LONGLONG => {
            let v = r.u64()?;
            if unsigned { Value::UInt(v) } else { Value::Int(v as i64) }
        }
        T_FLOAT => Value::Float(f32::from_bits(r.u32()?)),
        T_DOUBLE => Value::Double(f64::from_bits(r.u64()?)),
        T_NEWDECIMAL => {
            let precision = (meta >> 8) as usize;
            let scale = (meta & 0xFF) as usize;
            Value::Decimal(read_decimal(r, precision, scale)?)
        }
        T_VARCHAR | T_VAR_STRING => {
            let len = if meta < 256 { r.u8()? as usize } else { r.u16()? as usize };
            Value::Bytes(r.bytes(len)?.to_vec())
        }
        T_STRING => {
            // The real type and length share the two metadata bytes.
            let (b0, b1) = ((meta >> 8) as u8, (meta & 0xFF) as u8);
            let (real, max_len) = if b0 & 0x30 != 0x30 {
                (b0 | 0x30, ((((b0 & 0x30) ^ 0x30) as usize) << 4) | b1 as usize)
            } else {
                (b0, b1 as usize)
            };
            match real {
                T_ENUM => Value::Enum(r.uint(b1 as usize)? as u16),
                T_SET => Value::Set(r.uint(b1 as usize)?),
                _ => {
                    let len = if max_len < 256 { r.u8()? as usize } else { r.u16()? as usize };
                    Value::Bytes(r.bytes(len)?.to_vec())
                }
            }
        }
        T_ENUM => Value::Enum(r.uint((meta & 0xFF) as usize)? as u16),
        T_SET => Value::Set(r.uint((meta & 0xFF) as usize)?),
        T_BLOB | T_TINY_BLOB | T_MEDIUM_BLOB | T_LONG_BLOB | T_GEOMETRY => {
            let len = r.uint(meta as usize)? as usize;
            Value::Bytes(r.bytes(len)?.to_vec())
        }
        T_JSON => {
            let len = r.uint(meta as usize)? as usize;
            r.skip(len)?;
            Value::Unsupported(T_JSON)
        }
        T_BIT => {
            // Metadata: bits beyond whole bytes (first byte), then whole bytes.
            let bits = (meta & 0xFF) as usize;
            let bytes = (meta >> 8) as usize;
            Value::Bit(be(r.bytes(bytes + bits.div_ceil(8))?))
        }
        T_YEAR => {
            let v = r.u8()? as u16;
            Value::Year(if v == 0 { 0 } else { 1900 + v })
        }
        T_DATE | T_NEWDATE => {
            let v = r.uint(3)? as u32;
            Value::Date { year: (v >> 9) as u16, month: ((v >> 5) & 15) as u8, day: (v & 31) as u8 }
        }
        T_TIMESTAMP => Value::Timestamp { seconds: r.u32()? as i64, micros: 0 },
        T_TIMESTAMP2 => {
            let seconds = be(r.bytes(4)?) as i64;
            Value::Timestamp { seconds, micros: fraction(r, meta)? }
        }
        T_DATETIME => {
            // Old format: YYYYMMDDhhmmss as a decimal number.
            let v = r.u64()?;
            let (date, time) = (v / 1_000_000, v % 1_000_000);
            Value::DateTime {
                year: (date / 10_000) as u16,
                month: (date / 100 % 100) as u8,
                day: (date % 100) as u8,
                hour: (time / 10_000) as u8,
                minute: (time / 100 % 100) as u8,
                second: (time % 100) as u8,
                micros: 0,
            }
        }
        T_DATETIME2 => {
            let packed = be(r.bytes(5)?) as i64 - 0x80_0000_0000;
            let ymd = packed >> 17;
            let ym = ymd >> 5;
            let hms = packed & 0x1_FFFF;
            Value::DateTime {
                year: (ym / 13) as u16,
                month: (ym % 13) as u8,
                day: (ymd & 31) as u8,
                hour: (hms >> 12) as u8,
                minute: ((hms >> 6) & 63) as u8,
                second: (hms & 63) as u8,
                micros: fraction(r, meta)?,
            }
        }
        T_TIME => {
            let v = r.uint(3)? as u32;
            let v = ((v << 8) as i32 >> 8) as i64;
            let a = v.unsigned_abs();
            Value::Time {
                negative: v < 0,
                hours: (a / 10_000) as u32,
                minutes: (a / 100 % 100) as u8,
                seconds: (a % 100) as u8,
                micros: 0,
            }
        }
        T_TIME2 => {
            // One packed number: integer part (sign, 10 hour, 6 minute, 6 second bits) above
            // 24 bits of microseconds, stored offset-binary with the fraction's own width.
            let packed: i64 = match meta {
                0 => (be(r.bytes(3)?) as i64 - 0x80_0000) << 24,
                1 | 2 => {
                    let mut int = be(r.bytes(3)?) as i64 - 0x80_0000;
                    let mut frac = r.u8()? as i64;
                    if int < 0 && frac != 0 {
                        int += 1;
                        frac -= 0x100;
                    }
                    (int << 24) + frac * 10_000
                }
                3 | 4 => {
                    let mut int = be(r.bytes(3)?) as i64 - 0x80_0000;
                    let mut frac = be(r.bytes(2)?) as i64;
                    if int < 0 && frac != 0 {
                        int += 1;
                        frac -= 0x1_0000;
                    }
                    (int << 24) + frac * 100
                }
                _ => be(r.bytes(6)?) as i64 - 0x8000_0000_0000,
            };
            let negative = packed < 0;
            let a = packed.unsigned_abs();
            let hms = a >> 24;
            Value::Time {
                negative,
                hours: ((hms >> 12) & 0x3FF) as u32,
                minutes: ((hms >> 6) & 63) as u8,
                seconds: (hms & 63) as u8,
                micros: (a & 0xFF_FFFF) as u32,
            }
        }
        other => return Err(bad(format!("column type {other} cannot be read from the binlog"))),
    })
}

/// MySQL's packed binary DECIMAL(precision, scale) as decimal text.
fn read_decimal(r: &mut Reader<'_>, precision: usize, scale: usize) -> Result<String> {
    const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
    let integral = precision.saturating_sub(scale);
    let (int_full, int_part) = (integral / 9, integral % 9);
    let (frac_full, frac_part) = (scale / 9, scale % 9);
    let size = int_full * 4 + DIG2BYTES[int_part] + frac_full * 4 + DIG2BYTES[frac_part];
    let mut bytes = r.bytes(size)?.to_vec();
    if bytes.is_empty() {
        return Ok("0".into());
    }
    let negative = bytes[0] & 0x80 == 0;
    bytes[0] ^= 0x80;
    if negative {
        for b in &mut bytes {
            *b = !*b;
        }
    }
    let mut pos = 0;
    let mut take = |n: usize| {
        let v = be(&bytes[pos..pos + n]);
        pos += n;
        v
    };
    let mut int_digits = String::new();
    if int_part > 0 {
        int_digits.push_str(&take(DIG2BYTES[int_part]).to_string());
    }
    for _ in 0..int_full {
        let v = take(4);
        if int_digits.is_empty() {
            int_digits.push_str(&v.to_string());
        } else {
            int_digits.push_str(&format!("{v:09}"));
        }
    }
    let trimmed = int_digits.trim_start_matches('0');
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(if trimmed.is_empty() { "0" } else { trimmed });
    if scale > 0 {
        out.push('.');
        for _ in 0..frac_full {
            out.push_str(&format!("{:09}", take(4)));
        }
        if frac_part > 0 {
            let v = take(DIG2BYTES[frac_part]);
            out.push_str(&format!("{v:0width$}", width = frac_part));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    /// Events captured from MariaDB 10.11 (`binlog_row_metadata = FULL`, CRC32) for
    /// `CREATE TABLE t (id INT PRIMARY KEY, yr YEAR, u INT UNSIGNED, s INT, b BIT(3), u2 TINYINT UNSIGNED)`
    /// and `INSERT INTO t VALUES (1, 2024, 4000000000, -5, b'101', 200)`.
    const MARIADB_TABLE_MAP: &str = "3f04116b1301000000480000001b030000000012000000000001000279740001740006030d030310010203003e010168040f026964027972017501730162027532080100b3511a80";
    const MARIADB_WRITE_ROWS: &str =
        "3f04116b1701000000310000004c03000000001200000000000100063fc0010000007c00286beefbffffff05c8f534bd05";

    #[test]
    fn mariadb_gives_year_a_sign_bit() {
        let (_, event) = parse(&hex(MARIADB_TABLE_MAP), true).expect("table map");
        let Event::TableMap(map) = event else { panic!("not a table map: {event:?}") };
        assert_eq!((map.database.as_str(), map.table.as_str()), ("yt", "t"));
        let names: Vec<&str> = map.names.iter().flatten().map(|n| n.as_str()).collect();
        assert_eq!(names, ["id", "yr", "u", "s", "b", "u2"]);
        let unsigned = map.unsigned_columns(true).expect("signedness logged");
        assert_eq!(unsigned, [false, true, true, false, false, true]);
        // Read as MySQL would lay the bitmap out, `s` would turn unsigned and `u2` signed.
        assert_eq!(map.unsigned_columns(false).expect("signedness logged"), [false, false, true, true, false, false]);

        let (_, event) = parse(&hex(MARIADB_WRITE_ROWS), true).expect("rows");
        let Event::Rows { kind, body, v2, .. } = event else { panic!("not a row event: {event:?}") };
        let rows = decode_rows(kind, &body, v2, &map, &unsigned).expect("decoded");
        assert_eq!(
            rows.rows,
            vec![(
                None,
                vec![
                    Value::Int(1),
                    Value::Year(2024),
                    Value::UInt(4_000_000_000),
                    Value::Int(-5),
                    Value::Bit(5),
                    Value::UInt(200)
                ]
            )]
        );
    }

    #[test]
    fn a_corrupted_event_fails_its_checksum() {
        let mut raw = hex(MARIADB_WRITE_ROWS);
        raw[30] ^= 1;
        let err = parse(&raw, true).expect_err("checksum must fail");
        assert!(err.to_string().contains("CRC32"), "{err}");
    }

    #[test]
    fn decimals_unpack() {
        // DECIMAL(10,2) 1234567.89: integral 8 digits = 4 bytes, fraction 2 digits = 1 byte.
        let mut v: Vec<u8> = 1_234_567u32.to_be_bytes().to_vec();
        v.push(89);
        v[0] ^= 0x80;
        assert_eq!(read_decimal(&mut Reader::new(&v), 10, 2).expect("decimal"), "1234567.89");
        let negative: Vec<u8> = v.iter().map(|b| !b).collect();
        assert_eq!(read_decimal(&mut Reader::new(&negative), 10, 2).expect("decimal"), "-1234567.89");
        let zero = [0x80, 0, 0, 0, 5];
        assert_eq!(read_decimal(&mut Reader::new(&zero), 10, 2).expect("decimal"), "0.05");
    }

    #[test]
    fn temporal_values_unpack() {
        // DATETIME2(0) 2024-03-05 06:07:08.
        let ym = 2024 * 13 + 3;
        let ymd = (ym << 5) | 5;
        let hms = (6 << 12) | (7 << 6) | 8;
        let packed: i64 = ((ymd << 17) | hms) + 0x80_0000_0000;
        let bytes = &packed.to_be_bytes()[3..];
        let v = read_value(&mut Reader::new(bytes), T_DATETIME2, 0, false).expect("datetime");
        assert_eq!(v, Value::DateTime { year: 2024, month: 3, day: 5, hour: 6, minute: 7, second: 8, micros: 0 });
        let date = (2024u32 << 9) | (3 << 5) | 5;
        let v = read_value(&mut Reader::new(&date.to_le_bytes()[..3]), T_DATE, 0, false).expect("date");
        assert_eq!(v, Value::Date { year: 2024, month: 3, day: 5 });
        let int24 = [0xFF, 0xFF, 0xFF];
        assert_eq!(read_value(&mut Reader::new(&int24), T_INT24, 0, false).expect("int"), Value::Int(-1));
        assert_eq!(read_value(&mut Reader::new(&int24), T_INT24, 0, true).expect("int"), Value::UInt(0xFF_FFFF));
    }
}
