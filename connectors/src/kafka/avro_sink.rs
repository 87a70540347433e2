//! `ENCODE AVRO` for the Kafka sink: rows written as Avro records in the Confluent wire
//! format, with schemas derived from the sink's columns and registered in a schema registry.
//!
//! The value schema is a record with one field per column (a nullable column is a union of
//! `null` and its type); the key schema has the `primary_key` columns. Both are registered
//! under the subjects `<topic>-value` and `<topic>-key` (the registry's default
//! `TopicNameStrategy`) when the sink is created; the ids the registry gives are kept with the
//! sink, so a running sink does not depend on the registry. `FORMAT DEBEZIUM` wraps the row
//! record in `{before, after, op, ts_ms}`.
//!
//! Types: booleans, integers (`int` up to 32 bits, `long` above), `float`, `double`, `string`,
//! `bytes`, `date`, `time-micros`, `timestamp-micros` (with a time zone) and
//! `local-timestamp-micros` (without), and `decimal` (bytes). Other column types are refused
//! when the sink is created, naming the column.

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Decimal128Array, LargeBinaryArray, LargeStringArray,
    StringArray, StringViewArray,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{
    DataType, Date32Type, Field, Float32Type, Float64Type, Int32Type, Int64Type, Schema, Time64MicrosecondType,
    TimeUnit, TimestampMicrosecondType,
};
use serde_json::{Value, json};

use super::avro::{registry_endpoints, registry_request};

/// How one column is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Boolean,
    Int,
    Long,
    Float,
    Double,
    String,
    Bytes,
    Date,
    TimeMicros,
    TimestampMicros,
    Decimal,
}

/// The Avro type of an Arrow type, or why there is none.
fn kind_of(t: &DataType) -> Option<(Kind, Value)> {
    Some(match t {
        DataType::Boolean => (Kind::Boolean, json!("boolean")),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            (Kind::Int, json!("int"))
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => (Kind::Long, json!("long")),
        DataType::Float16 | DataType::Float32 => (Kind::Float, json!("float")),
        DataType::Float64 => (Kind::Double, json!("double")),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => (Kind::String, json!("string")),
        DataType::Binary | DataType::LargeBinary => (Kind::Bytes, json!("bytes")),
        DataType::Date32 | DataType::Date64 => (Kind::Date, json!({"type": "int", "logicalType": "date"})),
        DataType::Time32(_) | DataType::Time64(_) => {
            (Kind::TimeMicros, json!({"type": "long", "logicalType": "time-micros"}))
        }
        DataType::Timestamp(_, tz) => {
            let logical = if tz.is_some() { "timestamp-micros" } else { "local-timestamp-micros" };
            (Kind::TimestampMicros, json!({"type": "long", "logicalType": logical}))
        }
        DataType::Decimal128(p, s) => {
            (Kind::Decimal, json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": (*s).max(0)}))
        }
        _ => return None,
    })
}

/// A record schema for some columns of the sink, and how to write its rows.
#[derive(Debug, Clone)]
pub struct AvroRecordWriter {
    columns: Vec<(usize, Kind, bool)>,
    schema: Value,
}

/// An Avro name: letters, digits and `_`, not starting with a digit.
fn avro_name(text: &str) -> String {
    let mut name: String = text.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

impl AvroRecordWriter {
    /// The record `name` of `columns` of `schema` (all of them when `None`).
    ///
    /// # Errors
    /// A column whose type has no Avro counterpart here.
    pub fn new(schema: &Schema, columns: Option<&[usize]>, name: &str) -> Result<Self, String> {
        let picked: Vec<usize> = columns.map_or_else(|| (0..schema.fields().len()).collect(), <[usize]>::to_vec);
        let mut fields = Vec::new();
        let mut out = Vec::new();
        for c in picked {
            let field: &Field = schema.fields().get(c).ok_or_else(|| format!("no column {c}"))?;
            let (kind, avro) = kind_of(field.data_type()).ok_or_else(|| {
                format!(
                    "column \"{}\" of type {} cannot be written as Avro; cast it to VARCHAR (or a number) in the sink's query",
                    field.name(),
                    field.data_type()
                )
            })?;
            let nullable = field.is_nullable();
            let mut entry = json!({"name": avro_name(field.name()), "type": avro});
            if nullable {
                entry = json!({"name": avro_name(field.name()), "type": ["null", avro], "default": null});
            }
            fields.push(entry);
            out.push((c, kind, nullable));
        }
        let schema = json!({"type": "record", "name": avro_name(name), "namespace": "eddy", "fields": fields});
        Ok(Self { columns: out, schema })
    }

    /// The schema as JSON.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// The columns the writer reads, cast to the types it writes (once per batch).
    ///
    /// # Errors
    /// A cast that fails (a value out of range).
    pub fn prepare(&self, columns: &[ArrayRef]) -> Result<Vec<ArrayRef>, String> {
        let options = CastOptions { safe: false, ..Default::default() };
        self.columns
            .iter()
            .map(|(c, kind, _)| {
                let array = columns.get(*c).ok_or_else(|| format!("no column {c}"))?;
                let target = match (kind, array.data_type()) {
                    (Kind::Int, DataType::Int32) | (Kind::Long, DataType::Int64) => return Ok(array.clone()),
                    (Kind::Int, _) => DataType::Int32,
                    (Kind::Long, _) => DataType::Int64,
                    (Kind::Float, _) => DataType::Float32,
                    (Kind::Date, _) => DataType::Date32,
                    (Kind::TimeMicros, _) => DataType::Time64(TimeUnit::Microsecond),
                    (Kind::TimestampMicros, _) => DataType::Timestamp(TimeUnit::Microsecond, None),
                    _ => return Ok(array.clone()),
                };
                cast_with_options(array, &target, &options).map_err(|e| format!("column {c}: {e}"))
            })
            .collect()
    }

    /// Appends row `row` of `prepared` (from [`Self::prepare`]) as an Avro record body.
    ///
    /// # Errors
    /// A NULL in a column declared NOT NULL.
    pub fn write(&self, prepared: &[ArrayRef], row: usize, out: &mut Vec<u8>) -> Result<(), String> {
        for ((c, kind, nullable), array) in self.columns.iter().zip(prepared) {
            if *nullable {
                if array.is_null(row) {
                    write_long(0, out);
                    continue;
                }
                write_long(1, out);
            } else if array.is_null(row) {
                return Err(format!("column {c} is NULL, but its Avro type is not nullable"));
            }
            write_value(*kind, array, row, out)?;
        }
        Ok(())
    }
}

fn write_value(kind: Kind, array: &ArrayRef, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let wrong = || format!("unexpected array type {} for Avro {kind:?}", array.data_type());
    match kind {
        Kind::Boolean => {
            let a = array.as_any().downcast_ref::<BooleanArray>().ok_or_else(wrong)?;
            out.push(u8::from(a.value(row)));
        }
        Kind::Int => write_long(i64::from(array.as_primitive_opt::<Int32Type>().ok_or_else(wrong)?.value(row)), out),
        Kind::Long => write_long(array.as_primitive_opt::<Int64Type>().ok_or_else(wrong)?.value(row), out),
        Kind::Float => {
            out.extend_from_slice(&array.as_primitive_opt::<Float32Type>().ok_or_else(wrong)?.value(row).to_le_bytes());
        }
        Kind::Double => {
            out.extend_from_slice(&array.as_primitive_opt::<Float64Type>().ok_or_else(wrong)?.value(row).to_le_bytes());
        }
        Kind::String => {
            let text = if let Some(a) = array.as_any().downcast_ref::<StringArray>() {
                a.value(row)
            } else if let Some(a) = array.as_any().downcast_ref::<LargeStringArray>() {
                a.value(row)
            } else {
                array.as_any().downcast_ref::<StringViewArray>().ok_or_else(wrong)?.value(row)
            };
            write_bytes(text.as_bytes(), out);
        }
        Kind::Bytes => {
            let bytes = if let Some(a) = array.as_any().downcast_ref::<BinaryArray>() {
                a.value(row)
            } else {
                array.as_any().downcast_ref::<LargeBinaryArray>().ok_or_else(wrong)?.value(row)
            };
            write_bytes(bytes, out);
        }
        Kind::Date => write_long(i64::from(array.as_primitive_opt::<Date32Type>().ok_or_else(wrong)?.value(row)), out),
        Kind::TimeMicros => {
            write_long(array.as_primitive_opt::<Time64MicrosecondType>().ok_or_else(wrong)?.value(row), out)
        }
        Kind::TimestampMicros => {
            write_long(array.as_primitive_opt::<TimestampMicrosecondType>().ok_or_else(wrong)?.value(row), out);
        }
        Kind::Decimal => {
            let a = array.as_any().downcast_ref::<Decimal128Array>().ok_or_else(wrong)?;
            write_bytes(&decimal_bytes(a.value(row)), out);
        }
    }
    Ok(())
}

/// Avro's `long`: zig-zag, then base-128 varint.
pub fn write_long(v: i64, out: &mut Vec<u8>) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_bytes(b: &[u8], out: &mut Vec<u8>) {
    write_long(b.len() as i64, out);
    out.extend_from_slice(b);
}

/// The shortest big-endian two's complement form of an unscaled decimal.
fn decimal_bytes(v: i128) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        // A leading byte is redundant when it only repeats the sign of the next one.
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

/// The Debezium envelope around a row record: `{before, after, op, ts_ms}`.
pub fn debezium_schema(row: &Value, name: &str) -> Value {
    let row_name = row.get("name").and_then(Value::as_str).unwrap_or("row").to_string();
    json!({
        "type": "record",
        "name": avro_name(name),
        "namespace": "eddy",
        "fields": [
            {"name": "before", "type": ["null", row], "default": null},
            {"name": "after", "type": ["null", format!("eddy.{row_name}")], "default": null},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": "long"}
        ]
    })
}

/// Registers `schema` under `subject` in the registry at `registry` (the first URL that
/// answers) and returns its id; registering a schema the subject has returns the same id.
///
/// # Errors
/// No registry answered with an id; the message has the registry's reason.
pub fn register(registry: &str, subject: &str, schema: &Value) -> Result<u32, String> {
    let body = json!({"schema": schema.to_string()}).to_string();
    let mut error = String::from("schema.registry names no URL");
    for (authority, base) in registry_endpoints(registry)? {
        match registry_request(&authority, "POST", &format!("{base}/subjects/{subject}/versions"), Some(&body)) {
            Ok(answer) => {
                return answer
                    .get("id")
                    .and_then(Value::as_u64)
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| format!("the registry at {authority} answered without an id: {answer}"));
            }
            Err(e) => error = format!("registering the Avro schema of subject {subject} at {authority}: {e}"),
        }
    }
    Err(error)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Int32Array, Int64Array, TimestampMicrosecondArray};

    use super::*;

    #[test]
    fn longs_and_decimals_in_avro_form() {
        let mut out = Vec::new();
        for v in [0i64, -1, 1, -64, 64, i64::MAX, i64::MIN] {
            write_long(v, &mut out);
        }
        // The examples of the Avro specification, then the extremes (10 bytes each).
        assert_eq!(&out[..6], &[0x00, 0x01, 0x02, 0x7f, 0x80, 0x01]);
        assert_eq!(out.len(), 6 + 20);
        assert_eq!(decimal_bytes(0), vec![0]);
        assert_eq!(decimal_bytes(127), vec![0x7f]);
        assert_eq!(decimal_bytes(128), vec![0x00, 0x80]);
        assert_eq!(decimal_bytes(-1), vec![0xff]);
        assert_eq!(decimal_bytes(-129), vec![0xff, 0x7f]);
        assert_eq!(decimal_bytes(1234), vec![0x04, 0xd2]);
    }

    #[test]
    fn rows_are_written_and_read_back_by_the_source_decoder() -> Result<(), String> {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("n", DataType::Int32, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(10, 2), true),
            Field::new("day", DataType::Date32, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("ok", DataType::Boolean, true),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1, -300])),
            Arc::new(Int32Array::from(vec![Some(7), None])),
            Arc::new(StringArray::from(vec![Some("a\"b"), None])),
            Arc::new(
                Decimal128Array::from(vec![Some(-12345), Some(5)])
                    .with_precision_and_scale(10, 2)
                    .map_err(|e| e.to_string())?,
            ),
            Arc::new(Date32Array::from(vec![Some(20454), None])),
            Arc::new(TimestampMicrosecondArray::from(vec![Some(1_767_225_600_123_456), None])),
            Arc::new(BooleanArray::from(vec![Some(true), Some(false)])),
        ];
        let writer = AvroRecordWriter::new(&schema, None, "orders-value")?;
        let parsed = crate::kafka::avro::AvroSchema::parse(&writer.schema().to_string())?;
        let prepared = writer.prepare(&columns)?;
        let mut decoded = Vec::new();
        for row in 0..2 {
            let mut body = Vec::new();
            writer.write(&prepared, row, &mut body)?;
            let mut json = Vec::new();
            parsed.to_json(&body, &mut json)?;
            decoded.push(String::from_utf8_lossy(&json).into_owned());
        }
        assert_eq!(
            decoded,
            vec![
                r#"{"id":1,"n":7,"name":"a\"b","amount":"-123.45","day":"2026-01-01","at":"2026-01-01 00:00:00.123456","ok":true}"#,
                r#"{"id":-300,"n":null,"name":null,"amount":"0.05","day":null,"at":null,"ok":false}"#,
            ]
        );
        let list =
            Schema::new(vec![Field::new("l", DataType::List(Arc::new(Field::new("x", DataType::Int32, true))), true)]);
        let refused = AvroRecordWriter::new(&list, None, "x").expect_err("lists are refused");
        assert!(refused.contains("column \"l\""), "{refused}");
        Ok(())
    }
}
