//! Point reads: `SELECT <columns> FROM <table or materialized view> WHERE <key> = <value>
//! [AND ...]`, naming every column of the relation's stored key, is answered with one store
//! lookup. Planning and running such a query through DataFusion costs about half a
//! millisecond, a hundred times the lookup; dashboards and services issue little else.
//!
//! Anything that is not exactly that shape, and any value whose comparison with the key
//! column would need a cast (a string against an integer key, a fraction, a NULL), returns
//! `None` and takes the general path, so results never differ from DataFusion's.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int8Array, Int16Array, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::array::{LargeStringArray, StringViewArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{ParamValues, ScalarValue};
use eddy_executor::store::RowCodec;
use eddy_planner::catalog::{RelationDef, RelationKind, StorageLayout};
use sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, Ident, ObjectName, Query, SelectItem, SetExpr, TableFactor, UnaryOperator,
    Value, WildcardAdditionalOptions,
};

use crate::engine::Engine;
use crate::error::Result;
use crate::session::StatementResult;

/// A key value as written in the query, before it meets the key column's type.
#[derive(Debug, Clone, PartialEq)]
enum KeyValue {
    Integer(i128),
    Text(String),
}

/// Answers `query` with a key lookup when it is a point read (see the module docs).
///
/// # Errors
/// Storage failures; a query that is not a point read is `Ok(None)`.
pub fn try_answer(engine: &Engine, query: &Query, params: Option<&ParamValues>) -> Result<Option<StatementResult>> {
    let Some(read) = PointRead::recognize(engine, query, params) else {
        return Ok(None);
    };
    let snapshot = engine.runtime.snapshot()?;
    let codec = RowCodec::new(read.def.schema.clone(), StorageLayout::Keyed { key: read.key_columns.clone() })?;
    let key = codec.encode_prefix(&read.key_values)?;
    let schema = Arc::new(Schema::new(
        read.output
            .iter()
            .map(|(name, column)| Field::new(name, read.def.schema.field(*column).data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let Some(value) = snapshot.get_value(read.def.id, &key)? else {
        return Ok(Some(StatementResult::Rows { schema, batches: vec![] }));
    };
    let row = codec.decode(&[key], &[value])?;
    let columns: Vec<ArrayRef> = read.output.iter().map(|(_, column)| row.column(*column).clone()).collect();
    let batch =
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| crate::error::ServerError::DataFusion(e.into()))?;
    Ok(Some(StatementResult::Rows { schema, batches: vec![batch] }))
}

/// A recognized point read.
struct PointRead {
    def: Arc<RelationDef>,
    key_columns: Vec<usize>,
    /// One single-row array per key column, of the column's type, in key order.
    key_values: Vec<ArrayRef>,
    /// Output column names and the relation columns they show.
    output: Vec<(String, usize)>,
}

/// An identifier as Postgres folds it: unquoted names are lower-cased.
fn folded(ident: &Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() }
}

fn plain_wildcard(options: &WildcardAdditionalOptions) -> bool {
    options.opt_ilike.is_none()
        && options.opt_exclude.is_none()
        && options.opt_except.is_none()
        && options.opt_replace.is_none()
        && options.opt_rename.is_none()
        && options.opt_alias.is_none()
}

impl PointRead {
    fn recognize(engine: &Engine, query: &Query, params: Option<&ParamValues>) -> Option<Self> {
        if query.with.is_some()
            || query.order_by.is_some()
            || query.limit_clause.is_some()
            || query.fetch.is_some()
            || !query.locks.is_empty()
            || query.for_clause.is_some()
            || query.settings.is_some()
            || query.format_clause.is_some()
            || !query.pipe_operators.is_empty()
        {
            return None;
        }
        let SetExpr::Select(select) = query.body.as_ref() else { return None };
        let no_grouping = matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
        if select.distinct.is_some()
            || select.top.is_some()
            || select.select_modifiers.is_some()
            || select.exclude.is_some()
            || select.into.is_some()
            || !select.lateral_views.is_empty()
            || select.prewhere.is_some()
            || !select.connect_by.is_empty()
            || !no_grouping
            || !select.cluster_by.is_empty()
            || !select.distribute_by.is_empty()
            || !select.sort_by.is_empty()
            || select.having.is_some()
            || !select.named_window.is_empty()
            || select.qualify.is_some()
            || select.value_table_mode.is_some()
            || select.from.len() != 1
            || !select.from[0].joins.is_empty()
        {
            return None;
        }
        let TableFactor::Table {
            name,
            alias,
            args: None,
            with_hints,
            version: None,
            with_ordinality: false,
            partitions,
            json_path: None,
            sample: None,
            index_hints,
        } = &select.from[0].relation
        else {
            return None;
        };
        if !with_hints.is_empty() || !partitions.is_empty() || !index_hints.is_empty() {
            return None;
        }
        if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
            return None;
        }
        let relation = relation_name(name)?;
        let def = engine.catalog.get(&relation)?;
        if !matches!(def.kind, RelationKind::Table | RelationKind::MaterializedView) {
            return None;
        }
        let Some(StorageLayout::Keyed { key }) = &def.storage else { return None };
        if key.is_empty() {
            return None;
        }
        let qualifier = alias.as_ref().map(|a| folded(&a.name)).unwrap_or(relation);
        let column = |expr: &Expr| -> Option<usize> {
            match expr {
                Expr::Identifier(ident) => def.column_index(&folded(ident)),
                Expr::CompoundIdentifier(parts) if parts.len() == 2 && folded(&parts[0]) == qualifier => {
                    def.column_index(&folded(&parts[1]))
                }
                _ => None,
            }
        };

        let mut output = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::Wildcard(options) if plain_wildcard(options) => {
                    output.extend(def.schema.fields().iter().enumerate().map(|(i, f)| (f.name().clone(), i)));
                }
                SelectItem::UnnamedExpr(expr) => {
                    let c = column(expr)?;
                    output.push((def.schema.field(c).name().clone(), c));
                }
                SelectItem::ExprWithAlias { expr, alias } => output.push((folded(alias), column(expr)?)),
                _ => return None,
            }
        }

        // DataFusion refuses duplicate output names; so does this path, to answer alike.
        let mut names: Vec<&str> = output.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }

        let mut given: Vec<Option<KeyValue>> = vec![None; key.len()];
        let mut conjuncts = Vec::new();
        split_conjunction(select.selection.as_ref()?, &mut conjuncts);
        for conjunct in conjuncts {
            let Expr::BinaryOp { left, op: BinaryOperator::Eq, right } = conjunct else { return None };
            let (c, value) = match (column(left), column(right)) {
                (Some(c), None) => (c, key_value(right, params)?),
                (None, Some(c)) => (c, key_value(left, params)?),
                _ => return None,
            };
            let slot = key.iter().position(|k| *k == c)?;
            if given[slot].replace(value).is_some() {
                return None;
            }
        }
        let key_values = key
            .iter()
            .zip(given)
            .map(|(c, value)| key_array(def.schema.field(*c).data_type(), &value?))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { key_columns: key.clone(), def, key_values, output })
    }
}

/// `name` or `public.name`.
fn relation_name(name: &ObjectName) -> Option<String> {
    let parts: Vec<&Ident> = name.0.iter().map(|p| p.as_ident()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [table] => Some(folded(table)),
        [schema, table] if folded(schema) == crate::engine::SCHEMA => Some(folded(table)),
        _ => None,
    }
}

fn split_conjunction<'a>(expr: &'a Expr, out: &mut Vec<&'a Expr>) {
    match expr {
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            split_conjunction(left, out);
            split_conjunction(right, out);
        }
        Expr::Nested(inner) => split_conjunction(inner, out),
        other => out.push(other),
    }
}

/// A literal integer or string, or a bound parameter holding one.
fn key_value(expr: &Expr, params: Option<&ParamValues>) -> Option<KeyValue> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<i128>().ok().map(KeyValue::Integer),
            Value::SingleQuotedString(s) => Some(KeyValue::Text(s.clone())),
            Value::Placeholder(p) => {
                let index = p.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)?;
                let ParamValues::List(list) = params? else { return None };
                match &list.get(index)?.value {
                    ScalarValue::Int8(Some(v)) => Some(KeyValue::Integer(i128::from(*v))),
                    ScalarValue::Int16(Some(v)) => Some(KeyValue::Integer(i128::from(*v))),
                    ScalarValue::Int32(Some(v)) => Some(KeyValue::Integer(i128::from(*v))),
                    ScalarValue::Int64(Some(v)) => Some(KeyValue::Integer(i128::from(*v))),
                    ScalarValue::UInt8(Some(v)) => Some(KeyValue::Integer(i128::from(*v))),
                    ScalarValue::UInt16(Some(v)) => Some(KeyValue::Integer(i128::from(*v))),
                    ScalarValue::UInt32(Some(v)) => Some(KeyValue::Integer(i128::from(*v))),
                    ScalarValue::UInt64(Some(v)) => Some(KeyValue::Integer(i128::from(*v))),
                    ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
                        Some(KeyValue::Text(s.clone()))
                    }
                    _ => None,
                }
            }
            _ => None,
        },
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match key_value(expr, params)? {
            KeyValue::Integer(n) => Some(KeyValue::Integer(-n)),
            KeyValue::Text(_) => None,
        },
        Expr::Nested(inner) => key_value(inner, params),
        _ => None,
    }
}

/// The value as a one-row array of the key column's type, when it is exactly representable
/// and compares the same way there (integers with integers, text with text).
fn key_array(data_type: &DataType, value: &KeyValue) -> Option<ArrayRef> {
    macro_rules! integer {
        ($array:ty, $native:ty, $n:expr) => {
            Arc::new(<$array>::from(vec![<$native>::try_from($n).ok()?])) as ArrayRef
        };
    }
    Some(match (data_type, value) {
        (DataType::Int8, KeyValue::Integer(n)) => integer!(Int8Array, i8, *n),
        (DataType::Int16, KeyValue::Integer(n)) => integer!(Int16Array, i16, *n),
        (DataType::Int32, KeyValue::Integer(n)) => integer!(Int32Array, i32, *n),
        (DataType::Int64, KeyValue::Integer(n)) => integer!(Int64Array, i64, *n),
        (DataType::UInt8, KeyValue::Integer(n)) => integer!(UInt8Array, u8, *n),
        (DataType::UInt16, KeyValue::Integer(n)) => integer!(UInt16Array, u16, *n),
        (DataType::UInt32, KeyValue::Integer(n)) => integer!(UInt32Array, u32, *n),
        (DataType::UInt64, KeyValue::Integer(n)) => integer!(UInt64Array, u64, *n),
        (DataType::Utf8, KeyValue::Text(s)) => Arc::new(StringArray::from(vec![s.as_str()])),
        (DataType::LargeUtf8, KeyValue::Text(s)) => Arc::new(LargeStringArray::from(vec![s.as_str()])),
        (DataType::Utf8View, KeyValue::Text(s)) => Arc::new(StringViewArray::from(vec![s.as_str()])),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_meet_only_their_own_kind_of_column() {
        let int = key_array(&DataType::Int16, &KeyValue::Integer(7)).expect("fits");
        assert_eq!(int.data_type(), &DataType::Int16);
        assert!(key_array(&DataType::Int16, &KeyValue::Integer(70_000)).is_none(), "out of range");
        assert!(key_array(&DataType::UInt32, &KeyValue::Integer(-1)).is_none(), "negative");
        assert!(key_array(&DataType::Int64, &KeyValue::Text("7".into())).is_none(), "text against a number");
        assert!(key_array(&DataType::Utf8, &KeyValue::Integer(7)).is_none(), "number against text");
        assert!(key_array(&DataType::Float64, &KeyValue::Integer(7)).is_none(), "floats take the general path");
    }

    #[test]
    fn literals_and_parameters_read_as_key_values() {
        let parse = |sql: &str| {
            sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
                .try_with_sql(sql)
                .and_then(|mut p| p.parse_expr())
                .expect("expression")
        };
        assert_eq!(key_value(&parse("-42"), None), Some(KeyValue::Integer(-42)));
        assert_eq!(key_value(&parse("'ab'"), None), Some(KeyValue::Text("ab".into())));
        assert_eq!(key_value(&parse("4.5"), None), None, "a fraction never equals an integer key");
        assert_eq!(key_value(&parse("NULL"), None), None);
        let params = ParamValues::List(vec![ScalarValue::Int32(Some(9)).into(), ScalarValue::Int64(None).into()]);
        assert_eq!(key_value(&parse("$1"), Some(&params)), Some(KeyValue::Integer(9)));
        assert_eq!(key_value(&parse("$2"), Some(&params)), None, "NULL parameter");
        assert_eq!(key_value(&parse("$3"), Some(&params)), None, "missing parameter");
    }
}
