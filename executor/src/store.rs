//! The state store: every stored relation, the catalog and runtime metadata in one embedded
//! database under the data directory.
//!
//! # Why redb
//! Eddy needs three things from its store: (1) atomic commits that span every relation, so an
//! epoch's changes to tables, views and source offsets land together; (2) consistent snapshots
//! for readers, so a `SELECT` joining two views sees both at the same epoch; (3) data that
//! does not have to fit in memory. `redb` gives all three with one writer and MVCC readers:
//! each epoch is one write transaction, each query one read transaction. Commits that need not
//! survive a crash use `Durability::None` (no fsync); a checkpoint or an acknowledged DML
//! statement commits with `Durability::Immediate`, which also makes every earlier commit
//! durable. After a crash the database reopens at the last durable commit — exactly the last
//! checkpoint. Arrow IPC segments plus a manifest were the alternative; they would need their
//! own snapshot isolation and compaction, which redb already has.
//!
//! # Layout
//! One redb table per stored relation (`rel/<id>`), keyed by the relation's encoded key
//! ([`RowCodec`]); one per job for its operators' state and sources' positions
//! (`state/<id>`, see [`crate::state`]); `catalog` (object id -> definition) and `meta` (small
//! named values: the last epoch, each job's plan fingerprint).
//!
//! # Crashes and damaged files
//! redb writes each commit copy-on-write and flips between two checksummed commit slots, so a
//! torn last write leaves the previous durable commit intact: the database reopens at the last
//! checkpoint, after a repair pass (quick, because every durable commit records the allocator
//! state) that is logged as a warning. A file that redb cannot open at all is an error that
//! stops the server: starting empty over a damaged data directory would silently lose data.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use eddy_common::ids::ObjectId;
use eddy_planner::catalog::StorageLayout;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::{ExecError, Result};

const CATALOG: TableDefinition<u32, &[u8]> = TableDefinition::new("catalog");

/// A file that marks a directory as an eddy data directory, written once the store exists: a
/// data directory whose store has gone missing is refused rather than silently started empty.
const DATA_DIR_MARKER: &str = "EDDY_DATA_DIR";
const DATA_DIR_FORMAT: &str = "eddy data directory, format 1";
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

fn relation_table_name(id: ObjectId) -> String {
    format!("rel/{}", id.0)
}

fn state_table_name(id: ObjectId) -> String {
    format!("state/{}", id.0)
}

/// The meta key holding a job's plan fingerprint once its state was first checkpointed.
pub fn job_marker_key(id: ObjectId) -> String {
    format!("job/{}", id.0)
}

/// The embedded database.
pub struct Store {
    db: Database,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Changes to one stored relation, produced by its materialize actors during one epoch.
#[derive(Debug, Clone)]
pub enum RelationDelta {
    /// key -> new value, or `None` to delete the key.
    Keyed(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    /// row -> change of multiplicity.
    Counted(Vec<(Vec<u8>, i64)>),
}

/// A change to the persisted catalog, committed with the epoch it belongs to.
#[derive(Debug, Clone)]
pub enum CatalogChange {
    Put {
        id: ObjectId,
        definition: Vec<u8>,
    },
    Delete {
        id: ObjectId,
    },
    /// Everything stored for the object goes: its rows, its operators' state and its plan
    /// fingerprint.
    DropData {
        id: ObjectId,
    },
    PutMeta {
        key: String,
        value: Vec<u8>,
    },
    DeleteMeta {
        key: String,
    },
}

/// Everything one epoch commits.
#[derive(Debug, Default)]
pub struct EpochCommit {
    pub relations: Vec<(ObjectId, RelationDelta)>,
    /// Operator state changes and source positions, per job (checkpoints only).
    pub state: Vec<(ObjectId, Vec<crate::state::StateEntry>)>,
    pub catalog: Vec<CatalogChange>,
    pub durable: bool,
}

impl Store {
    /// Opens (or creates) the store in `dir`. With `verify`, every page's checksum is checked
    /// first (reading the whole file): a damaged latest commit falls back to the previous one,
    /// and damage that cannot be repaired is an error instead of a later panic.
    ///
    /// # Errors
    /// When the directory or database cannot be opened, for example because another `eddy`
    /// process holds it, or the file is damaged.
    pub fn open(dir: &Path, verify: bool) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir).map_err(|e| ExecError::Storage(format!("create {}: {e}", dir.display())))?;
        let path = dir.join("eddy.redb");
        let marker = dir.join(DATA_DIR_MARKER);
        let existed = path.exists();
        if !existed && marker.exists() {
            return Err(ExecError::Storage(format!(
                "{} belongs to an eddy data directory but {} is missing; eddy does not start empty over it. \
                 Restore the file from a backup, or remove the directory to start empty",
                marker.display(),
                path.display()
            )));
        }
        let db = Database::builder()
            .set_cache_size(256 << 20)
            .set_check_integrity_on_open(verify)
            .set_repair_callback(|session| {
                if session.progress() == 0.0 {
                    tracing::warn!("checking the data directory and recovering its last good checkpoint");
                }
            })
            .create(&path)
            .map_err(|e| {
                let hint = if existed {
                    "; the file is damaged or held by another eddy process. Eddy does not start over a data \
                     directory it cannot read: restore it from a backup, or move it away to start empty"
                } else {
                    ""
                };
                ExecError::Storage(format!("cannot open {}: {e}{hint}", path.display()))
            })?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(CATALOG).map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
        txn.commit().map_err(storage)?;
        if !marker.exists() {
            std::fs::write(&marker, format!("{DATA_DIR_FORMAT}\n"))
                .map_err(|e| ExecError::Storage(format!("write {}: {e}", marker.display())))?;
        }
        Ok(Arc::new(Self { db }))
    }

    /// A consistent read-only view of everything committed so far.
    ///
    /// # Errors
    /// On storage failure.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let txn = self.db.begin_read().map_err(storage)?;
        Ok(Snapshot { txn: Arc::new(txn) })
    }

    /// Applies one epoch's changes atomically.
    ///
    /// # Errors
    /// On storage failure; nothing of the epoch is applied then.
    pub fn commit(&self, commit: &EpochCommit) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(if commit.durable { Durability::Immediate } else { Durability::None }).map_err(storage)?;
        // A durable commit records the allocator state, so reopening after a crash need not
        // walk every table to rebuild it; it commits in two phases, so a write torn by a crash
        // of the machine can only lose the commit in progress, never corrupt the previous one.
        txn.set_quick_repair(commit.durable);
        txn.set_two_phase_commit(commit.durable);
        for (job, entries) in &commit.state {
            let name = state_table_name(*job);
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
            put_or_remove(&mut txn.open_table(def).map_err(storage)?, entries)?;
        }
        for (id, delta) in &commit.relations {
            let name = relation_table_name(*id);
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
            let mut table = txn.open_table(def).map_err(storage)?;
            match delta {
                RelationDelta::Keyed(entries) => put_or_remove(&mut table, entries)?,
                RelationDelta::Counted(entries) => {
                    for (k, d) in entries {
                        let current = match table.get(k.as_slice()).map_err(storage)? {
                            Some(v) => decode_count(v.value()),
                            None => 0,
                        };
                        let next = current + d;
                        if next > 0 {
                            table.insert(k.as_slice(), next.to_le_bytes().as_slice()).map_err(storage)?;
                        } else {
                            if next < 0 {
                                tracing::error!(relation = id.0, "multiplicity went negative; clamping to zero");
                            }
                            table.remove(k.as_slice()).map_err(storage)?;
                        }
                    }
                }
            }
        }
        for change in &commit.catalog {
            match change {
                CatalogChange::Put { id, definition } => {
                    let mut t = txn.open_table(CATALOG).map_err(storage)?;
                    t.insert(id.0, definition.as_slice()).map_err(storage)?;
                }
                CatalogChange::Delete { id } => {
                    let mut t = txn.open_table(CATALOG).map_err(storage)?;
                    t.remove(id.0).map_err(storage)?;
                }
                CatalogChange::DropData { id } => {
                    for name in [relation_table_name(*id), state_table_name(*id)] {
                        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
                        txn.delete_table(def).map_err(storage)?;
                    }
                    let mut t = txn.open_table(META).map_err(storage)?;
                    t.remove(job_marker_key(*id).as_str()).map_err(storage)?;
                }
                CatalogChange::PutMeta { key, value } => {
                    let mut t = txn.open_table(META).map_err(storage)?;
                    t.insert(key.as_str(), value.as_slice()).map_err(storage)?;
                }
                CatalogChange::DeleteMeta { key } => {
                    let mut t = txn.open_table(META).map_err(storage)?;
                    t.remove(key.as_str()).map_err(storage)?;
                }
            }
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }

    /// The persisted catalog entries in id order.
    ///
    /// # Errors
    /// On storage failure.
    pub fn catalog_entries(&self) -> Result<Vec<(ObjectId, Vec<u8>)>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(CATALOG).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.push((ObjectId(k.value()), v.value().to_vec()));
        }
        Ok(out)
    }

    /// A small named value from the metadata table.
    ///
    /// # Errors
    /// On storage failure.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(META).map_err(storage)?;
        Ok(table.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
    }
}

/// Writes each entry's new value, or removes the key for `None`.
fn put_or_remove(table: &mut redb::Table<'_, &[u8], &[u8]>, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
    for (k, v) in entries {
        match v {
            Some(v) => {
                table.insert(k.as_slice(), v.as_slice()).map_err(storage)?;
            }
            None => {
                table.remove(k.as_slice()).map_err(storage)?;
            }
        }
    }
    Ok(())
}

fn decode_count(bytes: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    i64::from_le_bytes(buf)
}

pub(crate) fn storage(e: impl std::fmt::Display) -> ExecError {
    ExecError::Storage(e.to_string())
}

/// A read-only, consistent view of the store at one commit.
#[derive(Clone)]
pub struct Snapshot {
    txn: Arc<redb::ReadTransaction>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl Snapshot {
    fn table(&self, id: ObjectId) -> Result<Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>> {
        let name = relation_table_name(id);
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
        match self.txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(storage(e)),
        }
    }

    fn state_table(&self, job: ObjectId) -> Result<Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>> {
        let name = state_table_name(job);
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
        match self.txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(storage(e)),
        }
    }

    /// One entry of a job's state table.
    ///
    /// # Errors
    /// On storage failure.
    pub fn state_get(&self, job: ObjectId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.state_table(job)? {
            Some(t) => Ok(t.get(key).map_err(storage)?.map(|v| v.value().to_vec())),
            None => Ok(None),
        }
    }

    /// Calls `f` with every entry of a job's state table whose key starts with `prefix`.
    ///
    /// # Errors
    /// On storage failure, or what `f` returns.
    pub fn state_scan(
        &self,
        job: ObjectId,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let Some(table) = self.state_table(job)? else { return Ok(()) };
        for entry in table.range::<&[u8]>(prefix..).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    /// Number of entries in a job's state table, for recovery figures.
    ///
    /// # Errors
    /// On storage failure.
    pub fn state_entry_count(&self, job: ObjectId) -> Result<u64> {
        match self.state_table(job)? {
            Some(t) => t.len().map_err(storage),
            None => Ok(0),
        }
    }

    /// A small named value from the metadata table.
    ///
    /// # Errors
    /// On storage failure.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let table = self.txn.open_table(META).map_err(storage)?;
        Ok(table.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    /// The stored value (non-key columns) of `key` in a keyed relation.
    ///
    /// # Errors
    /// On storage failure.
    pub fn get_value(&self, id: ObjectId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.table(id)? {
            Some(t) => Ok(t.get(key).map_err(storage)?.map(|v| v.value().to_vec())),
            None => Ok(None),
        }
    }

    /// True when `key` is present in the relation.
    ///
    /// # Errors
    /// On storage failure.
    pub fn contains_key(&self, id: ObjectId, key: &[u8]) -> Result<bool> {
        match self.table(id)? {
            Some(t) => Ok(t.get(key).map_err(storage)?.is_some()),
            None => Ok(false),
        }
    }

    /// Number of stored entries (distinct keys or rows) of a relation.
    ///
    /// # Errors
    /// On storage failure.
    pub fn entry_count(&self, id: ObjectId) -> Result<u64> {
        match self.table(id)? {
            Some(t) => t.len().map_err(storage),
            None => Ok(0),
        }
    }

    /// Reads a relation's rows whose encoded key starts with `prefix` (all rows for an empty
    /// prefix), decoded into batches of at most `batch_rows` rows in the relation's schema.
    ///
    /// # Errors
    /// On storage or decoding failure.
    pub fn scan(
        &self,
        id: ObjectId,
        codec: &RowCodec,
        prefix: &[u8],
        batch_rows: usize,
        limit: Option<usize>,
    ) -> Result<Vec<RecordBatch>> {
        let Some(table) = self.table(id)? else {
            return Ok(Vec::new());
        };
        let mut batches = Vec::new();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut produced = 0usize;
        let iter = table.range::<&[u8]>(prefix..).map_err(storage)?;
        for entry in iter {
            let (k, v) = entry.map_err(storage)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            let count = if codec.counted() { decode_count(v.value()).max(0) as usize } else { 1 };
            produced += count;
            keys.push(k.to_vec());
            values.push(v.value().to_vec());
            if keys.len() >= batch_rows {
                batches.push(codec.decode(&keys, &values)?);
                keys.clear();
                values.clear();
            }
            if limit.is_some_and(|l| produced >= l) {
                break;
            }
        }
        if !keys.is_empty() {
            batches.push(codec.decode(&keys, &values)?);
        }
        Ok(batches)
    }
}

/// Encodes a relation's rows as store keys and values, and decodes them back.
///
/// Keys use Arrow's row format, which compares bytewise in the same order as the values, so a
/// prefix of the key columns is a range of keys: that is what point lookups use.
#[derive(Debug)]
pub struct RowCodec {
    schema: SchemaRef,
    layout: StorageLayout,
    key_columns: Vec<usize>,
    value_columns: Vec<usize>,
    key: Option<RowConverter>,
    value: Option<RowConverter>,
}

impl RowCodec {
    /// # Errors
    /// When a column type has no row encoding.
    pub fn new(schema: SchemaRef, layout: StorageLayout) -> Result<Self> {
        let n = schema.fields().len();
        let key_columns = layout.key_columns(n);
        let value_columns: Vec<usize> = match &layout {
            StorageLayout::Keyed { key } => (0..n).filter(|c| !key.contains(c)).collect(),
            StorageLayout::Counted => Vec::new(),
        };
        let converter = |cols: &[usize]| -> Result<Option<RowConverter>> {
            if cols.is_empty() {
                return Ok(None);
            }
            let fields = cols.iter().map(|c| SortField::new(schema.field(*c).data_type().clone())).collect();
            Ok(Some(RowConverter::new(fields)?))
        };
        let key = converter(&key_columns)?;
        let value = converter(&value_columns)?;
        Ok(Self { schema, layout, key_columns, value_columns, key, value })
    }

    pub fn counted(&self) -> bool {
        matches!(self.layout, StorageLayout::Counted)
    }

    pub fn layout(&self) -> &StorageLayout {
        &self.layout
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn key_columns(&self) -> &[usize] {
        &self.key_columns
    }

    /// Encodes the key columns of every row of `batch` (in the relation's schema).
    ///
    /// # Errors
    /// On an encoding failure.
    pub fn encode_keys(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        encode(self.key.as_ref(), &self.key_columns, batch)
    }

    /// Encodes the non-key columns of every row.
    ///
    /// # Errors
    /// On an encoding failure.
    pub fn encode_values(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        encode(self.value.as_ref(), &self.value_columns, batch)
    }

    /// Encodes the leading key columns given as arrays (one row each) into a key prefix.
    ///
    /// # Errors
    /// On an encoding failure or when more columns are given than the key has.
    pub fn encode_prefix(&self, leading: &[ArrayRef]) -> Result<Vec<u8>> {
        if leading.len() > self.key_columns.len() {
            return Err(ExecError::Internal("key prefix longer than the key".into()));
        }
        if leading.is_empty() {
            return Ok(Vec::new());
        }
        // The whole key: the codec's own converter encodes it, no need to build another.
        if leading.len() == self.key_columns.len()
            && let Some(key) = &self.key
        {
            return Ok(key.convert_columns(leading)?.row(0).as_ref().to_vec());
        }
        let fields = self.key_columns[..leading.len()]
            .iter()
            .map(|c| SortField::new(self.schema.field(*c).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let rows = converter.convert_columns(leading)?;
        Ok(rows.row(0).as_ref().to_vec())
    }

    /// Decodes stored entries back into rows of the relation's schema; counted rows are
    /// repeated by their multiplicity.
    ///
    /// # Errors
    /// On corrupt entries.
    pub fn decode(&self, keys: &[Vec<u8>], values: &[Vec<u8>]) -> Result<RecordBatch> {
        let n = self.schema.fields().len();
        let mut columns: Vec<Option<ArrayRef>> = vec![None; n];
        if let Some(conv) = &self.key {
            let parser = conv.parser();
            let rows = keys.iter().map(|k| parser.parse(k));
            let arrays = conv.convert_rows(rows)?;
            for (c, a) in self.key_columns.iter().zip(arrays) {
                columns[*c] = Some(a);
            }
        }
        if let Some(conv) = &self.value {
            let parser = conv.parser();
            let rows = values.iter().map(|v| parser.parse(v));
            let arrays = conv.convert_rows(rows)?;
            for (c, a) in self.value_columns.iter().zip(arrays) {
                columns[*c] = Some(a);
            }
        }
        let mut columns: Vec<ArrayRef> = columns
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.ok_or_else(|| ExecError::Internal(format!("column {i} missing from stored row"))))
            .collect::<Result<_>>()?;
        let mut row_count = keys.len();
        if self.counted() {
            let mut indices = Vec::with_capacity(keys.len());
            for (i, v) in values.iter().enumerate() {
                for _ in 0..decode_count(v).max(0) {
                    indices.push(i as u32);
                }
            }
            if indices.len() != keys.len() {
                let idx = UInt32Array::from(indices);
                row_count = idx.len();
                columns = columns.iter().map(|c| take(c, &idx, None)).collect::<Result<_, _>>()?;
            }
        }
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(row_count)),
        )?;
        Ok(batch)
    }

    /// The column types, for callers building batches to encode.
    pub fn types(&self) -> Vec<DataType> {
        self.schema.fields().iter().map(|f| f.data_type().clone()).collect()
    }
}

fn encode(conv: Option<&RowConverter>, cols: &[usize], batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let Some(conv) = conv else {
        return Ok(vec![Vec::new(); batch.num_rows()]);
    };
    let arrays: Vec<ArrayRef> = cols.iter().map(|c| batch.column(*c).clone()).collect();
    let rows: Rows = conv.convert_columns(&arrays)?;
    Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn batch(schema: &SchemaRef, ids: Vec<i64>, names: Vec<Option<&str>>) -> RecordBatch {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(names))])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn keyed_and_counted_round_trip() -> Result<()> {
        let dir = tempfile::tempdir().map_err(storage)?;
        let store = Store::open(dir.path(), false)?;
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let keyed = RowCodec::new(schema.clone(), StorageLayout::Keyed { key: vec![0] })?;
        let counted = RowCodec::new(schema.clone(), StorageLayout::Counted)?;
        let rows = batch(&schema, vec![2, 1, 3], vec![Some("b"), Some("a"), None]);
        let keys = keyed.encode_keys(&rows)?;
        let values = keyed.encode_values(&rows)?;
        let entries = keys.into_iter().zip(values.into_iter().map(Some)).collect();
        let counted_keys = counted.encode_keys(&rows)?;
        let mut commit = EpochCommit::default();
        commit.relations.push((ObjectId(1), RelationDelta::Keyed(entries)));
        commit.relations.push((
            ObjectId(2),
            RelationDelta::Counted(vec![(counted_keys[0].clone(), 2), (counted_keys[1].clone(), 1)]),
        ));
        store.commit(&commit)?;
        let snap = store.snapshot()?;
        let read = snap.scan(ObjectId(1), &keyed, &[], 1024, None)?;
        assert_eq!(read[0], batch(&schema, vec![1, 2, 3], vec![Some("a"), Some("b"), None]));
        let read = snap.scan(ObjectId(2), &counted, &[], 1024, None)?;
        assert_eq!(read[0], batch(&schema, vec![1, 2, 2], vec![Some("a"), Some("b"), Some("b")]));
        // A point lookup by key prefix reads one row.
        let prefix = keyed.encode_prefix(&[Arc::new(Int64Array::from(vec![2]))])?;
        let read = snap.scan(ObjectId(1), &keyed, &prefix, 1024, None)?;
        assert_eq!(read[0], batch(&schema, vec![2], vec![Some("b")]));
        // Counts going to zero remove the row.
        let mut commit = EpochCommit::default();
        commit.relations.push((ObjectId(2), RelationDelta::Counted(vec![(counted_keys[0].clone(), -2)])));
        store.commit(&commit)?;
        let read = store.snapshot()?.scan(ObjectId(2), &counted, &[], 1024, None)?;
        assert_eq!(read[0], batch(&schema, vec![1], vec![Some("a")]));
        Ok(())
    }
}
