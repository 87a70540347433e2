//! What the planner knows about each catalog object.
//!
//! The server owns the live catalog; the planner only reads [`RelationDef`]s through
//! [`RelationResolver`]. A definition is rebuilt from its SQL text on every start, so nothing
//! here needs to be serialized except the text and the id.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::{Expr, LogicalPlan};
use eddy_common::ids::ObjectId;

/// The kinds of relation in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelationKind {
    /// Durable rows fed by DML and/or a connector.
    Table,
    /// An append-only stream from a connector; not stored.
    Source,
    /// An incrementally maintained, stored query result.
    MaterializedView,
    /// A named query, inlined where used.
    View,
    /// A query whose changes are pushed to an external system.
    Sink,
}

impl RelationKind {
    pub fn sql_name(self) -> &'static str {
        match self {
            RelationKind::Table => "table",
            RelationKind::Source => "source",
            RelationKind::MaterializedView => "materialized view",
            RelationKind::View => "view",
            RelationKind::Sink => "sink",
        }
    }

    /// True for relations whose rows live in the state store and can be read with `SELECT`.
    pub fn is_stored(self) -> bool {
        matches!(self, RelationKind::Table | RelationKind::MaterializedView)
    }
}

/// How a stored relation's rows are laid out in the state store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLayout {
    /// Rows are unique on these columns: the store maps key -> rest of the row, and a change
    /// is a blind put or delete. Requires that each key is written by a single actor.
    Keyed { key: Vec<usize> },
    /// A multiset: the store maps the whole row -> its multiplicity, and a change adds its
    /// weight. Works for any stream, from any number of actors.
    Counted,
}

impl StorageLayout {
    /// Columns the stored key starts with, which point lookups can use.
    pub fn key_columns(&self, num_columns: usize) -> Vec<usize> {
        match self {
            StorageLayout::Keyed { key } => key.clone(),
            StorageLayout::Counted => (0..num_columns).collect(),
        }
    }
}

/// How the rows of a stream are spread over the actors that produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distribution {
    /// One actor produces everything.
    Single,
    /// Rows with equal values in these columns come from the same actor.
    HashBy(Vec<usize>),
    /// No guarantee.
    Arbitrary,
}

/// `WATERMARK FOR col AS expr`.
#[derive(Debug, Clone)]
pub struct WatermarkDef {
    pub column: usize,
    /// Evaluated over the relation's row; yields the watermark candidate for that row.
    pub expr: Expr,
}

/// A connector attached to a table or source: `WITH (connector = ..., ...) FORMAT .. ENCODE ..`.
#[derive(Debug, Clone, Default)]
pub struct ConnectorDef {
    pub connector: String,
    pub options: HashMap<String, String>,
    pub format: Option<String>,
    pub encode: Option<String>,
    pub format_options: HashMap<String, String>,
}

/// One object of the catalog as the planner sees it.
#[derive(Debug, Clone)]
pub struct RelationDef {
    pub id: ObjectId,
    pub name: String,
    pub kind: RelationKind,
    /// The columns users see.
    pub schema: SchemaRef,
    /// Declared primary key (tables), or the derived unique key (materialized views).
    pub primary_key: Vec<usize>,
    pub storage: Option<StorageLayout>,
    /// True when rows are only ever inserted (sources, `APPEND ONLY` tables).
    pub append_only: bool,
    pub watermark: Option<WatermarkDef>,
    /// Column defaults for `INSERT`, by column.
    pub defaults: Vec<Option<Expr>>,
    /// `col TYPE AS expr` columns, by column.
    pub generated: Vec<Option<Expr>>,
    pub connector: Option<ConnectorDef>,
    /// Objects this one reads from.
    pub dependencies: Vec<ObjectId>,
    /// How many actors emit this relation's changes, and how the rows are spread over them.
    pub output_parallelism: usize,
    pub output_distribution: Distribution,
    /// The statement that created the object, replayed on restart.
    pub definition: String,
    /// For views: the query plan that is inlined where the view is used.
    pub view_plan: Option<Arc<LogicalPlan>>,
    /// `EMIT ON WINDOW CLOSE` materialized views.
    pub emit_on_window_close: bool,
}

impl RelationDef {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.schema.fields().iter().position(|f| f.name() == name)
    }
}

/// Resolves relation names for the planner.
pub trait RelationResolver: Send + Sync {
    fn relation(&self, name: &str) -> Option<Arc<RelationDef>>;
    fn relation_by_id(&self, id: ObjectId) -> Option<Arc<RelationDef>>;
}
