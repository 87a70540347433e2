//! `ENCODE AVRO (schema.registry = 'http://...')`: Avro records in the Confluent wire format.
//!
//! A record is a magic byte `0`, the writer schema's id (4 bytes, big-endian) and the Avro
//! binary body. The writer schema is fetched once per id from the registry
//! (`GET /schemas/ids/{id}`) and cached. Each record is transcoded, driven by its writer
//! schema, into a JSON object that the JSON path of [`super::decode`] then decodes into the
//! declared columns by name. That makes the declared columns the reader schema: fields the
//! writer has and the source does not declare are skipped, declared columns the writer lacks
//! are NULL (a NOT NULL one makes the record bad), and numbers widen to the declared types —
//! so schema evolution upstream (fields added or removed with defaults) needs no change here,
//! and the `UPSERT`/`DEBEZIUM` envelopes work as with JSON.
//!
//! Logical types: `date` → `YYYY-MM-DD`, `time-millis|micros` → `HH:MM:SS.f`,
//! `timestamp-*` and `local-timestamp-*` → `YYYY-MM-DD HH:MM:SS.f` (UTC), `decimal` → its
//! exact decimal text. `bytes`/`fixed` become text (lossy UTF-8), enums their symbol, `NaN`
//! and infinities NULL. Only `http://` registries are supported (no TLS).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a schema id the registry could not give is not asked for again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long one registry request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Nesting deeper than this is refused (a recursive schema with hostile data).
const MAX_DEPTH: usize = 64;

/// A type of a parsed Avro schema; named types refer to each other by index.
#[derive(Debug, Clone)]
enum Node {
    Null,
    Boolean,
    Int(Option<Logical>),
    Long(Option<Logical>),
    Float,
    Double,
    Bytes(Option<Logical>),
    String,
    Record {
        fields: Vec<(String, usize)>,
    },
    Enum {
        symbols: Vec<String>,
    },
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Fixed {
        size: usize,
        logical: Option<Logical>,
    },
    /// A named type being defined (its fields are not parsed yet).
    Placeholder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logical {
    Date,
    TimeMillis,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    TimestampNanos,
    Decimal { scale: u32 },
}

/// A parsed Avro schema.
#[derive(Debug, Clone)]
pub struct AvroSchema {
    nodes: Vec<Node>,
    root: usize,
}

struct Parser {
    nodes: Vec<Node>,
    names: HashMap<String, usize>,
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() { name.to_string() } else { format!("{namespace}.{name}") }
}

impl Parser {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn parse(&mut self, v: &Value, namespace: &str) -> Result<usize, String> {
        match v {
            Value::String(s) => self.named_or_primitive(s, namespace, None),
            Value::Array(branches) => {
                let branches = branches.iter().map(|b| self.parse(b, namespace)).collect::<Result<Vec<_>, _>>()?;
                Ok(self.push(Node::Union(branches)))
            }
            Value::Object(o) => {
                let logical = o.get("logicalType").and_then(Value::as_str);
                let ty = o.get("type").ok_or("an Avro schema object has no \"type\"")?;
                let ty = match ty {
                    Value::String(s) => s.as_str(),
                    // {"type": {...}} or {"type": [...]}: the inner schema.
                    other => return self.parse(other, namespace),
                };
                let logical = match (ty, logical) {
                    ("int", Some("date")) => Some(Logical::Date),
                    ("int", Some("time-millis")) => Some(Logical::TimeMillis),
                    ("long", Some("time-micros")) => Some(Logical::TimeMicros),
                    ("long", Some("timestamp-millis" | "local-timestamp-millis")) => Some(Logical::TimestampMillis),
                    ("long", Some("timestamp-micros" | "local-timestamp-micros")) => Some(Logical::TimestampMicros),
                    ("long", Some("timestamp-nanos" | "local-timestamp-nanos")) => Some(Logical::TimestampNanos),
                    ("bytes" | "fixed", Some("decimal")) => {
                        let scale = o.get("scale").and_then(Value::as_u64).unwrap_or(0);
                        Some(Logical::Decimal { scale: u32::try_from(scale).map_err(|_| "decimal scale too large")? })
                    }
                    // Unknown logical types fall back to their underlying type (as the spec says).
                    _ => None,
                };
                let name = o.get("name").and_then(Value::as_str);
                let ns = o.get("namespace").and_then(Value::as_str).unwrap_or(namespace);
                match ty {
                    "record" | "error" => {
                        let name = name.ok_or("an Avro record has no name")?;
                        let full = full_name(name, ns);
                        let inner_ns = full.rsplit_once('.').map_or("", |(n, _)| n).to_string();
                        let index = self.push(Node::Placeholder);
                        self.names.insert(full, index);
                        let mut fields = Vec::new();
                        for f in o.get("fields").and_then(Value::as_array).ok_or("an Avro record has no fields")? {
                            let fname = f.get("name").and_then(Value::as_str).ok_or("an Avro field has no name")?;
                            let ftype = f.get("type").ok_or("an Avro field has no type")?;
                            fields.push((fname.to_string(), self.parse(ftype, &inner_ns)?));
                        }
                        self.nodes[index] = Node::Record { fields };
                        Ok(index)
                    }
                    "enum" => {
                        let symbols = o
                            .get("symbols")
                            .and_then(Value::as_array)
                            .ok_or("an Avro enum has no symbols")?
                            .iter()
                            .map(|s| s.as_str().map(str::to_string).ok_or("an Avro enum symbol is not a string"))
                            .collect::<Result<Vec<_>, _>>()?;
                        let index = self.push(Node::Enum { symbols });
                        if let Some(name) = name {
                            self.names.insert(full_name(name, ns), index);
                        }
                        Ok(index)
                    }
                    "fixed" => {
                        let size = o.get("size").and_then(Value::as_u64).ok_or("an Avro fixed has no size")?;
                        let size = usize::try_from(size).map_err(|_| "Avro fixed size too large")?;
                        let index = self.push(Node::Fixed { size, logical });
                        if let Some(name) = name {
                            self.names.insert(full_name(name, ns), index);
                        }
                        Ok(index)
                    }
                    "array" => {
                        let items = self.parse(o.get("items").ok_or("an Avro array has no items")?, namespace)?;
                        Ok(self.push(Node::Array(items)))
                    }
                    "map" => {
                        let values = self.parse(o.get("values").ok_or("an Avro map has no values")?, namespace)?;
                        Ok(self.push(Node::Map(values)))
                    }
                    other => self.named_or_primitive(other, namespace, logical),
                }
            }
            other => Err(format!("not an Avro schema: {other}")),
        }
    }

    fn named_or_primitive(&mut self, name: &str, namespace: &str, logical: Option<Logical>) -> Result<usize, String> {
        let node = match name {
            "null" => Node::Null,
            "boolean" => Node::Boolean,
            "int" => Node::Int(logical),
            "long" => Node::Long(logical),
            "float" => Node::Float,
            "double" => Node::Double,
            "bytes" => Node::Bytes(logical),
            "string" => Node::String,
            named => {
                return self
                    .names
                    .get(&full_name(named, namespace))
                    .or_else(|| self.names.get(named))
                    .copied()
                    .ok_or_else(|| format!("unknown Avro type \"{named}\""));
            }
        };
        Ok(self.push(node))
    }
}

impl AvroSchema {
    /// Parses a schema from its JSON text.
    ///
    /// # Errors
    /// When the text is not a valid Avro schema (or uses a name it does not define).
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("the Avro schema is not JSON: {e}"))?;
        let mut parser = Parser { nodes: Vec::new(), names: HashMap::new() };
        let root = parser.parse(&value, "")?;
        Ok(Self { nodes: parser.nodes, root })
    }

    /// Transcodes one Avro binary body written with this schema into JSON, appended to `out`.
    ///
    /// # Errors
    /// When the body is truncated, malformed or longer than the schema says.
    pub fn to_json(&self, mut body: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.write(self.root, &mut body, out, 0)?;
        if !body.is_empty() {
            return Err(format!("{} bytes left after the Avro record (wrong schema?)", body.len()));
        }
        Ok(())
    }

    fn write(&self, node: usize, input: &mut &[u8], out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("the Avro record nests too deeply".into());
        }
        match &self.nodes[node] {
            Node::Null => out.extend_from_slice(b"null"),
            Node::Boolean => match take(input, 1)?[0] {
                0 => out.extend_from_slice(b"false"),
                1 => out.extend_from_slice(b"true"),
                b => return Err(format!("invalid Avro boolean byte {b}")),
            },
            Node::Int(logical) | Node::Long(logical) => {
                let v = read_long(input)?;
                write_number(v, *logical, out)?;
            }
            Node::Float => {
                let b = take(input, 4)?;
                write_float(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])), out);
            }
            Node::Double => {
                let b = take(input, 8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                write_float(f64::from_le_bytes(a), out);
            }
            Node::Bytes(logical) => {
                let len = read_len(input)?;
                write_bytes(take(input, len)?, *logical, out)?;
            }
            Node::Fixed { size, logical } => write_bytes(take(input, *size)?, *logical, out)?,
            Node::String => {
                let len = read_len(input)?;
                let s = std::str::from_utf8(take(input, len)?).map_err(|_| "an Avro string is not UTF-8")?;
                write_json_string(s, out);
            }
            Node::Record { fields } => {
                out.push(b'{');
                for (i, (name, field)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_json_string(name, out);
                    out.push(b':');
                    self.write(*field, input, out, depth + 1)?;
                }
                out.push(b'}');
            }
            Node::Enum { symbols } => {
                let i = read_long(input)?;
                let s = usize::try_from(i).ok().and_then(|i| symbols.get(i)).ok_or("Avro enum index out of range")?;
                write_json_string(s, out);
            }
            Node::Array(items) => {
                out.push(b'[');
                let mut first = true;
                while let Some(count) = read_block(input)? {
                    for _ in 0..count {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        self.write(*items, input, out, depth + 1)?;
                    }
                }
                out.push(b']');
            }
            Node::Map(values) => {
                out.push(b'{');
                let mut first = true;
                while let Some(count) = read_block(input)? {
                    for _ in 0..count {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        let len = read_len(input)?;
                        let key = std::str::from_utf8(take(input, len)?).map_err(|_| "an Avro map key is not UTF-8")?;
                        write_json_string(key, out);
                        out.push(b':');
                        self.write(*values, input, out, depth + 1)?;
                    }
                }
                out.push(b'}');
            }
            Node::Union(branches) => {
                let i = read_long(input)?;
                let branch =
                    usize::try_from(i).ok().and_then(|i| branches.get(i)).ok_or("Avro union index out of range")?;
                self.write(*branch, input, out, depth + 1)?;
            }
            Node::Placeholder => return Err("the Avro schema refers to an incomplete type".into()),
        }
        Ok(())
    }
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if input.len() < n {
        return Err("the Avro record is truncated".into());
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

/// A zig-zag varint (Avro `int` and `long`).
fn read_long(input: &mut &[u8]) -> Result<i64, String> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = take(input, 1)?[0];
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err("an Avro varint is too long".into())
}

fn read_len(input: &mut &[u8]) -> Result<usize, String> {
    let n = read_long(input)?;
    let n = usize::try_from(n).map_err(|_| "negative Avro length")?;
    if n > input.len() {
        return Err("the Avro record is truncated".into());
    }
    Ok(n)
}

/// The item count of the next block of an array or map; `None` at the end.
fn read_block(input: &mut &[u8]) -> Result<Option<u64>, String> {
    let count = read_long(input)?;
    if count == 0 {
        return Ok(None);
    }
    if count < 0 {
        read_long(input)?; // the block's size in bytes, not needed
    }
    let count = count.unsigned_abs();
    // Every item takes a byte unless its type is empty; bound what hostile input can ask for.
    if count > input.len() as u64 + 1024 {
        return Err(format!("implausible Avro block of {count} items"));
    }
    Ok(Some(count))
}

fn write_number(v: i64, logical: Option<Logical>, out: &mut Vec<u8>) -> Result<(), String> {
    use arrow::temporal_conversions as t;
    let text = match logical {
        None | Some(Logical::Decimal { .. }) => {
            let _ = write!(out, "{v}");
            return Ok(());
        }
        Some(Logical::Date) => {
            t::date32_to_datetime(i32::try_from(v).map_err(|_| "Avro date out of range")?).map(|d| d.date().to_string())
        }
        Some(Logical::TimeMillis) => {
            t::time32ms_to_time(i32::try_from(v).map_err(|_| "Avro time out of range")?).map(|t| t.to_string())
        }
        Some(Logical::TimeMicros) => t::time64us_to_time(v).map(|t| t.to_string()),
        Some(Logical::TimestampMillis) => t::timestamp_ms_to_datetime(v).map(|d| d.to_string()),
        Some(Logical::TimestampMicros) => t::timestamp_us_to_datetime(v).map(|d| d.to_string()),
        Some(Logical::TimestampNanos) => t::timestamp_ns_to_datetime(v).map(|d| d.to_string()),
    };
    let text = text.ok_or_else(|| format!("Avro time value {v} out of range"))?;
    write_json_string(&text, out);
    Ok(())
}

fn write_float(v: f64, out: &mut Vec<u8>) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_bytes(b: &[u8], logical: Option<Logical>, out: &mut Vec<u8>) -> Result<(), String> {
    match logical {
        Some(Logical::Decimal { scale }) => {
            if b.len() > 16 {
                return Err("Avro decimal wider than 128 bits".into());
            }
            // Big-endian two's complement, sign-extended to 128 bits.
            let mut unscaled: i128 = if b.first().is_some_and(|x| x & 0x80 != 0) { -1 } else { 0 };
            for x in b {
                unscaled = (unscaled << 8) | i128::from(*x);
            }
            let digits = unscaled.unsigned_abs().to_string();
            let scale = scale as usize;
            let (int, frac) =
                if digits.len() > scale { digits.split_at(digits.len() - scale) } else { ("0", digits.as_str()) };
            let sign = if unscaled < 0 { "-" } else { "" };
            let text = if scale == 0 {
                format!("{sign}{int}")
            } else {
                format!("{sign}{int}.{}{frac}", "0".repeat(scale.saturating_sub(frac.len())))
            };
            write_json_string(&text, out);
        }
        _ => write_json_string(&String::from_utf8_lossy(b), out),
    }
    Ok(())
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// A Confluent schema registry client: writer schemas by id, cached.
#[derive(Debug)]
pub struct SchemaRegistry {
    /// `host:port` and the base path of each registry URL, tried in order.
    endpoints: Vec<(String, String)>,
    cache: HashMap<u32, Arc<AvroSchema>>,
    failed: HashMap<u32, (Instant, String)>,
}

impl SchemaRegistry {
    /// `urls`: one or more `http://host[:port][/path]`, comma-separated.
    ///
    /// # Errors
    /// When a URL is not `http://`.
    pub fn new(urls: &str) -> Result<Self, String> {
        Ok(Self { endpoints: registry_endpoints(urls)?, cache: HashMap::new(), failed: HashMap::new() })
    }

    /// The writer schema with this id.
    ///
    /// # Errors
    /// When no registry gives a parsable Avro schema for the id (asked again after a while).
    pub fn schema(&mut self, id: u32) -> Result<Arc<AvroSchema>, String> {
        if let Some(s) = self.cache.get(&id) {
            return Ok(s.clone());
        }
        if let Some((at, error)) = self.failed.get(&id)
            && at.elapsed() < RETRY_AFTER
        {
            return Err(error.clone());
        }
        let mut error = String::new();
        for (authority, base) in &self.endpoints {
            match fetch_schema(authority, &format!("{base}/schemas/ids/{id}")) {
                Ok(text) => match AvroSchema::parse(&text) {
                    Ok(schema) => {
                        let schema = Arc::new(schema);
                        self.cache.insert(id, schema.clone());
                        self.failed.remove(&id);
                        return Ok(schema);
                    }
                    Err(e) => error = format!("schema {id} from the registry: {e}"),
                },
                Err(e) => {
                    tracing::warn!(registry = %authority, schema_id = id, error = %e, "schema registry request failed");
                    error = format!("schema {id} from the registry at {authority}: {e}");
                }
            }
        }
        self.failed.insert(id, (Instant::now(), error.clone()));
        Err(error)
    }

    /// Transcodes a Confluent-framed Avro record into JSON, appended to `out`.
    ///
    /// # Errors
    /// Not Confluent-framed, unknown schema id, or a body that does not decode.
    pub fn to_json(&mut self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if record.len() < 5 || record[0] != 0 {
            return Err("not a schema-registry Avro record (magic byte 0 and a 4-byte schema id)".into());
        }
        let id = u32::from_be_bytes([record[1], record[2], record[3], record[4]]);
        let schema = self.schema(id)?;
        let start = out.len();
        let result = schema.to_json(&record[5..], out).map_err(|e| format!("Avro schema {id}: {e}"));
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

/// `host:port` and base path of each URL of `schema.registry` (`http://host[:port][/path]`,
/// comma-separated).
///
/// # Errors
/// A URL that is not `http://`, or none at all.
pub(crate) fn registry_endpoints(urls: &str) -> Result<Vec<(String, String)>, String> {
    let mut endpoints = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("schema.registry = '{url}': only http:// registries are supported"))?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("schema.registry = '{url}': expected http://host[:port][/path]"));
        }
        let authority = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
        let path = path.trim_end_matches('/');
        endpoints.push((authority, if path.is_empty() { String::new() } else { format!("/{path}") }));
    }
    if endpoints.is_empty() {
        return Err("schema.registry needs a URL".into());
    }
    Ok(endpoints)
}

/// One HTTP/1.0 request to a registry (the server closes the connection, so no chunking):
/// `method path`, with a JSON `body` when given; the answer's JSON body on status 200.
pub(crate) fn registry_request(authority: &str, method: &str, path: &str, body: Option<&str>) -> Result<Value, String> {
    use std::net::ToSocketAddrs;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {authority}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\n\
         Accept: application/vnd.schemaregistry.v1+json, application/json\r\n"
    );
    match body {
        Some(body) => {
            request.push_str(&format!(
                "Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        None => request.push_str("\r\n"),
    }
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.take(16 << 20).read_to_end(&mut response).map_err(|e| e.to_string())?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or("malformed HTTP response")?;
    let body = &response[split + 4..];
    if status != 200 {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])));
    }
    serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))
}

/// `GET path`: the `schema` field of the registry's answer.
fn fetch_schema(authority: &str, path: &str) -> Result<String, String> {
    let answer = registry_request(authority, "GET", path, None)?;
    if let Some(kind) = answer.get("schemaType").and_then(Value::as_str)
        && !kind.eq_ignore_ascii_case("AVRO")
    {
        return Err(format!("schema type {kind}, not AVRO"));
    }
    answer.get("schema").and_then(Value::as_str).map(str::to_string).ok_or_else(|| "the answer has no schema".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(v: i64, out: &mut Vec<u8>) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }

    fn string(s: &str, out: &mut Vec<u8>) {
        long(s.len() as i64, out);
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn transcodes_types_and_logical_types() -> Result<(), String> {
        let schema = AvroSchema::parse(
            r#"{"type":"record","name":"R","namespace":"n","fields":[
                {"name":"id","type":"long"},
                {"name":"name","type":["null","string"]},
                {"name":"ok","type":"boolean"},
                {"name":"f","type":"float"},
                {"name":"d","type":"double"},
                {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"day","type":{"type":"int","logicalType":"date"}},
                {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
                {"name":"color","type":{"type":"enum","name":"Color","symbols":["RED","GREEN"]}},
                {"name":"tags","type":{"type":"array","items":"string"}},
                {"name":"attrs","type":{"type":"map","values":"int"}},
                {"name":"next","type":["null","R"]}
            ]}"#,
        )?;
        let mut body = Vec::new();
        long(-3, &mut body);
        long(1, &mut body);
        string("a\"b", &mut body);
        body.push(1);
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&f64::NAN.to_le_bytes());
        long(1_767_225_600_123, &mut body); // 2026-01-01 00:00:00.123
        long(20_454, &mut body); // 2026-01-01
        long(2, &mut body);
        body.extend_from_slice(&(-12_345i16).to_be_bytes()); // -123.45
        long(1, &mut body);
        long(2, &mut body);
        string("x", &mut body);
        string("y", &mut body);
        long(0, &mut body);
        long(-1, &mut body); // a block of one entry, with its byte size
        long(3, &mut body);
        string("k", &mut body);
        long(7, &mut body);
        long(0, &mut body);
        long(0, &mut body);
        let mut out = Vec::new();
        schema.to_json(&body, &mut out)?;
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"id":-3,"name":"a\"b","ok":true,"f":1.5,"d":null,"ts":"2026-01-01 00:00:00.123","day":"2026-01-01","amount":"-123.45","color":"GREEN","tags":["x","y"],"attrs":{"k":7},"next":null}"#
        );
        // Truncated and overlong bodies are errors.
        assert!(schema.to_json(&body[..body.len() - 3], &mut Vec::new()).is_err());
        let mut longer = body.clone();
        longer.push(0);
        assert!(schema.to_json(&longer, &mut Vec::new()).is_err());
        Ok(())
    }

    #[test]
    fn registry_urls() {
        assert!(SchemaRegistry::new("https://r:8081").is_err());
        let r = SchemaRegistry::new("http://r:8081/base/, http://s").map_err(|e| e.to_string());
        let endpoints = r.map(|r| r.endpoints).unwrap_or_default();
        assert_eq!(endpoints, vec![("r:8081".into(), "/base".into()), ("s:80".into(), String::new())]);
    }
}
