//! The `datagen` connector: rows from per-column generators.
//!
//! `fields.<col>.kind = 'sequence'` counts from `start` to `end` (the source ends when every
//! sequence is exhausted); `'random'` draws from `min..=max` (numbers) or `length` letters
//! (strings), deterministically from `fields.<col>.seed`. Timestamps are the wall-clock time
//! of generation unless `fields.<col>.kind = 'sequence'`, which counts seconds from `start`
//! (as epoch seconds). `datagen.rows.per.second` paces the source (default 10),
//! `datagen.split.num` reads it in parallel.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Decimal128Builder, RecordBatch, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema, SchemaRef};

use crate::error::{ConnectorError, Result};
use crate::source::datagen_supports;

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Sequence { start: i64, end: Option<i64> },
    Random { min: f64, max: f64, length: usize, seed: u64 },
}

#[derive(Debug, Clone)]
pub struct DatagenConfig {
    kinds: Vec<Kind>,
    pub splits: usize,
    pub rows_per_second: Option<f64>,
    chunk: usize,
}

fn number(options: &HashMap<String, String>, key: &str) -> Result<Option<f64>> {
    options
        .get(key)
        .map(|v| {
            v.trim().parse::<f64>().map_err(|_| ConnectorError::InvalidOption(format!("{key} = '{v}' is not a number")))
        })
        .transpose()
}

impl DatagenConfig {
    /// # Errors
    /// Unknown options or columns, or values that do not parse.
    pub fn parse(options: &HashMap<String, String>, declared: &Schema) -> Result<Self> {
        let columns: Vec<&str> = declared.fields().iter().map(|f| f.name().as_str()).collect();
        for key in options.keys() {
            let ok = match key.as_str() {
                "connector" | "datagen.rows.per.second" | "datagen.split.num" => true,
                k if k.starts_with("fields.") => {
                    let rest = &k["fields.".len()..];
                    match rest.rsplit_once('.') {
                        Some((col, attr)) => {
                            if !columns.contains(&col) {
                                return Err(ConnectorError::InvalidOption(format!(
                                    "option {key} names unknown column \"{col}\""
                                )));
                            }
                            matches!(attr, "kind" | "start" | "end" | "min" | "max" | "length" | "seed")
                        }
                        None => false,
                    }
                }
                _ => false,
            };
            if !ok {
                return Err(ConnectorError::InvalidOption(format!(
                    "unknown option \"{key}\" for connector datagen; valid options: connector, datagen.rows.per.second, datagen.split.num, fields.<column>.kind|start|end|min|max|length|seed"
                )));
            }
        }
        let mut kinds = Vec::new();
        for (i, f) in declared.fields().iter().enumerate() {
            if !datagen_supports(f.data_type()) {
                return Err(ConnectorError::Schema(format!(
                    "datagen cannot generate column \"{}\" of type {}",
                    f.name(),
                    f.data_type()
                )));
            }
            let p = |attr: &str| format!("fields.{}.{attr}", f.name());
            let kind = options.get(&p("kind")).map(|s| s.to_ascii_lowercase());
            let kind = match kind.as_deref() {
                Some("sequence") => Kind::Sequence {
                    start: number(options, &p("start"))?.unwrap_or(1.0) as i64,
                    end: number(options, &p("end"))?.map(|e| e as i64),
                },
                Some("random") | None => Kind::Random {
                    min: number(options, &p("min"))?.unwrap_or(0.0),
                    max: number(options, &p("max"))?.unwrap_or(32767.0),
                    length: number(options, &p("length"))?.unwrap_or(10.0) as usize,
                    seed: number(options, &p("seed"))?.unwrap_or(i as f64) as u64,
                },
                Some(other) => {
                    return Err(ConnectorError::InvalidOption(format!(
                        "fields.{}.kind = '{other}': expected sequence or random",
                        f.name()
                    )));
                }
            };
            if let Kind::Random { min, max, .. } = &kind
                && min > max
            {
                return Err(ConnectorError::InvalidOption(format!("fields.{}: min > max", f.name())));
            }
            kinds.push(kind);
        }
        let splits = number(options, "datagen.split.num")?.unwrap_or(1.0).max(1.0) as usize;
        let rows_per_second = number(options, "datagen.rows.per.second")?.or(Some(10.0)).filter(|r| *r > 0.0);
        Ok(Self { kinds, splits, rows_per_second, chunk: 1024 })
    }
}

pub struct DatagenGenerator {
    config: DatagenConfig,
    schema: SchemaRef,
    split: usize,
    /// Rows this split produced so far.
    produced: u64,
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl DatagenGenerator {
    pub fn new(config: DatagenConfig, schema: SchemaRef, split: usize) -> Self {
        Self { config, schema, split, produced: 0 }
    }

    pub fn position(&self) -> u64 {
        self.produced
    }

    pub fn seek(&mut self, position: u64) {
        self.produced = position;
    }

    /// The global row number of this split's `k`-th row.
    fn row_number(&self, k: u64) -> u64 {
        k * self.config.splits as u64 + self.split as u64
    }

    fn remaining(&self) -> Option<u64> {
        // The source ends when the shortest bounded sequence ends.
        self.config
            .kinds
            .iter()
            .filter_map(|k| match k {
                Kind::Sequence { start, end: Some(end) } => {
                    let total = (end - start + 1).max(0) as u64;
                    let mine = total / self.config.splits as u64
                        + u64::from((total % self.config.splits as u64) > self.split as u64);
                    Some(mine.saturating_sub(self.produced))
                }
                _ => None,
            })
            .min()
    }

    /// # Errors
    /// When a column cannot be built.
    pub fn next_chunk(&mut self) -> Result<Option<RecordBatch>> {
        let mut n = self.config.chunk as u64;
        if let Some(rate) = self.config.rows_per_second {
            // Small chunks at low rates keep rows flowing steadily.
            n = n.min(((rate / self.config.splits as f64) / 10.0).ceil().max(1.0) as u64);
        }
        if let Some(rem) = self.remaining() {
            n = n.min(rem);
        }
        if n == 0 {
            return Ok(None);
        }
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let rows: Vec<u64> = (self.produced..self.produced + n).map(|k| self.row_number(k)).collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for (f, kind) in self.schema.fields().iter().zip(&self.config.kinds) {
            columns.push(build_column(f.data_type(), kind, &rows, now_us)?);
        }
        self.produced += n;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), columns)?))
    }
}

fn build_column(t: &DataType, kind: &Kind, rows: &[u64], now_us: i64) -> Result<ArrayRef> {
    let value = |row: u64| -> f64 {
        match kind {
            Kind::Sequence { start, .. } => (*start + row as i64) as f64,
            Kind::Random { min, max, seed, .. } => {
                let r = mix(row ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
                if t.is_integer() {
                    (min + ((max - min + 1.0) * unit).floor()).min(*max)
                } else {
                    min + (max - min) * unit
                }
            }
        }
    };
    Ok(match t {
        DataType::Int16 => Arc::new(rows.iter().map(|r| Some(value(*r) as i16)).collect::<arrow::array::Int16Array>()),
        DataType::Int32 => Arc::new(rows.iter().map(|r| Some(value(*r) as i32)).collect::<arrow::array::Int32Array>()),
        DataType::Int64 => Arc::new(rows.iter().map(|r| Some(value(*r) as i64)).collect::<arrow::array::Int64Array>()),
        DataType::Float32 => {
            Arc::new(rows.iter().map(|r| Some(value(*r) as f32)).collect::<arrow::array::Float32Array>())
        }
        DataType::Float64 => Arc::new(rows.iter().map(|r| Some(value(*r))).collect::<arrow::array::Float64Array>()),
        DataType::Boolean => {
            Arc::new(rows.iter().map(|r| Some(value(*r) as i64 % 2 == 0)).collect::<arrow::array::BooleanArray>())
        }
        DataType::Decimal128(p, s) => {
            let scale = 10f64.powi(i32::from(*s));
            let mut b = Decimal128Builder::with_capacity(rows.len());
            for r in rows {
                b.append_value((value(*r) * scale).round() as i128);
            }
            Arc::new(b.finish().with_precision_and_scale(*p, *s)?)
        }
        DataType::Utf8 => {
            let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 10);
            for r in rows {
                match kind {
                    Kind::Sequence { .. } => b.append_value(format!("{}", value(*r) as i64)),
                    Kind::Random { length, seed, .. } => {
                        let mut s = String::with_capacity(*length);
                        let mut x = mix(*r ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
                        for i in 0..*length {
                            if i % 8 == 0 && i > 0 {
                                x = mix(x);
                            }
                            s.push((b'a' + ((x >> ((i % 8) * 8)) & 0xff) as u8 % 26) as char);
                        }
                        b.append_value(s);
                    }
                }
            }
            Arc::new(b.finish())
        }
        DataType::Timestamp(unit, tz) => {
            let micros: arrow::array::TimestampMicrosecondArray = rows
                .iter()
                .map(|r| match kind {
                    Kind::Sequence { .. } => Some(value(*r) as i64 * 1_000_000),
                    Kind::Random { .. } => Some(now_us),
                })
                .collect();
            let a: ArrayRef = Arc::new(micros);
            cast(&a, &DataType::Timestamp(*unit, tz.clone()))?
        }
        other => {
            return Err(ConnectorError::Schema(format!("datagen cannot generate {other}")));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Field, Int64Type};

    #[test]
    fn sequences_split_and_end() -> Result<()> {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let options: HashMap<String, String> = [
            ("connector", "datagen"),
            ("fields.id.kind", "sequence"),
            ("fields.id.start", "1"),
            ("fields.id.end", "10"),
            ("fields.name.length", "4"),
            ("datagen.split.num", "3"),
            ("datagen.rows.per.second", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = DatagenConfig::parse(&options, &schema)?;
        let mut ids = Vec::new();
        for split in 0..3 {
            let mut g = DatagenGenerator::new(config.clone(), schema.clone(), split);
            while let Some(b) = g.next_chunk()? {
                ids.extend(b.column(0).as_primitive::<Int64Type>().values().iter().copied());
                assert!(b.column(1).as_string::<i32>().iter().all(|s| s.is_some_and(|s| s.len() == 4)));
            }
        }
        ids.sort();
        assert_eq!(ids, (1..=10).collect::<Vec<i64>>());
        Ok(())
    }

    #[test]
    fn unknown_options_are_listed() {
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
        let options: HashMap<String, String> =
            [("connector".to_string(), "datagen".to_string()), ("rows".to_string(), "1".to_string())].into();
        let err = DatagenConfig::parse(&options, &schema).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("unknown option \"rows\"") && err.contains("datagen.rows.per.second"), "{err}");
    }
}
