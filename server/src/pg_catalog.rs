//! `pg_catalog` and `information_schema` for psql and drivers.
//!
//! `datafusion-pg-catalog` provides the tables (static ones from a real Postgres, dynamic ones
//! from DataFusion's catalog) and the functions psql calls. Eddy wraps its schema to tell
//! materialized views apart: DataFusion only knows tables and views, while psql's `\dm` asks
//! for `relkind = 'm'`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{PgCatalogSchemaProvider, PgCatalogStaticTables, setup_pg_catalog};

use crate::engine::DATABASE;

/// Registers `pg_catalog` (with Eddy's relkind fix) and the Postgres functions psql uses.
///
/// # Errors
/// When the bundled catalog data cannot be loaded.
pub fn install(ctx: &SessionContext) -> Result<(), DataFusionError> {
    setup_pg_catalog(ctx, DATABASE, EmptyContextProvider).map_err(|e| *e)?;
    let static_tables = Arc::new(PgCatalogStaticTables::try_new()?);
    let inner =
        PgCatalogSchemaProvider::try_new(ctx.state().catalog_list().clone(), static_tables, EmptyContextProvider)?;
    let catalog =
        ctx.catalog(DATABASE).ok_or_else(|| DataFusionError::Configuration(format!("catalog {DATABASE} missing")))?;
    catalog.register_schema(
        "pg_catalog",
        Arc::new(EddyPgCatalog { inner: Arc::new(inner), ctx_catalog: catalog.clone() }),
    )?;
    Ok(())
}

type Inner = PgCatalogSchemaProvider<Arc<dyn datafusion::catalog::CatalogProviderList>, EmptyContextProvider>;

struct EddyPgCatalog {
    inner: Arc<Inner>,
    ctx_catalog: Arc<dyn datafusion::catalog::CatalogProvider>,
}

impl std::fmt::Debug for EddyPgCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EddyPgCatalog").finish_non_exhaustive()
    }
}

#[async_trait]
impl SchemaProvider for EddyPgCatalog {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let table = self.inner.table(name).await?;
        if !name.eq_ignore_ascii_case("pg_class") {
            return Ok(table);
        }
        // Wrapped lazily: building pg_class asks every schema for its tables' schemas, this
        // one included, so the patch must not read pg_class until it is scanned.
        Ok(table.map(|inner| Arc::new(PgClass { inner, catalog: self.ctx_catalog.clone() }) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }

    /// Answered without building the table: building `pg_class` asks every schema for its
    /// tables' types, this one included.
    async fn table_type(&self, name: &str) -> DfResult<Option<TableType>> {
        Ok(self.inner.table_exist(name).then_some(TableType::Base))
    }
}

/// OIDs of relations outside the search path (`eddy_catalog`'s views), which
/// `pg_table_is_visible` reports as invisible so `\d` and ORM reflection list only the
/// user's relations. Refreshed on every scan of `pg_class`, which the queries calling the
/// function read first.
static INVISIBLE: std::sync::LazyLock<parking_lot::RwLock<std::collections::HashSet<i32>>> =
    std::sync::LazyLock::new(Default::default);

/// True unless `oid` is a relation outside the search path.
pub fn table_is_visible(oid: i32) -> bool {
    !INVISIBLE.read().contains(&oid)
}

fn note_invisible(
    batches: &[RecordBatch],
    schema: &datafusion::arrow::datatypes::SchemaRef,
    user_names: &std::collections::HashSet<String>,
) -> DfResult<()> {
    use datafusion::arrow::array::Int32Array;
    let (oid_idx, name_idx, ns_idx) =
        (schema.index_of("oid")?, schema.index_of("relname")?, schema.index_of("relnamespace")?);
    let mut rows = Vec::new();
    for batch in batches {
        let oids = batch.column(oid_idx).as_any().downcast_ref::<Int32Array>();
        let names = batch.column(name_idx).as_any().downcast_ref::<StringArray>();
        let namespaces = batch.column(ns_idx).as_any().downcast_ref::<Int32Array>();
        let (Some(oids), Some(names), Some(namespaces)) = (oids, names, namespaces) else { continue };
        for i in 0..batch.num_rows() {
            if oids.is_valid(i) && names.is_valid(i) && namespaces.is_valid(i) {
                rows.push((oids.value(i), names.value(i).to_string(), namespaces.value(i)));
            }
        }
    }
    let public_ns = rows.iter().find(|(_, name, _)| user_names.contains(name)).map(|(_, _, ns)| *ns);
    let invisible = rows
        .iter()
        .filter(|(_, name, ns)| crate::system::TABLES.contains(&name.as_str()) && Some(*ns) != public_ns)
        .map(|(oid, _, _)| *oid)
        .collect();
    *INVISIBLE.write() = invisible;
    Ok(())
}

/// `pg_class` with materialized views marked `relkind = 'm'`.
struct PgClass {
    inner: Arc<dyn TableProvider>,
    catalog: Arc<dyn datafusion::catalog::CatalogProvider>,
}

impl std::fmt::Debug for PgClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgClass").finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for PgClass {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let patched = self.patched().await?;
        patched.scan(state, projection, filters, limit).await
    }
}

impl PgClass {
    async fn patched(&self) -> DfResult<MemTable> {
        let mut mv_names = std::collections::HashSet::new();
        if let Some(public) = self.catalog.schema(crate::engine::SCHEMA)
            && let Some(public) = public.downcast_ref::<crate::catalog::PublicSchema>()
        {
            for def in public.catalog.all() {
                if def.kind == eddy_planner::catalog::RelationKind::MaterializedView {
                    mv_names.insert(def.name.clone());
                }
            }
        }
        let mut user_names = std::collections::HashSet::new();
        if let Some(public) = self.catalog.schema(crate::engine::SCHEMA)
            && let Some(public) = public.downcast_ref::<crate::catalog::PublicSchema>()
        {
            user_names.extend(public.catalog.all().iter().map(|d| d.name.clone()));
        }
        let schema = self.inner.schema();
        let ctx = SessionContext::new();
        ctx.register_table("t", self.inner.clone())?;
        let batches = ctx.table("t").await?.collect().await?;
        note_invisible(&batches, &schema, &user_names)?;
        let name_idx = schema.index_of("relname")?;
        let kind_idx = schema.index_of("relkind")?;
        let mut patched = Vec::with_capacity(batches.len());
        for batch in batches {
            let names = batch.column(name_idx).as_any().downcast_ref::<StringArray>().cloned();
            let kinds = batch.column(kind_idx).as_any().downcast_ref::<StringArray>().cloned();
            let (Some(names), Some(kinds)) = (names, kinds) else {
                patched.push(batch);
                continue;
            };
            let new_kinds: StringArray = (0..kinds.len())
                .map(|i| {
                    if names.is_valid(i) && mv_names.contains(names.value(i)) {
                        Some("m".to_string())
                    } else {
                        kinds.is_valid(i).then(|| kinds.value(i).to_string())
                    }
                })
                .collect();
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            columns[kind_idx] = Arc::new(new_kinds);
            patched.push(RecordBatch::try_new(batch.schema(), columns)?);
        }
        MemTable::try_new(schema, vec![patched])
    }
}
