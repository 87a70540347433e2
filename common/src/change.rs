//! The change model: a batch of rows, each with a signed weight.
//!
//! Every stream in Eddy is a *changelog*: a sequence of [`ChangeBatch`]es. A batch is an Arrow
//! [`RecordBatch`] plus one `i64` weight per row, read as a Z-set (as in DBSP): weight `+n` adds
//! `n` copies of the row to the relation the stream describes, `-n` removes `n` copies. A
//! relation's contents at a point in time is the sum of all batches so far; operators are linear
//! in the weights wherever they can be.
//!
//! An update is written as an adjacent pair: the old row with `-1`, then the new row with `+1`,
//! with the same key. Nothing depends on the adjacency for correctness; it lets sinks and
//! `SUBSCRIBE` present the pair as one update. [`Op`] names those four cases for the edges of
//! the system (pgwire, Debezium, upsert sinks); inside the dataflow only weights exist.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions, new_null_array};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// A batch of changes: rows and their weights.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    data: RecordBatch,
    weights: Int64Array,
}

/// The edge view of a change, for presenting weights as operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Delete,
    UpdateDelete,
    UpdateInsert,
}

impl ChangeBatch {
    /// Wraps rows and weights; both must have the same length.
    pub fn try_new(data: RecordBatch, weights: Int64Array) -> Result<Self, ArrowError> {
        if data.num_rows() != weights.len() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "change batch has {} rows but {} weights",
                data.num_rows(),
                weights.len()
            )));
        }
        if weights.null_count() > 0 {
            return Err(ArrowError::InvalidArgumentError("change batch weights must not be null".into()));
        }
        Ok(Self { data, weights })
    }

    /// All rows inserted once.
    pub fn inserts(data: RecordBatch) -> Self {
        let weights = Int64Array::from(vec![1i64; data.num_rows()]);
        Self { data, weights }
    }

    /// All rows deleted once.
    pub fn deletes(data: RecordBatch) -> Self {
        let weights = Int64Array::from(vec![-1i64; data.num_rows()]);
        Self { data, weights }
    }

    /// A batch with no rows.
    pub fn empty(schema: SchemaRef) -> Self {
        Self { data: RecordBatch::new_empty(schema), weights: Int64Array::from(Vec::<i64>::new()) }
    }

    pub fn data(&self) -> &RecordBatch {
        &self.data
    }

    pub fn weights(&self) -> &Int64Array {
        &self.weights
    }

    pub fn schema(&self) -> SchemaRef {
        self.data.schema()
    }

    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.data.num_rows() == 0
    }

    pub fn column(&self, i: usize) -> &ArrayRef {
        self.data.column(i)
    }

    pub fn into_parts(self) -> (RecordBatch, Int64Array) {
        (self.data, self.weights)
    }

    /// True when every weight is positive (the batch only adds rows).
    pub fn is_insert_only(&self) -> bool {
        self.weights.values().iter().all(|w| *w > 0)
    }

    /// Keeps the rows where `mask` is true; null counts as false.
    pub fn filter(&self, mask: &BooleanArray) -> Result<Self, ArrowError> {
        let data = filter_record_batch(&self.data, mask)?;
        let weights = arrow::compute::filter(&self.weights, mask)?;
        let weights = weights
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| ArrowError::ComputeError("filter changed weight type".into()))?;
        Ok(Self { data, weights })
    }

    /// Picks rows by index, in the given order.
    pub fn take(&self, indices: &arrow::array::UInt32Array) -> Result<Self, ArrowError> {
        let data = take_record_batch(&self.data, indices)?;
        let weights = arrow::compute::take(&self.weights, indices, None)?;
        let weights = weights
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| ArrowError::ComputeError("take changed weight type".into()))?;
        Ok(Self { data, weights })
    }

    /// Replaces the columns, keeping the weights; `columns` must have this batch's length.
    pub fn with_columns(&self, schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<Self, ArrowError> {
        let options = RecordBatchOptions::new().with_row_count(Some(self.num_rows()));
        let data = RecordBatch::try_new_with_options(schema, columns, &options)?;
        Ok(Self { data, weights: self.weights.clone() })
    }

    /// Same rows, every weight negated.
    pub fn negate(&self) -> Self {
        let weights: Int64Array = self.weights.values().iter().map(|w| -w).collect();
        Self { data: self.data.clone(), weights }
    }

    /// Same rows under another schema of the same types (for example other column names).
    pub fn with_schema(&self, schema: SchemaRef) -> Result<Self, ArrowError> {
        let options = RecordBatchOptions::new().with_row_count(Some(self.num_rows()));
        let data = RecordBatch::try_new_with_options(schema, self.data.columns().to_vec(), &options)?;
        Ok(Self { data, weights: self.weights.clone() })
    }

    /// Concatenates batches of the same schema.
    pub fn concat(schema: &SchemaRef, batches: &[ChangeBatch]) -> Result<Self, ArrowError> {
        let data = concat_batches(schema, batches.iter().map(|b| &b.data))?;
        let mut weights = Vec::with_capacity(data.num_rows());
        for b in batches {
            weights.extend_from_slice(b.weights.values());
        }
        Ok(Self { data, weights: Int64Array::from(weights) })
    }

    /// The operation each row stands for, pairing `-1, +1` rows that `is_same_key` says belong
    /// together into an update.
    pub fn ops(&self, is_same_key: impl Fn(usize, usize) -> bool) -> Vec<Op> {
        let w = self.weights.values();
        let mut ops = Vec::with_capacity(w.len());
        let mut i = 0;
        while i < w.len() {
            if w[i] < 0 && i + 1 < w.len() && w[i + 1] > 0 && is_same_key(i, i + 1) {
                ops.push(Op::UpdateDelete);
                ops.push(Op::UpdateInsert);
                i += 2;
            } else {
                ops.push(if w[i] < 0 { Op::Delete } else { Op::Insert });
                i += 1;
            }
        }
        ops
    }

    /// Renders the batch one row per line, `+` / `-` (or `+n` / `-n`) then the values: the
    /// inverse of [`ChangeBatch::from_pretty`], used by operator tests.
    pub fn to_pretty(&self) -> String {
        let options = FormatOptions::default().with_null("null");
        let formatters: Vec<_> = self
            .data
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        let mut out = String::new();
        for (row, w) in self.weights.values().iter().enumerate() {
            let sign = match *w {
                1 => "+".to_string(),
                -1 => "-".to_string(),
                w if w > 0 => format!("+{w}"),
                w => format!("{w}"),
            };
            out.push_str(&sign);
            for f in &formatters {
                let _ = write!(out, " {}", f.value(row));
            }
            out.push('\n');
        }
        out
    }

    /// Builds a batch from a compact text form, for tests. The first line lists one type code
    /// per column: `I` Int64, `i` Int32, `F` Float64, `T` Utf8, `B` Boolean, `S` timestamp in
    /// milliseconds (written as an integer). Each further line
    /// is a weight (`+`, `-`, `+3`, `-2`) then the values, separated by whitespace; `.` is null.
    ///
    /// ```
    /// use eddy_common::change::ChangeBatch;
    /// let b = ChangeBatch::from_pretty("I T\n + 1 a\n - 2 .");
    /// assert_eq!(b.num_rows(), 2);
    /// ```
    ///
    /// # Panics
    /// On malformed input: it is a test helper, never fed user data.
    #[allow(clippy::unwrap_used)]
    pub fn from_pretty(text: &str) -> Self {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let header: Vec<&str> = lines.next().expect("type header").split_whitespace().collect();
        let types: Vec<DataType> = header
            .iter()
            .map(|t| match *t {
                "I" => DataType::Int64,
                "i" => DataType::Int32,
                "F" => DataType::Float64,
                "T" => DataType::Utf8,
                "B" => DataType::Boolean,
                "S" => DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                other => panic!("unknown type code {other}"),
            })
            .collect();
        let schema = Arc::new(Schema::new(
            types.iter().enumerate().map(|(i, t)| Field::new(format!("c{i}"), t.clone(), true)).collect::<Vec<_>>(),
        ));
        let mut weights = Vec::new();
        let mut cells: Vec<Vec<Option<String>>> = vec![Vec::new(); types.len()];
        for line in lines {
            let mut parts = line.split_whitespace();
            let w = parts.next().unwrap();
            let weight = match w {
                "+" => 1,
                "-" => -1,
                w => w.parse::<i64>().unwrap(),
            };
            weights.push(weight);
            for (i, cell) in cells.iter_mut().enumerate() {
                let v = parts.next().unwrap_or_else(|| panic!("missing column {i} in {line:?}"));
                cell.push(if v == "." { None } else { Some(v.to_string()) });
            }
        }
        let columns: Vec<ArrayRef> = types.iter().zip(cells).map(|(t, values)| parse_column(t, &values)).collect();
        let data = RecordBatch::try_new_with_options(
            schema,
            columns,
            &RecordBatchOptions::new().with_row_count(Some(weights.len())),
        )
        .unwrap();
        Self { data, weights: Int64Array::from(weights) }
    }
}

#[allow(clippy::unwrap_used)]
fn parse_column(t: &DataType, values: &[Option<String>]) -> ArrayRef {
    use arrow::array::{BooleanArray, Float64Array, Int32Array, StringArray};
    match t {
        DataType::Int64 => {
            Arc::new(values.iter().map(|v| v.as_ref().map(|s| s.parse::<i64>().unwrap())).collect::<Int64Array>())
        }
        DataType::Int32 => {
            Arc::new(values.iter().map(|v| v.as_ref().map(|s| s.parse::<i32>().unwrap())).collect::<Int32Array>())
        }
        DataType::Float64 => {
            Arc::new(values.iter().map(|v| v.as_ref().map(|s| s.parse::<f64>().unwrap())).collect::<Float64Array>())
        }
        DataType::Boolean => {
            Arc::new(values.iter().map(|v| v.as_ref().map(|s| s == "t" || s == "true")).collect::<BooleanArray>())
        }
        DataType::Utf8 => Arc::new(values.iter().map(|v| v.as_deref()).collect::<StringArray>()),
        DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None) => Arc::new(
            values
                .iter()
                .map(|v| v.as_ref().map(|s| s.parse::<i64>().unwrap()))
                .collect::<arrow::array::TimestampMillisecondArray>(),
        ),
        other => new_null_array(other, values.len()),
    }
}

impl PartialEq for ChangeBatch {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data && self.weights == other.weights
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_round_trip() {
        let b = ChangeBatch::from_pretty(
            "I T F
             + 1 a 1.5
             - 2 . 2
             +3 4 c .",
        );
        assert_eq!(b.to_pretty(), "+ 1 a 1.5\n- 2 null 2.0\n+3 4 c null\n");
    }

    #[test]
    fn ops_pair_updates_by_key() {
        let b = ChangeBatch::from_pretty(
            "I I
             - 1 10
             + 1 11
             - 2 20
             + 3 30",
        );
        let keys = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .unwrap_or_else(|| Int64Array::from(Vec::<i64>::new()));
        let ops = b.ops(|a, c| keys.value(a) == keys.value(c));
        assert_eq!(ops, vec![Op::UpdateDelete, Op::UpdateInsert, Op::Delete, Op::Insert]);
    }

    #[test]
    fn filter_keeps_weights_aligned() {
        let b = ChangeBatch::from_pretty("I\n + 1\n - 2\n +2 3");
        let mask = BooleanArray::from(vec![false, true, true]);
        assert_eq!(b.filter(&mask).map(|f| f.to_pretty()).ok(), Some("- 2\n+2 3\n".to_string()));
    }
}
