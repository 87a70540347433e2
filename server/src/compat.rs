//! Rewrites of specific catalog queries that clients send verbatim and that use SQL shapes
//! DataFusion cannot plan (`ARRAY(SELECT ...)`, correlated scalar subqueries). Each rewrite
//! keeps the query's meaning for Eddy's catalog: no reloptions, no role memberships, no
//! composite types.
//!
//! Patterns are matched with whitespace collapsed, since clients indent their SQL freely.

use std::ops::ControlFlow;

use sqlparser::ast::{
    ArrayElemTypeDef, DataType, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments,
    GroupByExpr, Ident, ObjectName, SelectItem, SetExpr, Statement, visit_expressions, visit_expressions_mut,
};

/// (pattern, replacement), both with single spaces.
const REWRITES: &[(&str, &str)] = &[
    // psql `\d+ name`: TOAST options of the table (Eddy has none).
    (
        "pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ')",
        "''",
    ),
    // psql `\du`: role memberships (Eddy has no role hierarchy).
    (
        "ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid) as memberof",
        "'{}' as memberof",
    ),
    // psql `\dT`: types of composite relations, written as a correlated scalar subquery.
    (
        "(SELECT c.relkind = 'c' FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid)",
        "EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c')",
    ),
    // JDBC's getPrimaryKeys: `_pg_expandarray` returns (x, n) records, which DataFusion has
    // no type for; the key columns and their positions are unnested side by side instead.
    (
        "(information_schema._pg_expandarray(i.indkey)).n AS KEY_SEQ",
        "unnest(generate_series(1, array_length(i.indkey, 1))) AS KEY_SEQ",
    ),
    ("information_schema._pg_expandarray(i.indkey) AS KEYS", "unnest(i.indkey) AS KEYS_X"),
    ("(result.KEYS).x", "result.KEYS_X"),
];

/// Postgres types to describe for a statement in place of the ones its Arrow types map to:
/// (by parameter position, by result column name).
///
/// asyncpg's type introspection query (asyncpg/introspection.py) is decoded with asyncpg's
/// two core array codecs, `oid[]` and `text[]`. Eddy's catalog has no `oid` type (object ids
/// are `int4`), and an `int4[]` there would send asyncpg to introspect `int4[]` with the same
/// query, forever; so its parameter and its `attrtypoids` column are described as `oid[]`.
pub fn described_type_overrides(sql: &str) -> (Vec<Option<pgwire::api::Type>>, Vec<(&'static str, pgwire::api::Type)>) {
    if sql.contains("typeinfo_tree") && sql.contains("any($1::oid[])") {
        return (vec![Some(pgwire::api::Type::OID_ARRAY)], vec![("attrtypoids", pgwire::api::Type::OID_ARRAY)]);
    }
    (vec![], vec![])
}

fn collapse(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `sql` with the known rewrites applied, or `None` when none applies.
pub fn rewrite(sql: &str) -> Option<String> {
    let mut collapsed: Option<String> = None;
    for (pattern, replacement) in REWRITES {
        let text = collapsed.get_or_insert_with(|| collapse(sql));
        if text.contains(pattern) {
            *text = text.replace(pattern, replacement);
        } else {
            continue;
        }
    }
    collapsed.filter(|c| *c != collapse(sql))
}

const AGGREGATES: &[&str] =
    &["count", "sum", "max", "min", "avg", "array_agg", "string_agg", "bool_and", "bool_or", "every", "json_agg"];

fn has_aggregate(expr: &Expr) -> bool {
    let mut found = false;
    let _ = visit_expressions(expr, |e| {
        if let Expr::Function(f) = e
            && f.name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| AGGREGATES.contains(&i.value.to_lowercase().as_str()))
        {
            found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

/// Wraps the single column of every scalar subquery that is not aggregated in `max(...)`.
///
/// Catalog queries (SQLAlchemy's column reflection, psql) use correlated scalar subqueries
/// that return at most one row; DataFusion only plans correlated scalar subqueries that are
/// aggregated. For at most one row, `max(x)` is `x`, and no row gives NULL as before.
pub fn aggregate_scalar_subqueries(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |e| -> ControlFlow<()> {
        if let Expr::Subquery(query) = e
            && let SetExpr::Select(select) = query.body.as_mut()
            && select.projection.len() == 1
            && matches!(select.group_by, GroupByExpr::Expressions(ref g, _) if g.is_empty())
            && query.limit_clause.is_none()
        {
            let item = &mut select.projection[0];
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(expr) => (expr.clone(), None),
                SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), Some(alias.clone())),
                _ => return ControlFlow::Continue(()),
            };
            if has_aggregate(&expr) {
                return ControlFlow::Continue(());
            }
            let wrapped = Expr::Function(Function {
                name: ObjectName::from(vec![Ident::new("max")]),
                uses_odbc_syntax: false,
                parameters: FunctionArguments::None,
                args: FunctionArguments::List(FunctionArgumentList {
                    duplicate_treatment: None,
                    args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(expr))],
                    clauses: vec![],
                }),
                filter: None,
                null_treatment: None,
                over: None,
                within_group: vec![],
            });
            *item = match alias {
                Some(alias) => SelectItem::ExprWithAlias { expr: wrapped, alias },
                None => SelectItem::UnnamedExpr(wrapped),
            };
        }
        ControlFlow::Continue(())
    });
}

/// `pg_attribute` columns that are constant in Eddy's catalog: no column has a default
/// expression in `pg_attrdef` (`atthasdef` is false), an identity (`attidentity` is empty) or a
/// collation other than the default (`attcollation` is 0).
const CONSTANT_ATTRIBUTE_COLUMNS: &[&str] = &["atthasdef", "attidentity", "attcollation"];

/// Type kinds (`pg_type.typtype`) no column of Eddy's ever has: domains and composite types.
const ABSENT_TYPE_KINDS: &[&str] = &["d", "c"];

/// Replaces `CASE WHEN <guard on those columns> THEN (<subquery>) [ELSE NULL] END` with a
/// typed NULL.
///
/// SQLAlchemy's column reflection guards its correlated subqueries for defaults, identity
/// options and collations this way, and asyncpg's type introspection guards the base type of
/// a domain and the attributes of a composite type by `t.typtype`. DataFusion cannot plan
/// correlated subqueries inside `CASE`, and for the types and columns Eddy has every guard is
/// false, so the expression is NULL anyway.
pub fn drop_unreachable_attribute_branches(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |e| -> ControlFlow<()> {
        if let Expr::Case { operand: None, conditions, else_result, .. } = e
            && conditions.len() == 1
            && matches!(conditions[0].result, Expr::Subquery(_))
            && else_result
                .as_deref()
                .is_none_or(|r| matches!(r, Expr::Value(v) if v.value == sqlparser::ast::Value::Null))
        {
            let guard = conditions[0].condition.to_string().to_lowercase();
            let branch = conditions[0].result.to_string().to_lowercase();
            let null_type = if CONSTANT_ATTRIBUTE_COLUMNS.iter().any(|c| guard.contains(c)) {
                Some(DataType::Text)
            } else if ABSENT_TYPE_KINDS.iter().any(|k| guard.replace(' ', "") == format!("t.typtype='{k}'")) {
                // asyncpg's type introspection: a domain's base type (an oid), a composite
                // type's attribute types (oids) or names.
                Some(if branch.contains("atttypid") {
                    DataType::Array(ArrayElemTypeDef::SquareBracket(Box::new(DataType::Int(None)), None))
                } else if branch.contains("attname") {
                    DataType::Array(ArrayElemTypeDef::SquareBracket(Box::new(DataType::Text), None))
                } else {
                    DataType::Int(None)
                })
            } else {
                None
            };
            if let Some(data_type) = null_type {
                *e = Expr::Cast {
                    kind: sqlparser::ast::CastKind::Cast,
                    expr: Box::new(Expr::Value(sqlparser::ast::Value::Null.into())),
                    data_type,
                    array: false,
                    format: None,
                };
            }
        }
        ControlFlow::Continue(())
    });
}

/// `generate_subscripts(a, 1)` as `unnest(generate_series(1, array_length(a, 1)))`.
///
/// SQLAlchemy's key reflection pairs `unnest(indkey)` with `generate_subscripts(indkey, 1)`
/// to number the key columns; DataFusion has no `generate_subscripts`, but unnests several
/// lists of the same length in one projection side by side, as Postgres does.
pub fn rewrite_generate_subscripts(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |e| -> ControlFlow<()> {
        if let Expr::Function(f) = e
            && f.name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| i.value.eq_ignore_ascii_case("generate_subscripts"))
            && let FunctionArguments::List(list) = &f.args
            && list.args.len() == 2
            && let FunctionArg::Unnamed(FunctionArgExpr::Expr(array)) = &list.args[0]
        {
            let text = format!("unnest(generate_series(1, array_length({array}, 1)))");
            if let Ok(expr) = sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
                .try_with_sql(&text)
                .and_then(|mut p| p.parse_expr())
            {
                *e = expr;
            }
        }
        ControlFlow::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_known_shapes() {
        let du = "SELECT r.rolname,\n  ARRAY(SELECT b.rolname\n        FROM pg_catalog.pg_auth_members m\n        JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid)\n        WHERE m.member = r.oid) as memberof\nFROM pg_catalog.pg_roles r";
        assert_eq!(rewrite(du).as_deref(), Some("SELECT r.rolname, '{}' as memberof FROM pg_catalog.pg_roles r"));
        assert_eq!(rewrite("SELECT 1"), None);
    }

    #[test]
    fn scalar_subqueries_are_aggregated() {
        let dialect = sqlparser::dialect::PostgreSqlDialect {};
        let sql = "SELECT (SELECT a FROM t WHERE t.k = u.k), (SELECT count(*) FROM t) AS n FROM u";
        let mut statements = sqlparser::parser::Parser::parse_sql(&dialect, sql).expect("parses");
        aggregate_scalar_subqueries(&mut statements[0]);
        assert_eq!(
            statements[0].to_string(),
            "SELECT (SELECT max(a) FROM t WHERE t.k = u.k), (SELECT count(*) FROM t) AS n FROM u"
        );
    }
}
