//! `pg_catalog` and `information_schema` for psql and drivers.
//!
//! `datafusion-pg-catalog` provides the tables (static ones from a real Postgres, dynamic ones
//! from DataFusion's catalog) and the functions psql calls. Eddy wraps its schema to tell
//! materialized views apart: DataFusion only knows tables and views, while psql's `\dm` asks
//! for `relkind = 'm'`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::context::{PgCatalogContextProvider, Role};
use datafusion_pg_catalog::pg_catalog::{PgCatalogSchemaProvider, PgCatalogStaticTables, setup_pg_catalog};

use crate::engine::DATABASE;
use crate::users::{BOOTSTRAP_USER, Users};

/// Registers `pg_catalog` (with Eddy's relkind fix) and the Postgres functions psql uses.
///
/// # Errors
/// When the bundled catalog data cannot be loaded.
pub fn install(ctx: &SessionContext, users: Arc<Users>) -> Result<(), DataFusionError> {
    let roles = EddyRoles { users };
    setup_pg_catalog(ctx, DATABASE, roles.clone()).map_err(|e| *e)?;
    let static_tables = Arc::new(PgCatalogStaticTables::try_new()?);
    let inner = PgCatalogSchemaProvider::try_new(ctx.state().catalog_list().clone(), static_tables, roles)?;
    let catalog =
        ctx.catalog(DATABASE).ok_or_else(|| DataFusionError::Configuration(format!("catalog {DATABASE} missing")))?;
    catalog.register_schema(
        "pg_catalog",
        Arc::new(EddyPgCatalog { inner: Arc::new(inner), ctx_catalog: catalog.clone() }),
    )?;
    Ok(())
}

type Inner = PgCatalogSchemaProvider<Arc<dyn datafusion::catalog::CatalogProviderList>, EddyRoles>;

/// `pg_roles` (psql's `\du`) from Eddy's users; the bootstrap user is always there.
#[derive(Debug, Clone)]
struct EddyRoles {
    users: Arc<Users>,
}

#[async_trait]
impl PgCatalogContextProvider for EddyRoles {
    async fn roles(&self) -> Vec<String> {
        self.users.names()
    }

    /// Always `Some`: the catalog crate unwraps it, and a user dropped between listing and
    /// reading still has a name to show.
    async fn role(&self, name: &str) -> Option<Role> {
        let superuser = self.users.get(name).map_or(name == BOOTSTRAP_USER, |u| u.superuser);
        Some(Role {
            name: name.to_string(),
            is_superuser: superuser,
            can_login: true,
            can_create_db: superuser,
            can_create_role: superuser,
            can_create_user: superuser,
            can_replication: false,
            grants: vec![],
            inherited_roles: vec![],
        })
    }
}

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
        let keys = if name.eq_ignore_ascii_case("pg_constraint") {
            Some(KeyCatalog::Constraint)
        } else if name.eq_ignore_ascii_case("pg_index") {
            Some(KeyCatalog::Index)
        } else {
            None
        };
        if let (Some(which), Some(inner)) = (keys, table.clone()) {
            let Some(pg_class) = self.inner.table("pg_class").await? else { return Ok(table) };
            return Ok(Some(Arc::new(PgKeys::new(which, inner, pg_class, self.ctx_catalog.clone()))));
        }
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
        // Tables with a primary key, whose key index gets a row of its own (JDBC's
        // getPrimaryKeys names the key after it).
        let mut keyed = std::collections::HashMap::new();
        if let Some(public) = self.catalog.schema(crate::engine::SCHEMA)
            && let Some(public) = public.downcast_ref::<crate::catalog::PublicSchema>()
        {
            user_names.extend(public.catalog.all().iter().map(|d| d.name.clone()));
            for def in public.catalog.all() {
                if def.kind == eddy_planner::catalog::RelationKind::Table && !def.primary_key.is_empty() {
                    keyed.insert(def.name.clone(), KEY_INDEX_OID_BASE.saturating_add(def.id.0 as i32));
                }
            }
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
            let batch = RecordBatch::try_new(batch.schema(), columns)?;
            let oid_idx = schema.index_of("oid")?;
            let mut indexes = Vec::new();
            for i in 0..batch.num_rows() {
                let Some(index_oid) = names.is_valid(i).then(|| keyed.get(names.value(i))).flatten() else {
                    continue;
                };
                // The index's row is its table's, renamed and re-kinded.
                let row = batch.slice(i, 1);
                let mut columns: Vec<ArrayRef> = row.columns().to_vec();
                columns[oid_idx] = Arc::new(datafusion::arrow::array::Int32Array::from(vec![*index_oid]));
                columns[name_idx] = Arc::new(StringArray::from(vec![format!("{}_pkey", names.value(i))]));
                columns[kind_idx] = Arc::new(StringArray::from(vec!["i"]));
                indexes.push(RecordBatch::try_new(row.schema(), columns)?);
            }
            patched.push(batch);
            patched.extend(indexes);
        }
        MemTable::try_new(schema, vec![patched])
    }
}

/// OIDs given to the primary-key index of the table with object id `n` are this plus `n`:
/// far above the OIDs `pg_class` hands out, so they never meet.
const KEY_INDEX_OID_BASE: i32 = 1_000_000_000;

/// Which key catalog [`PgKeys`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyCatalog {
    Constraint,
    Index,
}

/// `pg_constraint` or `pg_index` with a row for each table's primary key (`<table>_pkey`),
/// after the bundled rows, so ORMs and JDBC reflect the keys.
struct PgKeys {
    which: KeyCatalog,
    inner: Arc<dyn TableProvider>,
    pg_class: Arc<dyn TableProvider>,
    catalog: Arc<dyn datafusion::catalog::CatalogProvider>,
    schema: datafusion::arrow::datatypes::SchemaRef,
}

impl std::fmt::Debug for PgKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgKeys").field("which", &self.which).finish_non_exhaustive()
    }
}

impl PgKeys {
    fn new(
        which: KeyCatalog,
        inner: Arc<dyn TableProvider>,
        pg_class: Arc<dyn TableProvider>,
        catalog: Arc<dyn datafusion::catalog::CatalogProvider>,
    ) -> Self {
        // Every column nullable: the added rows leave the columns Eddy has nothing for empty.
        // Key column lists are `int2[]` as in Postgres (the bundled tables have them as text),
        // since clients unnest and subscript them.
        let fields: Vec<_> = inner
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let field = f.as_ref().clone().with_nullable(true);
                if is_key_list(field.name()) { field.with_data_type(int2_list_type()) } else { field }
            })
            .collect();
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        Self { which, inner, pg_class, catalog, schema }
    }

    /// (table oid, namespace oid, table name, key column numbers from 1, index oid) per table
    /// with a primary key.
    async fn keys(&self) -> DfResult<Vec<KeyRow>> {
        let mut defs = std::collections::HashMap::new();
        if let Some(public) = self.catalog.schema(crate::engine::SCHEMA)
            && let Some(public) = public.downcast_ref::<crate::catalog::PublicSchema>()
        {
            for def in public.catalog.all() {
                if def.kind == eddy_planner::catalog::RelationKind::Table && !def.primary_key.is_empty() {
                    defs.insert(def.name.clone(), def);
                }
            }
        }
        if defs.is_empty() {
            return Ok(vec![]);
        }
        let ctx = SessionContext::new();
        ctx.register_table("c", self.pg_class.clone())?;
        let batches = ctx.sql("SELECT oid, relnamespace, relname FROM c").await?.collect().await?;
        let mut out = Vec::new();
        for batch in batches {
            use datafusion::arrow::array::Int32Array;
            let oids = batch.column(0).as_any().downcast_ref::<Int32Array>();
            let namespaces = batch.column(1).as_any().downcast_ref::<Int32Array>();
            let names = batch.column(2).as_any().downcast_ref::<StringArray>();
            let (Some(oids), Some(namespaces), Some(names)) = (oids, namespaces, names) else { continue };
            for i in 0..batch.num_rows() {
                let Some(def) = defs.get(names.value(i)) else { continue };
                // Only the user's relation, not a system view of the same name.
                if !table_is_visible(oids.value(i)) {
                    continue;
                }
                let columns = def.primary_key.iter().map(|c| (*c + 1) as i16).collect();
                let index_oid = KEY_INDEX_OID_BASE.saturating_add(def.id.0 as i32);
                out.push((oids.value(i), namespaces.value(i), def.name.clone(), columns, index_oid));
            }
        }
        Ok(out)
    }

    /// The added rows, each column cast to the bundled table's type.
    fn key_rows(&self, keys: &[KeyRow]) -> DfResult<RecordBatch> {
        use datafusion::arrow::array::{
            BooleanArray, Int16Array, Int16Builder, Int32Array, ListBuilder, new_null_array,
        };
        let n = keys.len();
        let int32 = |f: &dyn Fn(&KeyRow) -> i32| -> ArrayRef {
            Arc::new(Int32Array::from(keys.iter().map(f).collect::<Vec<_>>()))
        };
        let key_list = || -> ArrayRef {
            let mut b = ListBuilder::new(Int16Builder::new());
            for k in keys {
                b.values().append_slice(&k.3);
                b.append(true);
            }
            Arc::new(b.finish())
        };
        let truth = |v: bool| -> ArrayRef { Arc::new(BooleanArray::from(vec![v; n])) };
        let count =
            || -> ArrayRef { Arc::new(Int16Array::from(keys.iter().map(|k| k.3.len() as i16).collect::<Vec<_>>())) };
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let given: Option<ArrayRef> = match (self.which, field.name().as_str()) {
                (KeyCatalog::Constraint, "oid") => Some(int32(&|k| k.4.saturating_add(1))),
                (KeyCatalog::Constraint, "conname") => {
                    Some(Arc::new(StringArray::from(keys.iter().map(|k| format!("{}_pkey", k.2)).collect::<Vec<_>>())))
                }
                (KeyCatalog::Constraint, "connamespace") => Some(int32(&|k| k.1)),
                (KeyCatalog::Constraint, "contype") => Some(Arc::new(StringArray::from(vec!["p"; n]))),
                (KeyCatalog::Constraint, "condeferrable" | "condeferred") => Some(truth(false)),
                (KeyCatalog::Constraint, "convalidated" | "conislocal" | "connoinherit") => Some(truth(true)),
                (KeyCatalog::Constraint, "conrelid") => Some(int32(&|k| k.0)),
                (KeyCatalog::Constraint, "conindid") => Some(int32(&|k| k.4)),
                (KeyCatalog::Constraint, "contypid" | "conparentid" | "confrelid" | "coninhcount") => {
                    Some(int32(&|_| 0))
                }
                (KeyCatalog::Constraint, "conkey") => Some(key_list()),
                (KeyCatalog::Index, "indexrelid") => Some(int32(&|k| k.4)),
                (KeyCatalog::Index, "indrelid") => Some(int32(&|k| k.0)),
                (KeyCatalog::Index, "indnatts" | "indnkeyatts") => Some(count()),
                (KeyCatalog::Index, "indisunique" | "indisprimary" | "indimmediate" | "indisvalid")
                | (KeyCatalog::Index, "indisready" | "indislive") => Some(truth(true)),
                (KeyCatalog::Index, "indisexclusion" | "indisclustered" | "indcheckxmin" | "indisreplident")
                | (KeyCatalog::Index, "indnullsnotdistinct") => Some(truth(false)),
                (KeyCatalog::Index, "indkey") => Some(key_list()),
                _ => None,
            };
            let column = match given {
                Some(a) if a.data_type() == field.data_type() => a,
                Some(a) => datafusion::arrow::compute::cast(&a, field.data_type())
                    .unwrap_or_else(|_| new_null_array(field.data_type(), n)),
                None => new_null_array(field.data_type(), n),
            };
            columns.push(column);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[async_trait]
impl TableProvider for PgKeys {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.schema.clone()
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
        let ctx = SessionContext::new();
        ctx.register_table("t", self.inner.clone())?;
        let mut batches = Vec::new();
        for batch in ctx.table("t").await?.collect().await? {
            let columns = batch
                .columns()
                .iter()
                .zip(self.schema.fields())
                .map(|(column, field)| {
                    if is_key_list(field.name()) && column.data_type() != field.data_type() {
                        int2_list_from_text(column)
                    } else {
                        column.clone()
                    }
                })
                .collect();
            batches.push(RecordBatch::try_new(self.schema.clone(), columns)?);
        }
        let keys = self.keys().await?;
        if !keys.is_empty() {
            batches.push(self.key_rows(&keys)?);
        }
        MemTable::try_new(self.schema.clone(), vec![batches])?.scan(state, projection, filters, limit).await
    }
}

/// Columns of `pg_constraint` / `pg_index` that list column numbers.
fn is_key_list(column: &str) -> bool {
    matches!(column, "conkey" | "confkey" | "indkey")
}

fn int2_list_type() -> DataType {
    DataType::List(Arc::new(datafusion::arrow::datatypes::Field::new_list_field(DataType::Int16, true)))
}

/// A text column of space-separated numbers (Postgres' `int2vector` output) as `int2[]`;
/// anything else becomes NULL.
fn int2_list_from_text(column: &ArrayRef) -> ArrayRef {
    use datafusion::arrow::array::{Int16Builder, ListBuilder};
    let mut b = ListBuilder::new(Int16Builder::new());
    let text = datafusion::arrow::compute::cast(column, &DataType::Utf8).ok();
    let text = text.as_ref().and_then(|t| t.as_any().downcast_ref::<StringArray>());
    for i in 0..column.len() {
        match text {
            Some(t) if t.is_valid(i) => {
                let parsed: Option<Vec<i16>> = t.value(i).split_whitespace().map(|n| n.parse().ok()).collect();
                match parsed {
                    Some(numbers) => {
                        b.values().append_slice(&numbers);
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
            _ => b.append(false),
        }
    }
    Arc::new(b.finish())
}

/// One primary key shown in the catalog: table oid, namespace oid, index name, key columns
/// (1-based), index oid.
type KeyRow = (i32, i32, String, Vec<i16>, i32);
