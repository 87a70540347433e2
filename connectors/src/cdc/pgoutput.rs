//! Decoding of the `pgoutput` logical replication protocol, version 1.
//!
//! The walsender wraps each message in an `XLogData` copy message; this module reads the
//! message inside. Values arrive in the text output format of the replication session, which
//! the connection pins (ISO dates, UTC, hex bytea), so one text decoder serves both the
//! initial snapshot and the stream.

use bytes::{Buf, Bytes};

/// A pgoutput message that could not be decoded (truncated, unknown tag).
#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(pub String);

type Result<T> = std::result::Result<T, DecodeError>;

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// An out-of-line TOAST value the UPDATE did not change: no data is sent, the row keeps
    /// its previous value.
    UnchangedToast,
    Text(Bytes),
}

/// A column of a [`Relation`] message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 1: part of the replica identity (key).
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The shape of a table as the walsender describes it before its first change and after DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `f` full, `i` index, `n` nothing.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// Which old tuple an UPDATE or DELETE carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: replica identity (key) columns only; others are NULL.
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Datum>,
    },
    Update {
        relation: u32,
        old: Option<(OldKind, Vec<Datum>)>,
        new: Vec<Datum>,
    },
    Delete {
        relation: u32,
        old: (OldKind, Vec<Datum>),
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Type, origin and logical messages: nothing to apply.
    Other(u8),
}

fn need(buf: &Bytes, n: usize, what: &str) -> Result<()> {
    if buf.remaining() < n { Err(DecodeError(format!("truncated {what}"))) } else { Ok(()) }
}

fn u8_(buf: &mut Bytes, what: &str) -> Result<u8> {
    need(buf, 1, what)?;
    Ok(buf.get_u8())
}

fn u32_(buf: &mut Bytes, what: &str) -> Result<u32> {
    need(buf, 4, what)?;
    Ok(buf.get_u32())
}

fn u64_(buf: &mut Bytes, what: &str) -> Result<u64> {
    need(buf, 8, what)?;
    Ok(buf.get_u64())
}

fn cstring(buf: &mut Bytes, what: &str) -> Result<String> {
    let end = buf.iter().position(|b| *b == 0).ok_or_else(|| DecodeError(format!("unterminated {what}")))?;
    let s = String::from_utf8(buf.split_to(end).to_vec()).map_err(|_| DecodeError(format!("{what} is not UTF-8")))?;
    buf.advance(1);
    Ok(s)
}

fn tuple(buf: &mut Bytes) -> Result<Vec<Datum>> {
    need(buf, 2, "tuple")?;
    let n = buf.get_u16() as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        match u8_(buf, "tuple column")? {
            b'n' => out.push(Datum::Null),
            b'u' => out.push(Datum::UnchangedToast),
            b't' | b'b' => {
                let len = u32_(buf, "value length")? as usize;
                need(buf, len, "value")?;
                out.push(Datum::Text(buf.split_to(len)));
            }
            other => return Err(DecodeError(format!("unknown tuple column kind {:?}", other as char))),
        }
    }
    Ok(out)
}

fn old_tuple(kind: u8, buf: &mut Bytes) -> Result<(OldKind, Vec<Datum>)> {
    let kind = match kind {
        b'K' => OldKind::Key,
        b'O' => OldKind::Full,
        other => return Err(DecodeError(format!("unknown old tuple kind {:?}", other as char))),
    };
    Ok((kind, tuple(buf)?))
}

/// Decodes one pgoutput message (the payload of an `XLogData`).
///
/// # Errors
/// A truncated or unknown message.
pub fn decode(mut buf: Bytes) -> Result<Message> {
    let tag = u8_(&mut buf, "message tag")?;
    Ok(match tag {
        b'B' => {
            let final_lsn = u64_(&mut buf, "begin")?;
            let _commit_time = u64_(&mut buf, "begin")?;
            let xid = u32_(&mut buf, "begin")?;
            Message::Begin { final_lsn, xid }
        }
        b'C' => {
            let _flags = u8_(&mut buf, "commit")?;
            let commit_lsn = u64_(&mut buf, "commit")?;
            let end_lsn = u64_(&mut buf, "commit")?;
            Message::Commit { commit_lsn, end_lsn }
        }
        b'R' => {
            let id = u32_(&mut buf, "relation")?;
            let namespace = cstring(&mut buf, "relation namespace")?;
            let name = cstring(&mut buf, "relation name")?;
            let replica_identity = u8_(&mut buf, "relation")?;
            need(&buf, 2, "relation")?;
            let n = buf.get_u16() as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = u8_(&mut buf, "relation column")?;
                let name = cstring(&mut buf, "column name")?;
                let type_oid = u32_(&mut buf, "relation column")?;
                let type_modifier = u32_(&mut buf, "relation column")? as i32;
                columns.push(RelationColumn { flags, name, type_oid, type_modifier });
            }
            Message::Relation(Relation { id, namespace, name, replica_identity, columns })
        }
        b'I' => {
            let relation = u32_(&mut buf, "insert")?;
            let _new = u8_(&mut buf, "insert")?;
            Message::Insert { relation, new: tuple(&mut buf)? }
        }
        b'U' => {
            let relation = u32_(&mut buf, "update")?;
            let mut kind = u8_(&mut buf, "update")?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(old_tuple(kind, &mut buf)?);
                kind = u8_(&mut buf, "update")?;
            }
            if kind != b'N' {
                return Err(DecodeError(format!("update without a new tuple (found {:?})", kind as char)));
            }
            Message::Update { relation, old, new: tuple(&mut buf)? }
        }
        b'D' => {
            let relation = u32_(&mut buf, "delete")?;
            let kind = u8_(&mut buf, "delete")?;
            Message::Delete { relation, old: old_tuple(kind, &mut buf)? }
        }
        b'T' => {
            let n = u32_(&mut buf, "truncate")? as usize;
            let _options = u8_(&mut buf, "truncate")?;
            let mut relations = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                relations.push(u32_(&mut buf, "truncate")?);
            }
            Message::Truncate { relations }
        }
        b'Y' | b'O' | b'M' => Message::Other(tag),
        other => return Err(DecodeError(format!("unknown message tag {:?}", other as char))),
    })
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    #[test]
    fn decodes_relation_and_update_with_unchanged_toast() {
        let mut r = bytes::BytesMut::new();
        r.put_u8(b'R');
        r.put_u32(42);
        r.put_slice(b"public\0orders\0");
        r.put_u8(b'd');
        r.put_u16(2);
        r.put_u8(1);
        r.put_slice(b"id\0");
        r.put_u32(23);
        r.put_i32(-1);
        r.put_u8(0);
        r.put_slice(b"note\0");
        r.put_u32(25);
        r.put_i32(-1);
        let Message::Relation(rel) = decode(r.freeze()).expect("relation") else { panic!("not a relation") };
        assert_eq!(rel.name, "orders");
        assert_eq!(rel.columns[0].flags, 1);
        assert_eq!(rel.columns[1].type_oid, 25);

        let mut u = bytes::BytesMut::new();
        u.put_u8(b'U');
        u.put_u32(42);
        u.put_u8(b'N');
        u.put_u16(2);
        u.put_u8(b't');
        u.put_u32(1);
        u.put_slice(b"7");
        u.put_u8(b'u');
        let msg = decode(u.freeze()).expect("update");
        assert_eq!(
            msg,
            Message::Update {
                relation: 42,
                old: None,
                new: vec![Datum::Text(Bytes::from_static(b"7")), Datum::UnchangedToast]
            }
        );
    }

    #[test]
    fn truncated_message_is_an_error_not_a_panic() {
        assert!(decode(Bytes::from_static(b"U\0\0")).is_err());
        assert!(decode(Bytes::from_static(b"Z")).is_err());
    }
}
