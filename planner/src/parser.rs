//! Eddy's SQL dialect: Postgres as parsed by `sqlparser`, plus RisingWave's streaming statements.
//!
//! The parser peeks at the first tokens of each statement. Streaming DDL (`CREATE SOURCE`,
//! `CREATE TABLE` with watermarks or connectors, `CREATE MATERIALIZED VIEW ... EMIT ON WINDOW
//! CLOSE`, `CREATE SINK`, `SHOW`, `DESCRIBE`, `FLUSH`, `DROP`) is parsed here with
//! `sqlparser`'s building blocks; everything else goes to `sqlparser`'s Postgres dialect
//! unchanged. Each statement keeps its own text, which is what the catalog persists.

use sqlparser::ast::{ColumnOption, DataType, Expr, Ident, ObjectName, Query, Statement, TableConstraint, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, Tokenizer};

use crate::error::PlanError;

/// One parsed statement and the text it was parsed from.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    pub statement: EddyStatement,
    pub text: String,
}

/// The statements Eddy understands.
#[derive(Debug, Clone)]
pub enum EddyStatement {
    CreateTable(CreateRelation),
    CreateSource(CreateRelation),
    CreateMaterializedView(CreateMaterializedView),
    CreateView(CreateView),
    CreateSink(CreateSink),
    Drop(DropStatement),
    Show(ShowStatement),
    Describe(ObjectName),
    Explain {
        analyze: bool,
        statement: Box<EddyStatement>,
    },
    Flush,
    /// Plain Postgres SQL: queries, DML, SET, transactions.
    Sql(Box<Statement>),
}

/// `CREATE TABLE` and `CREATE SOURCE` share their shape.
#[derive(Debug, Clone)]
pub struct CreateRelation {
    pub name: ObjectName,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnSpec>,
    pub primary_key: Vec<Ident>,
    pub watermark: Option<WatermarkSpec>,
    pub append_only: bool,
    pub with_options: Vec<(String, String)>,
    pub format: Option<FormatSpec>,
    /// `CREATE TABLE t (...) FROM source TABLE 'schema.table'`: a table of a shared CDC source.
    pub from_source: Option<(ObjectName, String)>,
}

#[derive(Debug, Clone)]
pub struct ColumnSpec {
    pub name: Ident,
    pub data_type: DataType,
    pub not_null: bool,
    pub default: Option<Expr>,
    /// `col TYPE AS expr`: computed from the other columns, not stored by the user.
    pub generated: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct WatermarkSpec {
    pub column: Ident,
    pub expr: Expr,
}

#[derive(Debug, Clone)]
pub struct FormatSpec {
    pub format: String,
    pub encode: String,
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct CreateMaterializedView {
    pub name: ObjectName,
    pub if_not_exists: bool,
    pub columns: Vec<Ident>,
    pub query: Box<Query>,
    pub emit_on_window_close: bool,
}

#[derive(Debug, Clone)]
pub struct CreateView {
    pub name: ObjectName,
    pub if_not_exists: bool,
    pub or_replace: bool,
    pub columns: Vec<Ident>,
    pub query: Box<Query>,
}

#[derive(Debug, Clone)]
pub struct CreateSink {
    pub name: ObjectName,
    pub if_not_exists: bool,
    pub from: SinkInput,
    pub emit_on_window_close: bool,
    pub with_options: Vec<(String, String)>,
    pub format: Option<FormatSpec>,
}

#[derive(Debug, Clone)]
pub enum SinkInput {
    Relation(ObjectName),
    Query(Box<Query>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Table,
    Source,
    MaterializedView,
    View,
    Sink,
}

impl ObjectKind {
    pub fn sql_name(self) -> &'static str {
        match self {
            ObjectKind::Table => "table",
            ObjectKind::Source => "source",
            ObjectKind::MaterializedView => "materialized view",
            ObjectKind::View => "view",
            ObjectKind::Sink => "sink",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DropStatement {
    pub kind: ObjectKind,
    pub names: Vec<ObjectName>,
    pub if_exists: bool,
    pub cascade: bool,
}

#[derive(Debug, Clone)]
pub enum ShowStatement {
    Objects(ObjectKind),
    Columns(ObjectName),
    /// `SHOW name`: a session or server setting.
    Variable(String),
}

/// Parses a string that may hold several statements separated by `;`.
///
/// # Errors
/// [`PlanError::Parse`] with the character position of the offending token.
pub fn parse_sql(sql: &str) -> Result<Vec<ParsedStatement>, PlanError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize_with_location()
        .map_err(|e| parse_error(sql, &ParserError::TokenizerError(e.to_string())))?;
    let (tokens, emit_markers) = extract_emit_clauses(tokens);
    let tokens = rewrite_flink_window_calls(tokens);
    let tokens = rewrite_temporal_joins(tokens);
    let tokens = quote_top_columns(tokens);
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let line_starts = line_starts(sql);
    let mut out = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token().token == Token::EOF {
            break;
        }
        let start = parser.peek_token().span.start;
        let mut statement = parse_statement(&mut parser).map_err(|e| parse_error(sql, &e))?;
        let end = parser.peek_token().span.start;
        let target = match &mut statement {
            EddyStatement::Explain { statement: inner, .. } => inner.as_mut(),
            other => other,
        };
        if emit_markers.iter().any(|m| location_between(*m, start, end)) {
            match target {
                EddyStatement::CreateMaterializedView(mv) => mv.emit_on_window_close = true,
                EddyStatement::CreateSink(sink) => sink.emit_on_window_close = true,
                _ => {}
            }
        }
        let text = slice_between(sql, &line_starts, start, end).trim().trim_end_matches(';').trim();
        out.push(ParsedStatement { statement, text: text.to_string() });
        let next = parser.peek_token();
        match next.token {
            Token::EOF | Token::SemiColon => {}
            _ => {
                return Err(parse_error(
                    sql,
                    &ParserError::ParserError(format!(
                        "Expected: end of statement, found: {}{}",
                        next.token, next.span.start
                    )),
                ));
            }
        }
    }
    Ok(out)
}

/// Parses exactly one statement.
///
/// # Errors
/// A parse error, or an error when the text holds no statement or more than one.
pub fn parse_one(sql: &str) -> Result<ParsedStatement, PlanError> {
    let mut statements = parse_sql(sql)?;
    match statements.len() {
        1 => Ok(statements.remove(0)),
        0 => Err(PlanError::Parse { message: "empty statement".into(), position: None }),
        _ => Err(PlanError::Parse { message: "expected a single statement".into(), position: None }),
    }
}

/// Removes `EMIT ON WINDOW CLOSE` / `EMIT FINAL` clauses from the token stream, returning
/// where each one stood. Left in, `sqlparser` would read `EMIT` as an alias of the last select
/// item or table; the statement that spans a marker gets the clause back.
fn extract_emit_clauses(
    tokens: Vec<sqlparser::tokenizer::TokenWithSpan>,
) -> (Vec<sqlparser::tokenizer::TokenWithSpan>, Vec<Location>) {
    let is_word = is_plain_word;
    let significant = significant_tokens(&tokens);
    let mut remove = vec![false; tokens.len()];
    let mut markers = Vec::new();
    let mut k = 0;
    while k < significant.len() {
        let at = |j: usize| significant.get(k + j).map(|i| &tokens[*i].token);
        if at(0).is_some_and(|t| is_word(t, "emit")) {
            let len = if at(1).is_some_and(|t| is_word(t, "final")) {
                2
            } else if at(1).is_some_and(|t| is_word(t, "on"))
                && at(2).is_some_and(|t| is_word(t, "window"))
                && at(3).is_some_and(|t| is_word(t, "close"))
            {
                4
            } else {
                0
            };
            if len > 0 {
                markers.push(tokens[significant[k]].span.start);
                for j in 0..len {
                    remove[significant[k + j]] = true;
                }
                k += len;
                continue;
            }
        }
        k += 1;
    }
    let kept = tokens.into_iter().zip(remove).filter(|(_, r)| !r).map(|(t, _)| t).collect();
    (kept, markers)
}

/// Rewrites Flink's `TABLE(TUMBLE(TABLE t [PARTITION BY k], DESCRIPTOR(ts), args...))` into
/// the RisingWave form `TUMBLE(t, ts, args...)`, which is what Eddy plans. Session windows
/// are keyed by the `GROUP BY` columns, so `PARTITION BY` adds nothing and is dropped.
fn rewrite_flink_window_calls(
    tokens: Vec<sqlparser::tokenizer::TokenWithSpan>,
) -> Vec<sqlparser::tokenizer::TokenWithSpan> {
    use sqlparser::tokenizer::TokenWithSpan;
    let is_word = is_plain_word;
    let significant = significant_tokens(&tokens);
    let tok = |k: usize| significant.get(k).map(|i| &tokens[*i].token);
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut skip_until = 0usize;
    let mut k = 0usize;
    // Positions in `significant` that open a rewritten call and the one closing paren to drop.
    let mut drop_paren: Vec<usize> = Vec::new();
    let mut keep = vec![true; tokens.len()];
    while k < significant.len() {
        if k < skip_until {
            k += 1;
            continue;
        }
        let matches_head = tok(k).is_some_and(|t| is_word(t, "table"))
            && tok(k + 1) == Some(&Token::LParen)
            && tok(k + 2).is_some_and(|t| ["tumble", "hop", "session", "cumulate"].iter().any(|w| is_word(t, w)))
            && tok(k + 3) == Some(&Token::LParen)
            && tok(k + 4).is_some_and(|t| is_word(t, "table"));
        if !matches_head {
            k += 1;
            continue;
        }
        // Drop `TABLE (` before the function and `TABLE` before the relation.
        keep[significant[k]] = false;
        keep[significant[k + 1]] = false;
        keep[significant[k + 4]] = false;
        // Find the matching closing paren of the outer `TABLE(`.
        let mut depth = 0i32;
        let mut j = k + 1;
        while let Some(t) = tok(j) {
            match t {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        drop_paren.push(j);
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        // Inside: drop `PARTITION BY col[, col]` and unwrap `DESCRIPTOR(col)`.
        let mut m = k + 5;
        while m < j {
            if tok(m).is_some_and(|t| is_word(t, "partition")) && tok(m + 1).is_some_and(|t| is_word(t, "by")) {
                let mut n = m;
                while n < j && tok(n) != Some(&Token::Comma) {
                    keep[significant[n]] = false;
                    n += 1;
                }
                // `rel PARTITION BY k, k2, DESCRIPTOR(...)`: the keys end at DESCRIPTOR.
                while n + 1 < j && !tok(n + 1).is_some_and(|t| is_word(t, "descriptor")) {
                    keep[significant[n]] = false;
                    n += 1;
                    while n < j && tok(n) != Some(&Token::Comma) {
                        keep[significant[n]] = false;
                        n += 1;
                    }
                }
                m = n;
                continue;
            }
            if tok(m).is_some_and(|t| is_word(t, "descriptor")) && tok(m + 1) == Some(&Token::LParen) {
                keep[significant[m]] = false;
                keep[significant[m + 1]] = false;
                let mut n = m + 2;
                while n < j && tok(n) != Some(&Token::RParen) {
                    n += 1;
                }
                if n < j {
                    keep[significant[n]] = false;
                }
                m = n + 1;
                continue;
            }
            m += 1;
        }
        skip_until = j + 1;
        k = j + 1;
    }
    for p in drop_paren {
        keep[significant[p]] = false;
    }
    for (t, keep) in tokens.into_iter().zip(keep) {
        if keep {
            out.push(t);
        }
    }
    out
}

/// Prefix marking a table read as of processing time: `t FOR SYSTEM_TIME AS OF PROCTIME()`
/// is planned as a scan of `__eddy_lookup__t AS t`, which the catalog resolves to `t` and the
/// streaming planner turns into the lookup side of a temporal join.
pub const LOOKUP_PREFIX: &str = "__eddy_lookup__";

/// Prefix marking a versioned table read as of an event time: `t FOR SYSTEM_TIME AS OF s.ts`
/// becomes a scan of `__eddy_asof__t<US>s.ts AS t` (`<US>`: [`AS_OF_SEPARATOR`]).
pub const AS_OF_PREFIX: &str = "__eddy_asof__";

/// Separates the table from the time column in an [`AS_OF_PREFIX`] name; no identifier
/// written without quotes contains it.
pub const AS_OF_SEPARATOR: char = '\u{1f}';

/// How a table reference is read in a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An ordinary read of every change.
    None,
    /// `FOR SYSTEM_TIME AS OF PROCTIME()`: the current row for each key.
    ProcessTime,
    /// `FOR SYSTEM_TIME AS OF <column>`: the version valid at the other side's event time;
    /// the column's name parts (`["s", "ts"]`).
    EventTime(Vec<String>),
}

/// The marker conjunct an event-time temporal join's `ON` gets: `__eddy_as_of(s.ts, t.k)`.
/// It keeps the stream's time column alive through DataFusion's column pruning (the `AS OF`
/// clause itself is gone by then) and, naming a column of each side, stays in the join's
/// condition, where the streaming planner finds it and takes it out again.
pub const AS_OF_FUNCTION: &str = "__eddy_as_of";

/// Adds the [`AS_OF_FUNCTION`] conjunct to the `ON` of every join with a table marked
/// [`AS_OF_PREFIX`] in `query` and its subqueries. `version_column` names a relation's
/// watermarked column, which says when each of its versions starts.
///
/// # Errors
/// When the looked-up relation has no watermark or the join has no `ON` condition.
pub fn rewrite_as_of_conditions(
    query: &mut Query,
    version_column: &dyn Fn(&str) -> Option<String>,
) -> Result<(), PlanError> {
    struct AsOf<'a> {
        version_column: &'a dyn Fn(&str) -> Option<String>,
        error: Option<PlanError>,
    }
    impl sqlparser::ast::VisitorMut for AsOf<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut Query) -> std::ops::ControlFlow<()> {
            if let Err(e) = as_of_in_set_expr(&mut query.body, self.version_column) {
                self.error = Some(e);
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut visitor = AsOf { version_column, error: None };
    let _ = sqlparser::ast::VisitMut::visit(query, &mut visitor);
    visitor.error.map_or(Ok(()), Err)
}

fn as_of_in_set_expr(
    body: &mut sqlparser::ast::SetExpr,
    version_column: &dyn Fn(&str) -> Option<String>,
) -> Result<(), PlanError> {
    use sqlparser::ast::SetExpr;
    match body {
        SetExpr::Select(select) => {
            for from in &mut select.from {
                as_of_in_joins(from, version_column)?;
            }
            Ok(())
        }
        SetExpr::SetOperation { left, right, .. } => {
            as_of_in_set_expr(left, version_column)?;
            as_of_in_set_expr(right, version_column)
        }
        _ => Ok(()),
    }
}

fn as_of_in_joins(
    from: &mut sqlparser::ast::TableWithJoins,
    version_column: &dyn Fn(&str) -> Option<String>,
) -> Result<(), PlanError> {
    use sqlparser::ast::{JoinConstraint, JoinOperator, TableFactor};
    if let TableFactor::NestedJoin { table_with_joins, .. } = &mut from.relation {
        as_of_in_joins(table_with_joins, version_column)?;
    }
    for join in &mut from.joins {
        if let TableFactor::NestedJoin { table_with_joins, .. } = &mut join.relation {
            as_of_in_joins(table_with_joins, version_column)?;
        }
        let TableFactor::Table { name, alias, .. } = &join.relation else { continue };
        let Some(last) = name.0.last().and_then(|p| p.as_ident()) else { continue };
        let (base, Lookup::EventTime(time)) = split_lookup(&last.value) else { continue };
        let qualifier = alias.as_ref().map_or(base.to_string(), |a| a.name.value.clone());
        let constraint = match &mut join.join_operator {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c) => c,
            _ => continue,
        };
        let JoinConstraint::On(on) = constraint else {
            return Err(PlanError::unsupported_with_hint(
                "FOR SYSTEM_TIME AS OF a column without an ON condition",
                "join with ON stream.k = t.k",
            ));
        };
        let Some(column) = version_column(base) else {
            return Err(PlanError::unsupported_with_hint(
                format!("an event-time temporal join against {base}, which has no watermark"),
                "the looked-up table must be versioned: give it a PRIMARY KEY and a WATERMARK FOR \
                 the column that says when each version starts",
            ));
        };
        let quoted = |name: &str| Ident::with_quote('"', name).to_string();
        let marker_sql = format!("{AS_OF_FUNCTION}({}, {}.{})", time.join("."), quoted(&qualifier), quoted(&column));
        let marker = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&marker_sql)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| PlanError::Internal(format!("temporal join marker {marker_sql}: {e}")))?;
        let condition = std::mem::replace(on, Expr::Value(Value::Null.into()));
        *on = Expr::BinaryOp {
            left: Box::new(marker),
            op: sqlparser::ast::BinaryOperator::And,
            right: Box::new(Expr::Nested(Box::new(condition))),
        };
    }
    Ok(())
}

/// Splits a relation name the temporal-join rewrite marked into the relation's own name and
/// how it is read.
pub fn split_lookup(name: &str) -> (&str, Lookup) {
    if let Some(base) = name.strip_prefix(LOOKUP_PREFIX) {
        return (base, Lookup::ProcessTime);
    }
    if let Some(rest) = name.strip_prefix(AS_OF_PREFIX)
        && let Some((base, time)) = rest.split_once(AS_OF_SEPARATOR)
    {
        return (base, Lookup::EventTime(time.split('.').map(str::to_string).collect()));
    }
    (name, Lookup::None)
}

/// Rewrites `name FOR SYSTEM_TIME AS OF PROCTIME() [[AS] alias]` into `__eddy_lookup__name AS
/// alias` (the alias defaulting to the name), and `name FOR SYSTEM_TIME AS OF s.ts` likewise
/// into an [`AS_OF_PREFIX`] name. `sqlparser` reads `FOR SYSTEM_TIME` only in other dialects,
/// and DataFusion would drop it; the marked name carries the meaning to the planner.
fn rewrite_temporal_joins(
    tokens: Vec<sqlparser::tokenizer::TokenWithSpan>,
) -> Vec<sqlparser::tokenizer::TokenWithSpan> {
    use sqlparser::tokenizer::{TokenWithSpan, Whitespace, Word};
    let is_word = is_plain_word;
    let significant = significant_tokens(&tokens);
    let tok = |k: usize| significant.get(k).map(|i| &tokens[*i].token);
    let mut keep = vec![true; tokens.len()];
    // (position of the name, where to insert an alias, the event-time column if any)
    let mut renamed: Vec<(usize, Option<usize>, Option<String>)> = Vec::new();
    for k in 1..significant.len() {
        let head = tok(k).is_some_and(|t| is_word(t, "for"))
            && tok(k + 1).is_some_and(|t| is_word(t, "system_time"))
            && tok(k + 2).is_some_and(|t| is_word(t, "as"))
            && tok(k + 3).is_some_and(|t| is_word(t, "of"));
        if !head || !matches!(tok(k - 1), Some(Token::Word(_))) {
            continue;
        }
        let (len, time) = if tok(k + 4).is_some_and(|t| is_word(t, "proctime"))
            && tok(k + 5) == Some(&Token::LParen)
            && tok(k + 6) == Some(&Token::RParen)
        {
            (7, None)
        } else {
            // A column reference: name(.name)*
            let mut parts = Vec::new();
            let mut j = k + 4;
            while let Some(Token::Word(w)) = tok(j) {
                parts.push(w.value.clone());
                if tok(j + 1) == Some(&Token::Period) && matches!(tok(j + 2), Some(Token::Word(_))) {
                    j += 2;
                } else {
                    break;
                }
            }
            if parts.is_empty() {
                continue;
            }
            (j + 1 - k, Some(parts.join(".")))
        };
        for j in k..k + len {
            keep[significant[j]] = false;
        }
        let has_alias = match tok(k + len) {
            Some(Token::Word(w)) => {
                w.keyword == Keyword::AS || w.keyword == Keyword::NoKeyword || w.quote_style.is_some()
            }
            _ => false,
        };
        // Insert the alias after the last removed token.
        renamed.push((significant[k - 1], if has_alias { None } else { Some(significant[k + len - 1]) }, time));
    }
    if renamed.is_empty() {
        return tokens;
    }
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len() + 4 * renamed.len());
    let mut alias_after: Vec<(usize, Word)> = Vec::new();
    for (i, (t, keep)) in tokens.into_iter().zip(keep).enumerate() {
        let span = t.span;
        if let Some((_, alias_at, time)) = renamed.iter().find(|(name_at, _, _)| *name_at == i)
            && let Token::Word(w) = &t.token
        {
            if let Some(at) = alias_at {
                alias_after.push((*at, w.clone()));
            }
            let mut marked = w.clone();
            marked.value = match time {
                None => format!("{LOOKUP_PREFIX}{}", w.value),
                Some(time) => format!("{AS_OF_PREFIX}{}{AS_OF_SEPARATOR}{time}", w.value),
            };
            marked.keyword = Keyword::NoKeyword;
            out.push(TokenWithSpan { token: Token::Word(marked), span });
            continue;
        }
        if keep {
            out.push(t);
        }
        if let Some((_, name)) = alias_after.iter().find(|(at, _)| *at == i) {
            let space = || TokenWithSpan { token: Token::Whitespace(Whitespace::Space), span };
            out.push(space());
            out.push(TokenWithSpan { token: Token::make_keyword("AS"), span });
            out.push(space());
            let mut alias = name.clone();
            alias.keyword = Keyword::NoKeyword;
            out.push(TokenWithSpan { token: Token::Word(alias), span });
            out.push(space());
        }
    }
    out
}

/// True for an unquoted word equal to `w`, ignoring case.
/// `SELECT top FROM t`: sqlparser reads `TOP` after `SELECT` (or `DISTINCT`/`ALL`) as the
/// T-SQL clause in every dialect, but in Postgres `top` is an ordinary name there. Unless a
/// number or `(` follows (the clause's shapes), the word becomes the identifier `top`.
fn quote_top_columns(mut tokens: Vec<sqlparser::tokenizer::TokenWithSpan>) -> Vec<sqlparser::tokenizer::TokenWithSpan> {
    let significant = significant_tokens(&tokens);
    for k in 1..significant.len() {
        let i = significant[k];
        if !is_plain_word(&tokens[i].token, "top") {
            continue;
        }
        let before = &tokens[significant[k - 1]].token;
        let after = significant.get(k + 1).map(|j| &tokens[*j].token);
        let clause_position = ["select", "distinct", "all"].iter().any(|w| is_plain_word(before, w));
        let clause_shape = matches!(after, Some(Token::Number(..) | Token::LParen | Token::Placeholder(_)));
        if clause_position && !clause_shape {
            tokens[i].token = Token::Word(sqlparser::tokenizer::Word {
                value: "top".into(),
                quote_style: Some('"'),
                keyword: Keyword::NoKeyword,
            });
        }
    }
    tokens
}

fn is_plain_word(t: &Token, w: &str) -> bool {
    matches!(t, Token::Word(word) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w))
}

/// Positions of the tokens that are not whitespace.
fn significant_tokens(tokens: &[sqlparser::tokenizer::TokenWithSpan]) -> Vec<usize> {
    tokens.iter().enumerate().filter(|(_, t)| !matches!(t.token, Token::Whitespace(_))).map(|(i, _)| i).collect()
}

fn location_between(loc: Location, start: Location, end: Location) -> bool {
    let key = |l: Location| {
        if l.line == 0 { (u64::MAX, u64::MAX) } else { (l.line, l.column) }
    };
    key(loc) >= key(start) && key(loc) < key(end)
}

fn line_starts(sql: &str) -> Vec<usize> {
    let mut starts = vec![0];
    for (i, c) in sql.char_indices() {
        if c == '\n' {
            starts.push(i + 1);
        }
    }
    starts
}

/// Byte offset of a 1-based (line, column-in-chars) location.
fn byte_offset(sql: &str, line_starts: &[usize], loc: Location) -> usize {
    if loc.line == 0 {
        return sql.len();
    }
    let Some(&line_start) = line_starts.get(loc.line as usize - 1) else {
        return sql.len();
    };
    let line = &sql[line_start..];
    line.char_indices().nth(loc.column.saturating_sub(1) as usize).map(|(i, _)| line_start + i).unwrap_or(sql.len())
}

fn slice_between<'a>(sql: &'a str, line_starts: &[usize], start: Location, end: Location) -> &'a str {
    let a = byte_offset(sql, line_starts, start);
    let b = byte_offset(sql, line_starts, end).max(a);
    &sql[a..b]
}

/// Turns a sqlparser error into a [`PlanError::Parse`] with a 1-based character position.
fn parse_error(sql: &str, e: &ParserError) -> PlanError {
    let raw = match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => "statement nested too deeply".to_string(),
    };
    let (message, position) = match raw.rfind(" at Line: ") {
        Some(idx) => {
            let loc = &raw[idx + " at Line: ".len()..];
            let mut parts = loc.split(", Column: ");
            let line = parts.next().and_then(|l| l.trim().parse::<u64>().ok());
            let column = parts.next().and_then(|c| c.trim().parse::<u64>().ok());
            let position = match (line, column) {
                (Some(line), Some(column)) => {
                    let starts = line_starts(sql);
                    let offset = byte_offset(sql, &starts, Location { line, column });
                    Some(sql[..offset].chars().count() + 1)
                }
                _ => None,
            };
            (raw[..idx].to_string(), position)
        }
        None if raw.contains("found: EOF") => (raw, Some(sql.chars().count() + 1)),
        None => (raw, None),
    };
    let message = if message.starts_with("Expected") { format!("syntax error: {message}") } else { message };
    PlanError::Parse { message, position }
}

fn parse_statement(p: &mut Parser<'_>) -> Result<EddyStatement, ParserError> {
    if p.peek_keyword(Keyword::CREATE) {
        let checkpoint = p.index();
        p.next_token();
        let or_replace = p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
        if p.parse_keyword(Keyword::TABLE) {
            return Ok(EddyStatement::CreateTable(parse_create_relation(p, true)?));
        }
        if p.parse_keyword(Keyword::SOURCE) {
            return Ok(EddyStatement::CreateSource(parse_create_relation(p, false)?));
        }
        if p.parse_keywords(&[Keyword::MATERIALIZED, Keyword::VIEW]) {
            return parse_create_mv(p);
        }
        if p.parse_keyword(Keyword::VIEW) {
            return parse_create_view(p, or_replace);
        }
        if parse_word(p, "sink") {
            return parse_create_sink(p);
        }
        rewind(p, checkpoint);
    }
    if p.peek_keyword(Keyword::DROP) {
        let checkpoint = p.index();
        p.next_token();
        let kind = if p.parse_keyword(Keyword::TABLE) {
            Some(ObjectKind::Table)
        } else if p.parse_keyword(Keyword::SOURCE) {
            Some(ObjectKind::Source)
        } else if p.parse_keywords(&[Keyword::MATERIALIZED, Keyword::VIEW]) {
            Some(ObjectKind::MaterializedView)
        } else if p.parse_keyword(Keyword::VIEW) {
            Some(ObjectKind::View)
        } else if parse_word(p, "sink") {
            Some(ObjectKind::Sink)
        } else {
            None
        };
        if let Some(kind) = kind {
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let names = p.parse_comma_separated(|p| p.parse_object_name(false))?;
            let cascade = p.parse_keyword(Keyword::CASCADE);
            if !cascade {
                let _ = p.parse_keyword(Keyword::RESTRICT);
            }
            return Ok(EddyStatement::Drop(DropStatement { kind, names, if_exists, cascade }));
        }
        rewind(p, checkpoint);
    }
    if p.peek_keyword(Keyword::SHOW) {
        let checkpoint = p.index();
        p.next_token();
        let kind = if p.parse_keyword(Keyword::TABLES) {
            Some(ObjectKind::Table)
        } else if parse_word(p, "sources") {
            Some(ObjectKind::Source)
        } else if p.parse_keywords(&[Keyword::MATERIALIZED, Keyword::VIEWS]) {
            Some(ObjectKind::MaterializedView)
        } else if p.parse_keyword(Keyword::VIEWS) {
            Some(ObjectKind::View)
        } else if parse_word(p, "sinks") {
            Some(ObjectKind::Sink)
        } else {
            None
        };
        if let Some(kind) = kind {
            return Ok(EddyStatement::Show(ShowStatement::Objects(kind)));
        }
        if p.parse_keyword(Keyword::COLUMNS) {
            if !p.parse_keyword(Keyword::FROM) {
                p.expect_keyword(Keyword::IN)?;
            }
            let name = p.parse_object_name(false)?;
            return Ok(EddyStatement::Show(ShowStatement::Columns(name)));
        }
        // `SHOW name` / `SHOW TRANSACTION ISOLATION LEVEL` / `SHOW ALL`: the words up to the end.
        let mut words = Vec::new();
        loop {
            let t = p.peek_token();
            match t.token {
                Token::EOF | Token::SemiColon => break,
                Token::Word(w) => {
                    p.next_token();
                    words.push(w.value.to_lowercase());
                }
                Token::Period => {
                    p.next_token();
                    words.push(".".into());
                }
                _ => {
                    rewind(p, checkpoint);
                    return Ok(EddyStatement::Sql(Box::new(p.parse_statement()?)));
                }
            }
        }
        if words.is_empty() {
            return p.expected("a setting name", p.peek_token());
        }
        let name = words.join(" ").replace(" . ", ".");
        return Ok(EddyStatement::Show(ShowStatement::Variable(name)));
    }
    if p.parse_keyword(Keyword::DESCRIBE) {
        let name = p.parse_object_name(false)?;
        return Ok(EddyStatement::Describe(name));
    }
    if let Token::Word(w) = &p.peek_token().token
        && w.value.eq_ignore_ascii_case("flush")
    {
        p.next_token();
        return Ok(EddyStatement::Flush);
    }
    if p.peek_keyword(Keyword::EXPLAIN) {
        let checkpoint = p.index();
        p.next_token();
        let analyze = p.parse_keyword(Keyword::ANALYZE);
        let _ = p.parse_keyword(Keyword::VERBOSE);
        if p.peek_keyword(Keyword::CREATE) || p.peek_keyword(Keyword::SELECT) || p.peek_keyword(Keyword::WITH) {
            let inner = parse_statement(p)?;
            return Ok(EddyStatement::Explain { analyze, statement: Box::new(inner) });
        }
        rewind(p, checkpoint);
    }
    Ok(EddyStatement::Sql(Box::new(p.parse_statement()?)))
}

/// Consumes the next token when it is the given word; for the dialect's words that
/// `sqlparser` has no keyword for (`SINK`, `ENCODE`, ...).
fn parse_word(p: &mut Parser<'_>, word: &str) -> bool {
    if let Token::Word(w) = &p.peek_token().token
        && w.quote_style.is_none()
        && w.value.eq_ignore_ascii_case(word)
    {
        p.next_token();
        return true;
    }
    false
}

fn rewind(p: &mut Parser<'_>, index: usize) {
    while p.index() > index {
        p.prev_token();
    }
}

fn parse_create_relation(p: &mut Parser<'_>, is_table: bool) -> Result<CreateRelation, ParserError> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.parse_object_name(false)?;
    let mut columns = Vec::new();
    let mut primary_key = Vec::new();
    let mut watermark = None;
    if p.consume_token(&Token::LParen) && !p.consume_token(&Token::RParen) {
        {
            loop {
                if let Token::Word(w) = &p.peek_token().token
                    && w.value.eq_ignore_ascii_case("watermark")
                    && matches!(p.peek_tokens::<2>()[1], Token::Word(ref f) if f.keyword == Keyword::FOR)
                {
                    p.next_token();
                    p.expect_keyword(Keyword::FOR)?;
                    let column = p.parse_identifier()?;
                    p.expect_keyword(Keyword::AS)?;
                    let expr = p.parse_expr()?;
                    if watermark.is_some() {
                        return p.expected("one WATERMARK clause", p.peek_token());
                    }
                    watermark = Some(WatermarkSpec { column, expr });
                } else if let Some(constraint) = p.parse_optional_table_constraint()? {
                    match constraint {
                        TableConstraint::PrimaryKey(pk) => {
                            if !primary_key.is_empty() {
                                return Err(ParserError::ParserError("multiple primary keys are not allowed".into()));
                            }
                            for col in pk.columns {
                                match col.column.expr {
                                    Expr::Identifier(ident) => primary_key.push(ident),
                                    other => {
                                        return Err(ParserError::ParserError(format!(
                                            "primary key must list columns, found {other}"
                                        )));
                                    }
                                }
                            }
                        }
                        other => {
                            return Err(ParserError::ParserError(format!("table constraint not supported: {other}")));
                        }
                    }
                } else {
                    let (column, is_pk) = parse_column(p)?;
                    if is_pk {
                        if !primary_key.is_empty() {
                            return Err(ParserError::ParserError("multiple primary keys are not allowed".into()));
                        }
                        primary_key.push(column.name.clone());
                    }
                    columns.push(column);
                }
                if p.consume_token(&Token::Comma) {
                    continue;
                }
                p.expect_token(&Token::RParen)?;
                break;
            }
        }
    }
    let mut from_source = None;
    if is_table && p.parse_keyword(Keyword::FROM) {
        let source = p.parse_object_name(false)?;
        p.expect_keyword(Keyword::TABLE)?;
        from_source = Some((source, p.parse_literal_string()?));
    }
    let mut append_only = false;
    if let Token::Word(w) = &p.peek_token().token
        && w.value.eq_ignore_ascii_case("append")
    {
        p.next_token();
        p.expect_keyword(Keyword::ONLY)?;
        append_only = true;
    }
    let includes = parse_includes(p, &mut columns)?;
    let mut with_options = if p.parse_keyword(Keyword::WITH) { parse_with_options(p)? } else { Vec::new() };
    with_options.extend(includes);
    let format = parse_format(p)?;
    Ok(CreateRelation {
        name,
        if_not_exists,
        columns,
        primary_key,
        watermark,
        append_only,
        with_options,
        format,
        from_source,
    })
}

/// RisingWave's `INCLUDE key | partition | offset | timestamp [AS name] [type]` clauses: each
/// adds a column holding that piece of a Kafka record's metadata and tells the connector
/// with an `include.<what> = '<column>'` option.
fn parse_includes(p: &mut Parser<'_>, columns: &mut Vec<ColumnSpec>) -> Result<Vec<(String, String)>, ParserError> {
    let mut options = Vec::new();
    while parse_word(p, "include") {
        let what = p.parse_identifier()?.value.to_lowercase();
        let default_type = match what.as_str() {
            "key" => DataType::Bytea,
            "partition" => DataType::Int(None),
            "offset" => DataType::BigInt(None),
            "timestamp" => DataType::Timestamp(None, sqlparser::ast::TimezoneInfo::WithTimeZone),
            other => {
                return Err(ParserError::ParserError(format!(
                    "INCLUDE {other}: expected key, partition, offset or timestamp"
                )));
            }
        };
        let name = if p.parse_keyword(Keyword::AS) { p.parse_identifier()? } else { Ident::new(format!("_{what}")) };
        let explicit_type = match &p.peek_token().token {
            Token::Word(w)
                if w.keyword != Keyword::WITH
                    && w.keyword != Keyword::FORMAT
                    && !w.value.eq_ignore_ascii_case("include") =>
            {
                Some(p.parse_data_type()?)
            }
            _ => None,
        };
        options.push((format!("include.{what}"), normalize_ident(&name)));
        columns.push(ColumnSpec {
            name,
            data_type: explicit_type.unwrap_or(default_type),
            not_null: false,
            default: None,
            generated: None,
        });
    }
    Ok(options)
}

/// `name TYPE [PRIMARY KEY] [NOT NULL | NULL] [DEFAULT expr] [AS expr]`.
fn parse_column(p: &mut Parser<'_>) -> Result<(ColumnSpec, bool), ParserError> {
    let name = p.parse_identifier()?;
    let mut closed = 0;
    let data_type = parse_type(p, &mut closed)?;
    let mut spec = ColumnSpec { name, data_type, not_null: false, default: None, generated: None };
    let mut is_pk = false;
    loop {
        if p.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
            is_pk = true;
            spec.not_null = true;
        } else if p.parse_keywords(&[Keyword::NOT, Keyword::NULL]) {
            spec.not_null = true;
        } else if p.parse_keyword(Keyword::NULL) {
        } else if p.parse_keyword(Keyword::DEFAULT) {
            spec.default = Some(p.parse_expr()?);
        } else if p.parse_keyword(Keyword::AS) {
            spec.generated = Some(p.parse_expr()?);
        } else if p.parse_keywords(&[Keyword::GENERATED, Keyword::ALWAYS, Keyword::AS]) {
            spec.generated = Some(p.parse_expr()?);
            let _ = p.parse_keyword(Keyword::STORED);
        } else if p.parse_keyword(Keyword::UNIQUE) {
            return Err(ParserError::ParserError("UNIQUE constraints are not supported; use PRIMARY KEY".into()));
        } else {
            break;
        }
    }
    // Keep the option list sqlparser would build out of reach: we only need the flags above.
    let _ = ColumnOption::Null;
    Ok((spec, is_pk))
}

/// A column type, including `STRUCT<name type, ...>`, which the Postgres dialect of
/// `sqlparser` does not parse. `closed` counts `>` consumed on behalf of enclosing structs
/// (a `>>` token closes two levels).
fn parse_type(p: &mut Parser<'_>, closed: &mut u32) -> Result<DataType, ParserError> {
    let is_struct = matches!(&p.peek_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case("struct"))
        && p.peek_tokens::<2>()[1] == Token::Lt;
    if !is_struct {
        return p.parse_data_type();
    }
    p.next_token();
    p.next_token();
    let mut fields = Vec::new();
    loop {
        let name = p.parse_identifier()?;
        let mut inner_closed = 0;
        let field_type = parse_type(p, &mut inner_closed)?;
        fields.push(sqlparser::ast::StructField { field_name: Some(name), field_type, options: None });
        if inner_closed > 0 {
            // The nested struct's `>>` also closed this one.
            *closed += inner_closed - 1;
            break;
        }
        if p.consume_token(&Token::Comma) {
            continue;
        }
        if p.consume_token(&Token::Gt) {
            break;
        }
        if p.consume_token(&Token::ShiftRight) {
            *closed += 1;
            break;
        }
        return p.expected("',' or '>' in STRUCT<...>", p.peek_token());
    }
    Ok(DataType::Struct(fields, sqlparser::ast::StructBracketKind::AngleBrackets))
}

/// `( key = value, ... )` where keys may be dotted (`nexmark.table.type`) and values are
/// literals or identifiers.
fn parse_with_options(p: &mut Parser<'_>) -> Result<Vec<(String, String)>, ParserError> {
    p.expect_token(&Token::LParen)?;
    let mut options = Vec::new();
    if p.consume_token(&Token::RParen) {
        return Ok(options);
    }
    loop {
        let mut key = Vec::new();
        loop {
            let t = p.next_token();
            match t.token {
                Token::Word(w) => key.push(w.value),
                Token::SingleQuotedString(s) => key.push(s),
                _ => return p.expected("an option name", t),
            }
            if !p.consume_token(&Token::Period) {
                break;
            }
        }
        p.expect_token(&Token::Eq)?;
        let t = p.next_token();
        let value = match t.token {
            Token::SingleQuotedString(s) => s,
            Token::Number(n, _) => n,
            Token::Word(w) => w.value,
            Token::Minus => match p.next_token().token {
                Token::Number(n, _) => format!("-{n}"),
                _ => return p.expected("an option value", t),
            },
            _ => return p.expected("an option value", t),
        };
        options.push((key.join(".").to_lowercase(), value));
        if p.consume_token(&Token::Comma) {
            continue;
        }
        p.expect_token(&Token::RParen)?;
        break;
    }
    Ok(options)
}

fn parse_format(p: &mut Parser<'_>) -> Result<Option<FormatSpec>, ParserError> {
    if !p.parse_keyword(Keyword::FORMAT) {
        return Ok(None);
    }
    let format = p.parse_identifier()?.value.to_uppercase();
    if !parse_word(p, "encode") {
        return p.expected("ENCODE", p.peek_token());
    }
    let encode = p.parse_identifier()?.value.to_uppercase();
    let options = if p.peek_token().token == Token::LParen { parse_with_options(p)? } else { Vec::new() };
    Ok(Some(FormatSpec { format, encode, options }))
}

fn parse_create_mv(p: &mut Parser<'_>) -> Result<EddyStatement, ParserError> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.parse_object_name(false)?;
    let columns = parse_optional_column_names(p)?;
    if p.parse_keyword(Keyword::WITH) {
        // RisingWave accepts options here; none are meaningful to Eddy yet.
        let _ = parse_with_options(p)?;
    }
    p.expect_keyword(Keyword::AS)?;
    let query = p.parse_query()?;
    let emit_on_window_close = parse_emit(p)?;
    Ok(EddyStatement::CreateMaterializedView(CreateMaterializedView {
        name,
        if_not_exists,
        columns,
        query,
        emit_on_window_close,
    }))
}

/// `EMIT ON WINDOW CLOSE` or its alias `EMIT FINAL`.
fn parse_emit(p: &mut Parser<'_>) -> Result<bool, ParserError> {
    if let Token::Word(w) = &p.peek_token().token
        && w.value.eq_ignore_ascii_case("emit")
    {
        p.next_token();
        if let Token::Word(w) = &p.peek_token().token
            && w.value.eq_ignore_ascii_case("final")
        {
            p.next_token();
            return Ok(true);
        }
        p.expect_keyword(Keyword::ON)?;
        p.expect_keyword(Keyword::WINDOW)?;
        p.expect_keyword(Keyword::CLOSE)?;
        return Ok(true);
    }
    Ok(false)
}

fn parse_optional_column_names(p: &mut Parser<'_>) -> Result<Vec<Ident>, ParserError> {
    if p.peek_token().token != Token::LParen {
        return Ok(Vec::new());
    }
    p.next_token();
    let cols = p.parse_comma_separated(|p| p.parse_identifier())?;
    p.expect_token(&Token::RParen)?;
    Ok(cols)
}

fn parse_create_view(p: &mut Parser<'_>, or_replace: bool) -> Result<EddyStatement, ParserError> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.parse_object_name(false)?;
    let columns = parse_optional_column_names(p)?;
    p.expect_keyword(Keyword::AS)?;
    let query = p.parse_query()?;
    Ok(EddyStatement::CreateView(CreateView { name, if_not_exists, or_replace, columns, query }))
}

fn parse_create_sink(p: &mut Parser<'_>) -> Result<EddyStatement, ParserError> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.parse_object_name(false)?;
    let mut from = if p.parse_keyword(Keyword::FROM) {
        SinkInput::Relation(p.parse_object_name(false)?)
    } else {
        p.expect_keyword(Keyword::AS)?;
        SinkInput::Query(p.parse_query()?)
    };
    let mut with_options = if p.parse_keyword(Keyword::WITH) { parse_with_options(p)? } else { Vec::new() };
    // `AS SELECT ... FROM t WITH (...)`: sqlparser reads the sink's options as table hints.
    if with_options.is_empty()
        && let SinkInput::Query(q) = &mut from
    {
        with_options = take_trailing_hints(q)?;
    }
    let format = parse_format(p)?;
    Ok(EddyStatement::CreateSink(CreateSink {
        name,
        if_not_exists,
        from,
        emit_on_window_close: false,
        with_options,
        format,
    }))
}

/// Removes `WITH (k = v, ...)` table hints from the last table of a query and returns them
/// as options.
fn take_trailing_hints(q: &mut Query) -> Result<Vec<(String, String)>, ParserError> {
    let sqlparser::ast::SetExpr::Select(select) = q.body.as_mut() else { return Ok(Vec::new()) };
    let Some(last) = select.from.last_mut() else { return Ok(Vec::new()) };
    let relation = match last.joins.last_mut() {
        Some(j) => &mut j.relation,
        None => &mut last.relation,
    };
    let sqlparser::ast::TableFactor::Table { with_hints, .. } = relation else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for hint in std::mem::take(with_hints) {
        let Expr::BinaryOp { left, op: sqlparser::ast::BinaryOperator::Eq, right } = hint else {
            return Err(ParserError::ParserError(format!("expected key = value in WITH (...), found {hint}")));
        };
        let key = match *left {
            Expr::Identifier(i) => i.value,
            Expr::CompoundIdentifier(parts) => parts.iter().map(|i| i.value.clone()).collect::<Vec<_>>().join("."),
            other => return Err(ParserError::ParserError(format!("expected an option name, found {other}"))),
        };
        let value = literal_to_string(&right).unwrap_or_else(|| right.to_string());
        out.push((key.to_lowercase(), value));
    }
    Ok(out)
}

/// The last identifier of a possibly qualified name, which is what Eddy's single schema uses.
pub fn object_name_to_string(name: &ObjectName) -> String {
    name.0.last().and_then(|part| part.as_ident()).map(normalize_ident).unwrap_or_default()
}

/// Postgres folds unquoted identifiers to lower case.
pub fn normalize_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() }
}

/// Reads a literal option value written as an expression (used for `SET x = value`).
pub fn literal_to_string(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::UnaryOp { op: sqlparser::ast::UnaryOperator::Minus, expr } => {
            literal_to_string(expr).map(|s| format!("-{s}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn top_is_a_column_name_after_select() {
        for sql in ["SELECT top FROM t", "SELECT DISTINCT top, n FROM t", "SELECT top AS best FROM t"] {
            let parsed = parse_sql(sql).expect(sql);
            let EddyStatement::Sql(statement) = &parsed[0].statement else { panic!("{sql}") };
            let Statement::Query(q) = statement.as_ref() else { panic!("{sql}") };
            let sqlparser::ast::SetExpr::Select(select) = q.body.as_ref() else { panic!("{sql}") };
            assert!(select.top.is_none(), "{sql}");
            assert!(select.projection[0].to_string().starts_with("\"top\""), "{sql}: {}", select.projection[0]);
        }
        // The clause shapes are left to the parser as they were.
        assert!(parse_sql("SELECT TOP 3 a FROM t").is_ok());
    }
    use super::*;

    fn one(sql: &str) -> EddyStatement {
        match parse_one(sql) {
            Ok(s) => s.statement,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    #[test]
    fn create_table_with_pk_and_watermark() {
        let EddyStatement::CreateTable(t) = one("CREATE TABLE t (id INT PRIMARY KEY, ts TIMESTAMP, v VARCHAR,
               WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) APPEND ONLY")
        else {
            panic!("not a table")
        };
        assert_eq!(t.columns.len(), 3);
        assert_eq!(t.primary_key[0].value, "id");
        assert!(t.append_only);
        assert_eq!(t.watermark.map(|w| w.column.value), Some("ts".to_string()));
    }

    #[test]
    fn create_table_from_cdc_source() {
        let EddyStatement::CreateTable(t) =
            one("CREATE TABLE orders (id INT PRIMARY KEY, note VARCHAR) FROM pg TABLE 'public.orders'")
        else {
            panic!("not a table")
        };
        let (source, table) = t.from_source.expect("FROM clause");
        assert_eq!(source.to_string(), "pg");
        assert_eq!(table, "public.orders");
        assert_eq!(t.primary_key.len(), 1);
    }

    #[test]
    fn include_clauses_add_columns_and_options() {
        let sql = "CREATE SOURCE s (v INT) INCLUDE key AS k VARCHAR INCLUDE offset AS o \
                   WITH (connector = 'kafka', topic = 't') FORMAT PLAIN ENCODE JSON";
        let EddyStatement::CreateSource(s) = one(sql) else { panic!("not a source") };
        let names: Vec<String> = s.columns.iter().map(|c| c.name.value.clone()).collect();
        assert_eq!(names, vec!["v", "k", "o"]);
        assert_eq!(s.columns[1].data_type, DataType::Varchar(None));
        assert!(s.with_options.contains(&("include.key".to_string(), "k".to_string())));
        assert!(s.with_options.contains(&("include.offset".to_string(), "o".to_string())));
    }

    #[test]
    fn create_source_with_options_and_format() {
        let EddyStatement::CreateSource(s) = one("CREATE SOURCE bid (auction BIGINT, date_time TIMESTAMP)
             WITH (connector = 'nexmark', nexmark.table.type = 'Bid', nexmark.split.num = 2)
             FORMAT PLAIN ENCODE JSON")
        else {
            panic!("not a source")
        };
        assert_eq!(s.with_options[1], ("nexmark.table.type".to_string(), "Bid".to_string()));
        assert_eq!(s.with_options[2].1, "2");
        assert_eq!(s.format.map(|f| (f.format, f.encode)), Some(("PLAIN".into(), "JSON".into())));
    }

    #[test]
    fn mv_with_emit() {
        let EddyStatement::CreateMaterializedView(mv) =
            one("CREATE MATERIALIZED VIEW m AS SELECT 1 EMIT ON WINDOW CLOSE")
        else {
            panic!("not a mv")
        };
        assert!(mv.emit_on_window_close);
        let EddyStatement::CreateMaterializedView(mv) = one("CREATE MATERIALIZED VIEW m AS SELECT a FROM t") else {
            panic!("not a mv")
        };
        assert!(!mv.emit_on_window_close);
        let stmts = parse_sql("CREATE MATERIALIZED VIEW m AS SELECT a FROM t EMIT FINAL; SELECT 1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&stmts[0].statement, EddyStatement::CreateMaterializedView(m) if m.emit_on_window_close));
        assert_eq!(stmts[0].text, "CREATE MATERIALIZED VIEW m AS SELECT a FROM t EMIT FINAL");
    }

    #[test]
    fn multiple_statements_keep_their_text() {
        let stmts = match parse_sql("CREATE TABLE a (x INT); SELECT * FROM a ;\n DROP TABLE a CASCADE") {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let texts: Vec<_> = stmts.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, vec!["CREATE TABLE a (x INT)", "SELECT * FROM a", "DROP TABLE a CASCADE"]);
        assert!(matches!(stmts[2].statement, EddyStatement::Drop(DropStatement { cascade: true, .. })));
    }

    #[test]
    fn syntax_error_has_position() {
        match parse_sql("CREATE TABLE t (a INT,, b INT)") {
            Err(PlanError::Parse { position, .. }) => assert_eq!(position, Some(23)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn flink_window_calls_become_risingwave_calls() {
        let stmt =
            parse_one("SELECT * FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) AS t")
                .unwrap_or_else(|e| panic!("{e}"));
        let EddyStatement::Sql(s) = stmt.statement else { panic!("not sql") };
        assert_eq!(s.to_string(), "SELECT * FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) AS t");
        let stmt = parse_one(
            "SELECT * FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(date_time), INTERVAL '10' SECOND))",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let EddyStatement::Sql(s) = stmt.statement else { panic!("not sql") };
        assert_eq!(s.to_string(), "SELECT * FROM SESSION(bid, date_time, INTERVAL '10' SECOND)");
    }

    #[test]
    fn proctime_lookups_become_marked_scans() {
        let stmt = parse_one("SELECT * FROM c JOIN users FOR SYSTEM_TIME AS OF PROCTIME() u ON c.k = u.id")
            .unwrap_or_else(|e| panic!("{e}"));
        let EddyStatement::Sql(s) = stmt.statement else { panic!("not sql") };
        assert_eq!(s.to_string(), "SELECT * FROM c JOIN __eddy_lookup__users u ON c.k = u.id");
        let stmt = parse_one("SELECT * FROM c LEFT JOIN users FOR SYSTEM_TIME AS OF PROCTIME() ON c.k = users.id")
            .unwrap_or_else(|e| panic!("{e}"));
        let EddyStatement::Sql(s) = stmt.statement else { panic!("not sql") };
        assert_eq!(s.to_string(), "SELECT * FROM c LEFT JOIN __eddy_lookup__users AS users ON c.k = users.id");
    }

    #[test]
    fn event_time_lookups_carry_their_time_column() {
        let stmt = parse_one("SELECT * FROM o JOIN rates FOR SYSTEM_TIME AS OF o.ts r ON o.cur = r.cur")
            .unwrap_or_else(|e| panic!("{e}"));
        let EddyStatement::Sql(s) = stmt.statement else { panic!("not sql") };
        let text = s.to_string();
        let name = text
            .split_whitespace()
            .find(|w| w.starts_with(AS_OF_PREFIX))
            .unwrap_or_else(|| panic!("no marked name in {text}"));
        assert_eq!(split_lookup(name), ("rates", Lookup::EventTime(vec!["o".into(), "ts".into()])));
        assert!(text.ends_with(" r ON o.cur = r.cur"), "{text}");
        assert_eq!(split_lookup("__eddy_lookup__users"), ("users", Lookup::ProcessTime));
        assert_eq!(split_lookup("users"), ("users", Lookup::None));
    }

    #[test]
    fn show_forms() {
        assert!(matches!(
            one("SHOW MATERIALIZED VIEWS"),
            EddyStatement::Show(ShowStatement::Objects(ObjectKind::MaterializedView))
        ));
        match one("SHOW TRANSACTION ISOLATION LEVEL") {
            EddyStatement::Show(ShowStatement::Variable(v)) => {
                assert_eq!(v, "transaction isolation level")
            }
            other => panic!("{other:?}"),
        }
    }
}
