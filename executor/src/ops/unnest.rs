//! `unnest` of one list column: a row per element (how `HOP` assigns rows to windows).

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Array, new_null_array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{DFSchema, NullHandling};
use eddy_common::ChangeBatch;

use crate::error::{ExecError, Result};
use crate::expr::nullable_schema;
use crate::operator::{Operator, Output};

pub struct UnnestOperator {
    list_column: usize,
    dependency: Vec<usize>,
    null_handling: NullHandling,
    schema: SchemaRef,
}

impl UnnestOperator {
    pub fn new(list_column: usize, dependency: Vec<usize>, null_handling: NullHandling, schema: &DFSchema) -> Self {
        Self { list_column, dependency, null_handling, schema: nullable_schema(schema) }
    }
}

impl Operator for UnnestOperator {
    fn name(&self) -> &'static str {
        "Unnest"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, out: &mut Output) -> Result<()> {
        let list = batch.column(self.list_column);
        let list = match list.data_type() {
            DataType::List(_) => list.as_list::<i32>(),
            other => return Err(ExecError::Internal(format!("unnest of a {other} column"))),
        };
        let offsets = list.value_offsets();
        if list.null_count() == 0 && offsets.iter().enumerate().all(|(i, o)| *o as usize == i) {
            // One element per row (a HOP pane): the rows stay, the list becomes its element.
            let columns =
                self.dependency
                    .iter()
                    .map(|d| {
                        if *d == self.list_column {
                            list.values().slice(0, list.len())
                        } else {
                            batch.column(*d).clone()
                        }
                    })
                    .collect();
            out.push(batch.with_columns(self.schema.clone(), columns)?);
            return Ok(());
        }
        // For each output row: the input row it repeats and the list element it carries.
        let mut rows: Vec<u32> = Vec::with_capacity(list.values().len());
        let mut elements: Vec<Option<u32>> = Vec::with_capacity(list.values().len());
        for i in 0..list.len() {
            let (start, end) = (offsets[i] as u32, offsets[i + 1] as u32);
            let is_null = list.is_null(i);
            if start == end || is_null {
                let emit_null = match self.null_handling {
                    NullHandling::Drop => false,
                    NullHandling::Preserve => is_null,
                    NullHandling::PreserveAndExpandEmpty => true,
                };
                if emit_null {
                    rows.push(i as u32);
                    elements.push(None);
                }
                continue;
            }
            for e in start..end {
                rows.push(i as u32);
                elements.push(Some(e));
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let row_idx = UInt32Array::from(rows);
        let element_idx: UInt32Array = elements.into_iter().collect();
        let values = list.values();
        let columns = self
            .dependency
            .iter()
            .zip(self.schema.fields())
            .map(|(d, f)| -> Result<ArrayRef> {
                if *d == self.list_column {
                    if values.is_empty() {
                        return Ok(new_null_array(f.data_type(), row_idx.len()));
                    }
                    Ok(take(values.as_ref(), &element_idx, None)?)
                } else {
                    Ok(take(batch.column(*d).as_ref(), &row_idx, None)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let repeated = batch.take(&row_idx)?;
        out.push(repeated.with_columns(self.schema.clone(), columns)?);
        Ok(())
    }

    fn on_watermark(&mut self, column: usize, value: i64, out: &mut Output) -> Result<()> {
        for (i, d) in self.dependency.iter().enumerate() {
            if *d == column {
                out.push_watermark(i, value);
            }
        }
        Ok(())
    }
}
