//! The live catalog: every table, source, materialized view, view and sink, by id and name.
//!
//! Definitions are persisted as their SQL text (with id, kind and name) in the state store and
//! replayed in id order on start. The catalog is also DataFusion's `public` schema: each
//! stored relation appears as a [`StoredTable`], each view as the plan it inlines.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::LogicalPlan;
use eddy_common::ids::ObjectId;
use eddy_executor::read::StoredTable;
use eddy_executor::store::Store;
use eddy_planner::catalog::{RelationDef, RelationKind, RelationResolver};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// What the store keeps for each object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedObject {
    pub id: u32,
    pub kind: String,
    pub name: String,
    pub sql: String,
    /// The parallelism a view or sink was planned with; it is replanned with the same one,
    /// because its checkpointed state is laid out by actor.
    #[serde(default)]
    pub parallelism: Option<usize>,
}

impl PersistedObject {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

pub fn kind_tag(kind: RelationKind) -> &'static str {
    match kind {
        RelationKind::Table => "table",
        RelationKind::Source => "source",
        RelationKind::MaterializedView => "materialized_view",
        RelationKind::View => "view",
        RelationKind::Sink => "sink",
    }
}

#[derive(Default)]
struct Inner {
    by_id: BTreeMap<ObjectId, Arc<RelationDef>>,
    by_name: HashMap<String, ObjectId>,
}

/// The catalog, shared by every session.
pub struct Catalog {
    inner: RwLock<Inner>,
    next_id: std::sync::atomic::AtomicU32,
    store: Arc<Store>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("objects", &self.inner.read().by_id.len()).finish()
    }
}

impl Catalog {
    pub fn new(store: Arc<Store>, next_id: u32) -> Self {
        Self { inner: RwLock::new(Inner::default()), next_id: std::sync::atomic::AtomicU32::new(next_id.max(1)), store }
    }

    /// A fresh object id; ids are never reused, even after a drop.
    pub fn allocate_id(&self) -> ObjectId {
        ObjectId(self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// Makes sure ids handed out later exceed `id` (used when replaying definitions).
    pub fn observe_id(&self, id: ObjectId) {
        self.next_id.fetch_max(id.0 + 1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn next_id_value(&self) -> u32 {
        self.next_id.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn get(&self, name: &str) -> Option<Arc<RelationDef>> {
        let inner = self.inner.read();
        inner.by_name.get(name).and_then(|id| inner.by_id.get(id)).cloned()
    }

    pub fn get_by_id(&self, id: ObjectId) -> Option<Arc<RelationDef>> {
        self.inner.read().by_id.get(&id).cloned()
    }

    pub fn insert(&self, def: Arc<RelationDef>) {
        let mut inner = self.inner.write();
        inner.by_name.insert(def.name.clone(), def.id);
        inner.by_id.insert(def.id, def);
    }

    pub fn remove(&self, id: ObjectId) {
        let mut inner = self.inner.write();
        if let Some(def) = inner.by_id.remove(&id) {
            inner.by_name.remove(&def.name);
        }
    }

    /// All objects in id order.
    pub fn all(&self) -> Vec<Arc<RelationDef>> {
        self.inner.read().by_id.values().cloned().collect()
    }

    /// Objects that read `id` directly.
    pub fn dependents(&self, id: ObjectId) -> Vec<Arc<RelationDef>> {
        self.inner.read().by_id.values().filter(|d| d.dependencies.contains(&id)).cloned().collect()
    }

    /// `id` and everything that depends on it, dependents first (the order to drop them in).
    pub fn dependents_closure(&self, id: ObjectId) -> Vec<Arc<RelationDef>> {
        let mut out: Vec<Arc<RelationDef>> = Vec::new();
        fn visit(catalog: &Catalog, id: ObjectId, out: &mut Vec<Arc<RelationDef>>) {
            for d in catalog.dependents(id) {
                if !out.iter().any(|o| o.id == d.id) {
                    visit(catalog, d.id, out);
                }
            }
            if let Some(def) = catalog.get_by_id(id)
                && !out.iter().any(|o| o.id == id)
            {
                out.push(def);
            }
        }
        visit(self, id, &mut out);
        out
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl RelationResolver for Catalog {
    fn relation(&self, name: &str) -> Option<Arc<RelationDef>> {
        self.get(name)
    }

    fn relation_by_id(&self, id: ObjectId) -> Option<Arc<RelationDef>> {
        self.get_by_id(id)
    }
}

/// The catalog as DataFusion's `public` schema.
#[derive(Debug)]
pub struct PublicSchema {
    pub catalog: Arc<Catalog>,
}

/// A source seen from a `SELECT`: it has columns but no stored rows to read.
#[derive(Debug)]
struct SourceTable {
    def: Arc<RelationDef>,
}

#[async_trait]
impl TableProvider for SourceTable {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.def.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn datafusion::catalog::Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[datafusion::logical_expr::Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        Err(DataFusionError::Plan(format!(
            "source \"{}\" is a stream and stores no rows; create a materialized view over it and query that",
            self.def.name
        )))
    }
}

/// A view: its plan is inlined wherever it is used.
#[derive(Debug)]
struct ViewTable {
    def: Arc<RelationDef>,
    plan: Arc<LogicalPlan>,
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.def.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn get_logical_plan(&'_ self) -> Option<std::borrow::Cow<'_, LogicalPlan>> {
        Some(std::borrow::Cow::Borrowed(self.plan.as_ref()))
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let inner = datafusion::catalog::view::ViewTable::new(self.plan.as_ref().clone(), None);
        inner.scan(state, projection, filters, limit).await
    }
}

#[async_trait]
impl SchemaProvider for PublicSchema {
    fn table_names(&self) -> Vec<String> {
        self.catalog.all().iter().filter(|d| d.kind != RelationKind::Sink).map(|d| d.name.clone()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let (name, lookup) = eddy_planner::parser::split_lookup(name);
        let Some(def) = self.catalog.get(name) else {
            return Ok(None);
        };
        if lookup != eddy_planner::parser::Lookup::None && !def.kind.is_stored() {
            return Err(DataFusionError::Plan(format!(
                "FOR SYSTEM_TIME AS OF reads a table or materialized view; {} is a {}",
                def.name,
                def.kind.sql_name()
            )));
        }
        match def.kind {
            RelationKind::Table | RelationKind::MaterializedView => {
                let t = StoredTable::new(def, self.catalog.store().clone())
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                Ok(Some(Arc::new(t)))
            }
            RelationKind::View => match &def.view_plan {
                Some(plan) => Ok(Some(Arc::new(ViewTable { plan: plan.clone(), def }))),
                None => Ok(None),
            },
            RelationKind::Source => Ok(Some(Arc::new(SourceTable { def }))),
            RelationKind::Sink => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        let name = eddy_planner::parser::split_lookup(name).0;
        self.catalog.get(name).is_some_and(|d| d.kind != RelationKind::Sink)
    }

    async fn table_type(&self, name: &str) -> DfResult<Option<TableType>> {
        let name = eddy_planner::parser::split_lookup(name).0;
        Ok(self.catalog.get(name).and_then(|d| match d.kind {
            RelationKind::Table | RelationKind::Source => Some(TableType::Base),
            RelationKind::MaterializedView | RelationKind::View => Some(TableType::View),
            RelationKind::Sink => None,
        }))
    }
}
