//! Column names as Postgres gives them.
//!
//! DataFusion names an unaliased expression after its text (`count(*)`, `sum(orders.amount)`);
//! Postgres names it after the function (`count`, `sum`), the column, or `?column?`. Clients
//! and users see these names in result headers and in the columns of a view, so Eddy follows
//! Postgres.

use datafusion::common::DFSchema;
use sqlparser::ast::{Expr, Query, SelectItem, SetExpr};

use crate::parser::normalize_ident;

/// The Postgres name of an unaliased select-list expression.
pub fn expr_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(i) => normalize_ident(i),
        Expr::CompoundIdentifier(parts) => parts.last().map(normalize_ident).unwrap_or_default(),
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.to_lowercase())
            .unwrap_or_else(|| "?column?".into()),
        Expr::Cast { expr, data_type, .. } => {
            let inner = expr_name(expr);
            if inner == "?column?" { type_name(&data_type.to_string()) } else { inner }
        }
        Expr::Nested(e) => expr_name(e),
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Array(_) => "array".into(),
        Expr::Extract { .. } => "extract".into(),
        Expr::Substring { .. } => "substring".into(),
        Expr::Trim { .. } => "btrim".into(),
        Expr::Position { .. } => "position".into(),
        Expr::Overlay { .. } => "overlay".into(),
        Expr::Ceil { .. } => "ceil".into(),
        Expr::Floor { .. } => "floor".into(),
        Expr::CompoundFieldAccess { access_chain, root } => match access_chain.last() {
            Some(sqlparser::ast::AccessExpr::Dot(e)) => expr_name(e),
            _ => expr_name(root),
        },
        _ => "?column?".into(),
    }
}

/// Postgres's internal name for a type in a cast of a constant (`1::int` is `int4`).
fn type_name(sql_type: &str) -> String {
    match sql_type.to_lowercase().as_str() {
        "int" | "integer" => "int4".into(),
        "bigint" => "int8".into(),
        "smallint" => "int2".into(),
        "real" => "float4".into(),
        "double precision" | "double" => "float8".into(),
        "boolean" => "bool".into(),
        other => other.split('(').next().unwrap_or(other).trim().to_string(),
    }
}

/// Output column names of `query` in Postgres style, falling back to DataFusion's names
/// where the select list cannot be matched to the plan (several wildcards).
pub fn output_names(query: &Query, schema: &DFSchema) -> Vec<String> {
    let fallback: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut body = query.body.as_ref();
    while let SetExpr::SetOperation { left, .. } = body {
        body = left.as_ref();
    }
    let select = match body {
        SetExpr::Select(s) => s,
        SetExpr::Query(q) => return output_names(q, schema),
        _ => return fallback,
    };
    let wildcards = select
        .projection
        .iter()
        .filter(|i| matches!(i, SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)))
        .count();
    let explicit = select.projection.len() - wildcards;
    if wildcards > 1 || explicit > fallback.len() {
        return fallback;
    }
    let expanded = fallback.len() - explicit;
    if wildcards == 0 && expanded != 0 {
        return fallback;
    }
    let mut out = Vec::with_capacity(fallback.len());
    let mut pos = 0;
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(e) => {
                out.push(expr_name(e));
                pos += 1;
            }
            SelectItem::ExprWithAlias { alias, .. } => {
                out.push(normalize_ident(alias));
                pos += 1;
            }
            SelectItem::ExprWithAliases { aliases, .. } => {
                for a in aliases {
                    out.push(normalize_ident(a));
                    pos += 1;
                }
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                out.extend(fallback[pos..pos + expanded].iter().cloned());
                pos += expanded;
            }
        }
    }
    if out.len() == fallback.len() { out } else { fallback }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn names(sql: &str) -> Vec<String> {
        let stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap_or_else(|e| panic!("{e}"));
        let sqlparser::ast::Statement::Query(q) = &stmt[0] else { panic!("not a query") };
        let select = match q.body.as_ref() {
            SetExpr::Select(s) => s,
            _ => panic!("not a select"),
        };
        select
            .projection
            .iter()
            .map(|i| match i {
                SelectItem::UnnamedExpr(e) => expr_name(e),
                SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
                _ => "*".into(),
            })
            .collect()
    }

    #[test]
    fn postgres_style_names() {
        assert_eq!(
            names("SELECT customer, count(*), sum(o.amount), 1, x::text, 1::int, max(a) AS m FROM o"),
            vec!["customer", "count", "sum", "?column?", "x", "int4", "m"]
        );
    }
}
