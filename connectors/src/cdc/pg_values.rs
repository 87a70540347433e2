//! Postgres values in text output format to Arrow columns of the declared types.
//!
//! Both the initial snapshot (a cursor over the table) and the pgoutput stream deliver values
//! as text, in the format pinned by the session settings (`DateStyle=ISO`, `TimeZone=UTC`,
//! `bytea_output=hex`, `extra_float_digits=3`). Rows are collected column by column; a row
//! with a value that cannot be read as its column's type is left out of the batch, counted as
//! a bad record with its LSN, and never stops the stream.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanArray, BooleanBuilder, Int64Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder,
};
use arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use arrow::datatypes::{DataType, Field, SchemaRef};
use eddy_common::ChangeBatch;

use crate::error::Result;
use crate::source::SourceStats;

/// Formats an LSN the way Postgres does (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// True when a Postgres column of type `oid` can be read as `declared`.
pub fn compatible(oid: u32, declared: &DataType) -> bool {
    use DataType::*;
    let scalar = |oid: u32, t: &DataType| match oid {
        16 => matches!(t, Boolean | Utf8),
        20 | 21 | 23 => matches!(t, Int16 | Int32 | Int64 | Float32 | Float64 | Decimal128(_, _) | Utf8),
        700 | 701 | 1700 => matches!(t, Float32 | Float64 | Decimal128(_, _) | Utf8),
        17 => matches!(t, Binary | Utf8),
        1082 => matches!(t, Date32 | Timestamp(_, None) | Utf8),
        1114 => matches!(t, Timestamp(_, None) | Utf8),
        1184 => matches!(t, Timestamp(_, Some(_)) | Utf8),
        1083 => matches!(t, Time64(_) | Utf8),
        _ => matches!(t, Utf8),
    };
    let element = match oid {
        1000 => Some(16),
        1005 => Some(21),
        1007 => Some(23),
        1016 => Some(20),
        1021 => Some(700),
        1022 => Some(701),
        1231 => Some(1700),
        1009 | 1015 | 1014 => Some(25),
        1182 => Some(1082),
        1115 => Some(1114),
        1185 => Some(1184),
        _ => None,
    };
    match (element, declared) {
        (Some(e), List(f)) => scalar(e, f.data_type()),
        (Some(_), Utf8) => true,
        (Some(_), _) => false,
        (None, List(_)) => false,
        (None, t) => scalar(oid, t),
    }
}

/// How one declared column is built from text.
enum Column {
    /// Text, then cast to the declared type (Utf8 needs no cast).
    Cast {
        text: StringBuilder,
        target: DataType,
        timestamp_tz: bool,
    },
    Bool {
        values: BooleanBuilder,
    },
    Binary {
        values: BinaryBuilder,
    },
    /// Array literal `{a,b,NULL}` split into text elements, then cast element-wise.
    List {
        values: ListBuilder<StringBuilder>,
        target: DataType,
    },
}

/// Collects changes of one table as text and turns them into a [`ChangeBatch`].
pub struct RowsBuilder {
    schema: SchemaRef,
    columns: Vec<Column>,
    weights: Vec<i64>,
    lsns: Vec<u64>,
    /// Rows already known to be unreadable, with why.
    bad: Vec<Option<String>>,
    /// The connector named in bad-record messages, and how it prints a row's position.
    origin: &'static str,
    format_position: fn(u64) -> String,
}

fn lsn_position(lsn: u64) -> String {
    format!("LSN {}", format_lsn(lsn))
}

impl RowsBuilder {
    pub fn new(schema: SchemaRef) -> Self {
        Self::with_origin(schema, "postgres-cdc", lsn_position)
    }

    /// A builder whose bad-record messages name `origin` and print positions with
    /// `format_position`.
    pub fn with_origin(schema: SchemaRef, origin: &'static str, format_position: fn(u64) -> String) -> Self {
        let columns = schema.fields().iter().map(|f| new_column(f.data_type())).collect();
        Self { schema, columns, weights: Vec::new(), lsns: Vec::new(), bad: Vec::new(), origin, format_position }
    }

    /// Marks the row added last as unreadable (it is counted and left out by `finish`).
    pub fn mark_last_bad(&mut self, why: String) {
        if let Some(slot) = self.bad.last_mut() {
            slot.get_or_insert(why);
        }
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Adds a row: one text value (or NULL) per declared column.
    pub fn push<'a>(&mut self, values: impl IntoIterator<Item = Option<&'a [u8]>>, weight: i64, lsn: u64) {
        let mut bad = None;
        for (i, (column, value)) in self.columns.iter_mut().zip(values).enumerate() {
            let text = match value.map(std::str::from_utf8) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(_)) => {
                    bad.get_or_insert_with(|| format!("column {} is not valid UTF-8", self.schema.field(i).name()));
                    None
                }
            };
            if let Err(why) = push_value(column, text) {
                bad.get_or_insert_with(|| format!("column {}: {why}", self.schema.field(i).name()));
            }
        }
        self.weights.push(weight);
        self.lsns.push(lsn);
        self.bad.push(bad);
    }

    /// The collected rows as a change batch; unreadable rows are counted in `stats` (with
    /// their LSN, naming `table`) and left out. `None` when no row remains.
    ///
    /// # Errors
    /// Only on internal Arrow errors (mismatched lengths), never on bad values.
    pub fn finish(&mut self, table: &str, stats: &SourceStats) -> Result<Option<ChangeBatch>> {
        let rows = self.weights.len();
        if rows == 0 {
            return Ok(None);
        }
        let mut bad = std::mem::take(&mut self.bad);
        let options = CastOptions { safe: true, ..Default::default() };
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (i, column) in self.columns.iter_mut().enumerate() {
            let field = self.schema.field(i);
            let array: ArrayRef = match column {
                Column::Cast { text, target, .. } => {
                    let text = text.finish();
                    if *target == DataType::Utf8 {
                        Arc::new(text)
                    } else {
                        let out = cast_with_options(&text, target, &options)?;
                        mark_failed(&text, &out, field.name(), target, &mut bad);
                        out
                    }
                }
                Column::Bool { values, .. } => Arc::new(values.finish()),
                Column::Binary { values, .. } => Arc::new(values.finish()),
                Column::List { values, target } => {
                    let list = values.finish();
                    let out = cast_with_options(&list, target, &options)?;
                    // A list whose element failed to cast has fewer valid elements than before.
                    for (row, slot) in bad.iter_mut().enumerate() {
                        if !list.is_null(row) && !out.is_null(row) {
                            let before = list.value(row).null_count();
                            let after = out
                                .as_any()
                                .downcast_ref::<arrow::array::ListArray>()
                                .map(|l| l.value(row).null_count());
                            if after.is_some_and(|a| a != before) && slot.is_none() {
                                *slot = Some(format!("column {}: an element cannot be read as {target}", field.name()));
                            }
                        }
                    }
                    out
                }
            };
            if !field.is_nullable() {
                for (row, slot) in bad.iter_mut().enumerate() {
                    if array.is_null(row) && slot.is_none() {
                        *slot = Some(format!("column {} is NULL but declared NOT NULL", field.name()));
                    }
                }
            }
            arrays.push(array);
        }
        self.columns = self.schema.fields().iter().map(|f| new_column(f.data_type())).collect();
        let weights = Int64Array::from(std::mem::take(&mut self.weights));
        let lsns = std::mem::take(&mut self.lsns);
        let nullable_schema = Arc::new(arrow::datatypes::Schema::new(
            self.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<Field>>(),
        ));
        let mut batch = RecordBatch::try_new(nullable_schema, arrays)?;
        let mut weights = weights;
        if bad.iter().any(Option::is_some) {
            for (row, why) in bad.iter().enumerate() {
                if let Some(why) = why {
                    stats.bad_record(format!(
                        "{} table {table}: row at {} cannot be decoded: {why}",
                        self.origin,
                        (self.format_position)(lsns[row])
                    ));
                }
            }
            let keep: BooleanArray = bad.iter().map(|b| Some(b.is_none())).collect();
            batch = filter_record_batch(&batch, &keep)?;
            weights = arrow::compute::filter(&weights, &keep)?
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .unwrap_or_else(|| Int64Array::from(Vec::<i64>::new()));
        }
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())?;
        Ok(Some(ChangeBatch::try_new(batch, weights)?))
    }
}

fn mark_failed(text: &StringArray, out: &ArrayRef, name: &str, target: &DataType, bad: &mut [Option<String>]) {
    if out.null_count() == text.null_count() {
        return;
    }
    for (row, slot) in bad.iter_mut().enumerate() {
        if !text.is_null(row) && out.is_null(row) && slot.is_none() {
            let mut value = text.value(row).to_string();
            value.truncate(64);
            *slot = Some(format!("column {name}: '{value}' cannot be read as {target}"));
        }
    }
}

fn new_column(t: &DataType) -> Column {
    match t {
        DataType::Boolean => Column::Bool { values: BooleanBuilder::new() },
        DataType::Binary => Column::Binary { values: BinaryBuilder::new() },
        DataType::List(_) => Column::List { values: ListBuilder::new(StringBuilder::new()), target: t.clone() },
        other => Column::Cast {
            text: StringBuilder::new(),
            target: other.clone(),
            timestamp_tz: matches!(other, DataType::Timestamp(_, Some(_))),
        },
    }
}

fn push_value(column: &mut Column, text: Option<&str>) -> std::result::Result<(), String> {
    match column {
        Column::Cast { text: b, timestamp_tz, .. } => match text {
            None => b.append_null(),
            Some(t) if *timestamp_tz => b.append_value(full_utc_offset(t)),
            Some(t) => b.append_value(t),
        },
        Column::Bool { values } => match text {
            None => values.append_null(),
            Some("t" | "true") => values.append_value(true),
            Some("f" | "false") => values.append_value(false),
            Some(other) => {
                values.append_null();
                return Err(format!("'{other}' is not a boolean"));
            }
        },
        Column::Binary { values } => match text {
            None => values.append_null(),
            Some(t) => match decode_hex_bytea(t) {
                Some(bytes) => values.append_value(bytes),
                None => {
                    values.append_null();
                    return Err("bytea value is not in hex format".into());
                }
            },
        },
        Column::List { values, .. } => match text {
            None => values.append(false),
            Some(t) => match parse_array_literal(t) {
                Some(elements) => {
                    for e in elements {
                        match e {
                            Some(e) => values.values().append_value(e),
                            None => values.values().append_null(),
                        }
                    }
                    values.append(true);
                }
                None => {
                    values.append(false);
                    return Err(format!("'{t}' is not a one-dimensional array"));
                }
            },
        },
    }
    Ok(())
}

/// Postgres prints `+00` for whole-hour offsets; Arrow wants `+00:00`.
fn full_utc_offset(t: &str) -> std::borrow::Cow<'_, str> {
    let b = t.as_bytes();
    let n = b.len();
    if n > 3 && (b[n - 3] == b'+' || b[n - 3] == b'-') && b[n - 2].is_ascii_digit() && b[n - 1].is_ascii_digit() {
        std::borrow::Cow::Owned(format!("{t}:00"))
    } else {
        std::borrow::Cow::Borrowed(t)
    }
}

/// `\x0a1b` to bytes.
fn decode_hex_bytea(t: &str) -> Option<Vec<u8>> {
    let hex = t.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// Splits a one-dimensional array literal (`{1,2,NULL}`, `{"a b","c\"d"}`) into elements.
fn parse_array_literal(t: &str) -> Option<Vec<Option<String>>> {
    let inner = t.strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut element = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => element.push(chars.next()?),
                    '"' => break,
                    '{' => return None,
                    c => element.push(c),
                }
            }
            out.push(Some(element));
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '"' {
                    return None;
                }
                element.push(c);
                chars.next();
            }
            out.push(if element == "NULL" { None } else { Some(element) });
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{Schema, TimeUnit};

    use super::*;

    #[test]
    fn text_values_become_typed_columns_and_bad_rows_are_counted() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("ok", DataType::Boolean, true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), true),
            Field::new("raw", DataType::Binary, true),
            Field::new("xs", DataType::List(Arc::new(Field::new("item", DataType::Int32, true))), true),
        ]));
        let mut rows = RowsBuilder::new(schema);
        let row = |v: [Option<&'static str>; 5]| v.map(|x| x.map(str::as_bytes));
        rows.push(
            row([Some("1"), Some("t"), Some("2024-01-02 03:04:05.5+00"), Some("\\x0aff"), Some("{1,NULL,3}")]),
            1,
            16,
        );
        rows.push(row([Some("oops"), None, None, None, None]), 1, 32);
        rows.push(row([Some("3"), Some("f"), None, None, Some("{}")]), -1, 48);
        let stats = SourceStats::default();
        let batch = rows.finish("public.t", &stats).expect("finish").expect("rows");
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(stats.bad_records(), 1);
        assert!(stats.last_error().unwrap_or_default().contains("0/20"), "{:?}", stats.last_error());
        assert_eq!(batch.weights().values().to_vec(), vec![1, -1]);
        let pretty = arrow::util::pretty::pretty_format_batches(&[batch.data().clone()]).expect("pretty").to_string();
        assert!(pretty.contains("2024-01-02T03:04:05.500Z"), "{pretty}");
        assert!(pretty.contains("0aff"), "{pretty}");
        assert!(pretty.contains("[1, , 3]"), "{pretty}");
    }

    #[test]
    fn array_literals() {
        assert_eq!(
            parse_array_literal(r#"{"a b","c\"d",NULL,x}"#),
            Some(vec![Some("a b".into()), Some("c\"d".into()), None, Some("x".into())])
        );
        assert_eq!(parse_array_literal("{{1,2},{3,4}}"), None);
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
    }
}
