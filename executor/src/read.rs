//! Reading stored relations with DataFusion: the `TableProvider` behind `SELECT`.
//!
//! A query reads every relation from one [`Snapshot`], placed in the session config as a
//! [`QuerySnapshot`] extension, so all views it touches are at the same epoch. Equality
//! filters on a prefix of the stored key become a key-range scan: a point lookup reads one
//! entry, not the whole view.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use eddy_planner::catalog::{RelationDef, RelationKind};

use crate::store::{RowCodec, Snapshot, Store};

/// The snapshot a query reads; attached to the session config.
#[derive(Debug, Clone)]
pub struct QuerySnapshot(pub Snapshot);

const SCAN_BATCH_ROWS: usize = 8192;

/// A table or materialized view as DataFusion sees it.
#[derive(Debug)]
pub struct StoredTable {
    def: Arc<RelationDef>,
    codec: Arc<RowCodec>,
    store: Arc<Store>,
}

impl StoredTable {
    /// # Errors
    /// When the relation is not stored or its columns have no encoding.
    pub fn new(def: Arc<RelationDef>, store: Arc<Store>) -> crate::error::Result<Self> {
        let layout = def
            .storage
            .clone()
            .ok_or_else(|| crate::error::ExecError::Internal(format!("{} is not stored", def.name)))?;
        let codec = Arc::new(RowCodec::new(def.schema.clone(), layout)?);
        Ok(Self { def, codec, store })
    }

    /// The encoded key prefix fixed by `column = literal` filters on the leading key columns.
    fn key_prefix(&self, filters: &[Expr]) -> DfResult<Vec<u8>> {
        let key_cols = self.codec.key_columns();
        let mut leading: Vec<ArrayRef> = Vec::new();
        for col in key_cols {
            let name = self.def.schema.field(*col).name();
            let found = filters.iter().find_map(|f| equality_literal(f, name));
            match found {
                Some(v) => {
                    let target = self.def.schema.field(*col).data_type();
                    let v = v.cast_to(target)?;
                    if v.is_null() {
                        break;
                    }
                    leading.push(v.to_array()?);
                }
                None => break,
            }
        }
        self.codec.encode_prefix(&leading).map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

/// `name = literal` (either side) inside a conjunction.
fn equality_literal(expr: &Expr, name: &str) -> Option<ScalarValue> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) if c.name == name => {
                Some(v.clone())
            }
            (Expr::Column(c), Expr::Cast(cast)) | (Expr::Cast(cast), Expr::Column(c)) if c.name == name => {
                match cast.expr.as_ref() {
                    Expr::Literal(v, _) => v.cast_to(cast.field.data_type()).ok(),
                    _ => None,
                }
            }
            _ => None,
        },
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
            equality_literal(left, name).or_else(|| equality_literal(right, name))
        }
        _ => None,
    }
}

#[async_trait]
impl TableProvider for StoredTable {
    fn schema(&self) -> SchemaRef {
        self.def.schema.clone()
    }

    fn table_type(&self) -> TableType {
        match self.def.kind {
            RelationKind::MaterializedView => TableType::View,
            _ => TableType::Base,
        }
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters narrow the key range; DataFusion still applies them to what is read.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let snapshot = match state.config().get_extension::<QuerySnapshot>() {
            Some(s) => s.0.clone(),
            None => self.store.snapshot().map_err(|e| DataFusionError::External(Box::new(e)))?,
        };
        let prefix = self.key_prefix(filters)?;
        let limit = if filters.is_empty() { limit } else { None };
        let codec = self.codec.clone();
        let id = self.def.id;
        let batches = tokio::task::block_in_place(|| snapshot.scan(id, &codec, &prefix, SCAN_BATCH_ROWS, limit))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let exec = MemorySourceConfig::try_new_exec(&[batches], self.def.schema.clone(), projection.cloned())?;
        Ok(exec)
    }
}
