//! Operators that keep no state: scan projection, filter, projection, union.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use eddy_common::ChangeBatch;

use crate::error::{ExecError, Result};
use crate::expr::{CompiledExpr, nullable_schema};
use crate::operator::{Operator, Output};
use eddy_planner::stream::watermark::monotone_input;

/// Selects the scanned columns of a relation's rows.
pub struct ScanOperator {
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
}

impl ScanOperator {
    pub fn new(projection: Option<Vec<usize>>, schema: &DFSchema) -> Self {
        Self { projection, schema: nullable_schema(schema) }
    }
}

impl Operator for ScanOperator {
    fn name(&self) -> &'static str {
        "Scan"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, out: &mut Output) -> Result<()> {
        let columns = match &self.projection {
            Some(p) => p.iter().map(|c| batch.column(*c).clone()).collect(),
            None => batch.data().columns().to_vec(),
        };
        out.push(conform(&batch, &self.schema, columns)?);
        Ok(())
    }

    fn on_watermark(&mut self, column: usize, value: i64, out: &mut Output) -> Result<()> {
        match &self.projection {
            Some(p) => {
                if let Some(c) = p.iter().position(|c| *c == column) {
                    out.push_watermark(c, value);
                }
            }
            None => out.push_watermark(column, value),
        }
        Ok(())
    }
}

/// Keeps the rows for which the predicate is true, whatever their weight: a deletion passes
/// exactly when the insertion it undoes passed.
pub struct FilterOperator {
    predicate: CompiledExpr,
}

impl FilterOperator {
    /// # Errors
    /// When the predicate cannot be planned.
    pub fn new(predicate: &Expr, input_schema: &DFSchema) -> Result<Self> {
        Ok(Self { predicate: CompiledExpr::new(predicate, input_schema)? })
    }
}

impl Operator for FilterOperator {
    fn name(&self) -> &'static str {
        "Filter"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, out: &mut Output) -> Result<()> {
        let mask = self.predicate.evaluate(batch.data())?;
        let mask = mask
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| ExecError::Internal("filter predicate is not boolean".into()))?;
        if mask.true_count() == batch.num_rows() {
            out.push(batch);
        } else if mask.true_count() > 0 {
            out.push(batch.filter(mask)?);
        }
        Ok(())
    }
}

/// Computes the output columns from each row.
pub struct ProjectOperator {
    exprs: Vec<CompiledExpr>,
    /// For each output column that never decreases in one input column: that input column.
    monotone: Vec<Option<usize>>,
    input_schema: SchemaRef,
    schema: SchemaRef,
}

impl ProjectOperator {
    /// # Errors
    /// When an expression cannot be planned.
    pub fn new(exprs: &[Expr], input_schema: &DFSchema, schema: &DFSchema) -> Result<Self> {
        let compiled = exprs.iter().map(|e| CompiledExpr::new(e, input_schema)).collect::<Result<_>>()?;
        let monotone = exprs.iter().map(|e| monotone_input(e, input_schema)).collect();
        Ok(Self {
            exprs: compiled,
            monotone,
            input_schema: nullable_schema(input_schema),
            schema: nullable_schema(schema),
        })
    }
}

impl Operator for ProjectOperator {
    fn name(&self) -> &'static str {
        "Project"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, out: &mut Output) -> Result<()> {
        let columns = self.exprs.iter().map(|e| e.evaluate(batch.data())).collect::<Result<Vec<_>>>()?;
        out.push(conform(&batch, &self.schema, columns)?);
        Ok(())
    }

    fn on_watermark(&mut self, column: usize, value: i64, out: &mut Output) -> Result<()> {
        let derived: Vec<usize> =
            self.monotone.iter().enumerate().filter(|(_, m)| **m == Some(column)).map(|(i, _)| i).collect();
        if derived.is_empty() {
            return Ok(());
        }
        let row = watermark_row(&self.input_schema, column, value)?;
        for i in derived {
            let v = self.exprs[i].evaluate(&row)?;
            if let Some(w) = watermark_value(&v)? {
                out.push_watermark(i, w);
            }
        }
        Ok(())
    }
}

/// `UNION ALL`: every input's rows, under the union's schema.
pub struct UnionOperator {
    schema: SchemaRef,
}

impl UnionOperator {
    pub fn new(schema: &DFSchema) -> Self {
        Self { schema: nullable_schema(schema) }
    }
}

impl Operator for UnionOperator {
    fn name(&self) -> &'static str {
        "Union"
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch, out: &mut Output) -> Result<()> {
        let columns = batch.data().columns().to_vec();
        out.push(conform(&batch, &self.schema, columns)?);
        Ok(())
    }
}

/// A one-row batch of `schema` holding `value` in `column` and nulls elsewhere: what an
/// expression sees when it computes a derived watermark.
pub fn watermark_row(schema: &SchemaRef, column: usize, value: i64) -> Result<datafusion::arrow::array::RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, new_null_array};
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == column {
                let v: ArrayRef = Arc::new(Int64Array::from(vec![value]));
                cast(&v, f.data_type()).map_err(ExecError::from)
            } else {
                Ok(new_null_array(f.data_type(), 1))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The watermark a one-row result stands for: its value, or for a list (the windows of a
/// hop) its smallest element.
pub fn watermark_value(array: &datafusion::arrow::array::ArrayRef) -> Result<Option<i64>> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    let values = match array.data_type() {
        DataType::List(_) => array.as_list::<i32>().values().clone(),
        _ => array.clone(),
    };
    let values = match values.data_type() {
        DataType::Date32 => cast(&cast(&values, &DataType::Int32)?, &DataType::Int64)?,
        _ => cast(&values, &DataType::Int64)?,
    };
    Ok(values.as_primitive::<Int64Type>().iter().flatten().min())
}

/// Rewraps `columns` (one per field of `schema`) with the weights of `batch`, casting where
/// a column's type differs from the schema's.
pub fn conform(batch: &ChangeBatch, schema: &SchemaRef, columns: Vec<Arc<dyn Array>>) -> Result<ChangeBatch> {
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(
            |(c, f)| {
                if c.data_type() == f.data_type() { Ok(c) } else { cast(&c, f.data_type()).map_err(ExecError::from) }
            },
        )
        .collect::<Result<Vec<_>>>()?;
    Ok(batch.with_columns(schema.clone(), columns)?)
}

/// Constant rows (`VALUES`, `SELECT` without `FROM`), emitted once at the first barrier.
pub struct ValuesOperator {
    rows: Option<ChangeBatch>,
}

impl ValuesOperator {
    /// # Errors
    /// When a value expression cannot be evaluated.
    pub fn new(rows: &[Vec<Expr>], schema: &DFSchema) -> Result<Self> {
        use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
        use datafusion::arrow::compute::concat;
        let out_schema = nullable_schema(schema);
        let empty = DFSchema::empty();
        let one_row = RecordBatch::try_new_with_options(
            Arc::new(datafusion::arrow::datatypes::Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(1)),
        )?;
        let mut columns: Vec<Vec<ArrayRef>> = vec![Vec::new(); out_schema.fields().len()];
        for row in rows {
            for (i, e) in row.iter().enumerate() {
                let value = CompiledExpr::new(e, &empty)?.evaluate(&one_row)?;
                let value = cast(&value, out_schema.field(i).data_type())?;
                columns[i].push(value);
            }
        }
        let columns = columns
            .iter()
            .enumerate()
            .map(|(i, parts)| {
                let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                if refs.is_empty() {
                    Ok(datafusion::arrow::array::new_empty_array(out_schema.field(i).data_type()))
                } else {
                    concat(&refs).map_err(ExecError::from)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let data = RecordBatch::try_new_with_options(
            out_schema,
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?;
        Ok(Self { rows: Some(ChangeBatch::inserts(data)) })
    }
}

impl Operator for ValuesOperator {
    fn name(&self) -> &'static str {
        "Values"
    }

    fn process(&mut self, _input: usize, _batch: ChangeBatch, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    fn on_barrier(&mut self, _barrier: &crate::message::Barrier, out: &mut Output) -> Result<()> {
        if let Some(rows) = self.rows.take() {
            out.push(rows);
        }
        Ok(())
    }

    fn checkpoint(&mut self, state: &mut crate::state::StateWriter<'_>) -> Result<()> {
        if self.rows.is_none() {
            state.put(b"emitted", Vec::new());
        }
        Ok(())
    }

    fn restore(&mut self, state: &crate::state::StateReader) -> Result<()> {
        // The rows went out before the checkpoint; the view already holds them.
        if state.get(b"emitted")?.is_some() {
            self.rows = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    fn df_schema(batch: &ChangeBatch) -> DFSchema {
        DFSchema::try_from(batch.schema().as_ref().clone()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(op: &mut dyn Operator, batch: ChangeBatch) -> String {
        let mut out = Output::default();
        op.process(0, batch, &mut out).unwrap_or_else(|e| panic!("{e}"));
        out.take_batches().iter().map(|b| b.to_pretty()).collect()
    }

    #[test]
    fn filter_passes_deletes_like_inserts() {
        let input = ChangeBatch::from_pretty(
            "I T
             + 1 a
             - 2 b
             + 3 c
             - 1 a",
        );
        let schema = df_schema(&input);
        let mut op = FilterOperator::new(&col("c0").not_eq(lit(3i64)), &schema).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&mut op, input), "+ 1 a\n- 2 b\n- 1 a\n");
    }

    #[test]
    fn filter_drops_null_predicates() {
        let input = ChangeBatch::from_pretty("I\n + 1\n + .");
        let schema = df_schema(&input);
        let mut op = FilterOperator::new(&col("c0").gt(lit(0i64)), &schema).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&mut op, input), "+ 1\n");
    }

    #[test]
    fn project_computes_and_keeps_weights() {
        let input = ChangeBatch::from_pretty("I I\n + 1 10\n -2 2 20");
        let schema = df_schema(&input);
        let exprs = vec![(col("c0") + col("c1")).alias("s"), col("c0")];
        let out_schema = DFSchema::try_from(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new("s", datafusion::arrow::datatypes::DataType::Int64, true),
            datafusion::arrow::datatypes::Field::new("c0", datafusion::arrow::datatypes::DataType::Int64, true),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut op = ProjectOperator::new(&exprs, &schema, &out_schema).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run(&mut op, input), "+ 11 1\n-2 22 2\n");
    }
}
