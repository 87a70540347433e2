//! Live results: `SUBSCRIBE`, cursors and `FETCH`.
//!
//! `SUBSCRIBE [TO] name [WITH (SNAPSHOT = true|false, PROGRESS = true)]` streams a stored
//! relation's current rows (unless `SNAPSHOT = false`) and then every committed change, each
//! row led by `eddy_timestamp` (when its epoch committed, in milliseconds since the Unix epoch)
//! and `eddy_diff` (+1 insert, -1 delete; an update is an adjacent -1/+1 pair). With
//! `PROGRESS`, an `eddy_progressed` column follows the timestamp and a row with it set to true
//! says that every change up to that timestamp has been sent.
//!
//! It runs as `COPY (SUBSCRIBE ...) TO STDOUT` (or bare `SUBSCRIBE`), which streams text rows
//! until the client goes away or cancels, or as `DECLARE c CURSOR FOR SUBSCRIBE ...` followed
//! by `FETCH n|ALL [FROM] c [WITH (timeout = '1s')]`. `DECLARE c CURSOR FOR SELECT ...` is a
//! plain cursor over the query's rows (psycopg2's named cursors).
//!
//! A subscription has a bounded buffer in the change feed (`eddy_executor::changefeed`): a
//! client that does not keep up loses its subscription with an error, the dataflow never
//! waits. A subscription ends with the connection, or when its relation is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use eddy_common::SqlState;
use eddy_common::ids::Epoch;
use eddy_executor::changefeed::{Committed, FeedError, Subscription, now_ms};
use eddy_executor::store::RowCodec;
use eddy_planner::catalog::RelationKind;
use parking_lot::Mutex;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer, Word};

use crate::engine::Engine;
use crate::error::{Result, ServerError};

/// Epochs of changes a subscriber may leave unread before it is cut off.
pub const BUFFER_EPOCHS: usize = eddy_executor::changefeed::DEFAULT_BUFFER_EPOCHS;
/// How often a waiting subscription checks that its client is still connected.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(200);

/// What to subscribe to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeSpec {
    pub relation: String,
    pub snapshot: bool,
    pub progress: bool,
}

/// How many rows a `FETCH` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchCount {
    All,
    Rows(usize),
}

/// Where a subscription cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorStart {
    /// At the next change.
    Now,
    /// At the retained changes with `eddy_timestamp >=` this.
    Since(i64),
    /// At the relation's current rows, then every change.
    Full,
}

/// The statements this module runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveStatement {
    /// `COPY (SUBSCRIBE ...) TO STDOUT` or a bare `SUBSCRIBE`.
    CopySubscribe(SubscribeSpec),
    DeclareSubscribe {
        cursor: String,
        spec: SubscribeSpec,
    },
    /// `CREATE SUBSCRIPTION name FROM relation [WITH (retention = '1h')]`.
    CreateSubscription {
        name: String,
        relation: String,
        retention: Duration,
    },
    DropSubscription {
        name: String,
        if_exists: bool,
    },
    /// `DECLARE c SUBSCRIPTION CURSOR FOR s [SINCE t | FULL]`.
    DeclareSubscriptionCursor {
        cursor: String,
        subscription: String,
        start: CursorStart,
    },
    /// `DECLARE c CURSOR FOR <query>`: the query's text.
    DeclareQuery {
        cursor: String,
        query: String,
    },
    Fetch {
        cursor: String,
        count: FetchCount,
        timeout: Option<Duration>,
    },
    /// `CLOSE c`, or `CLOSE ALL` (`None`).
    Close {
        cursor: Option<String>,
    },
    /// `CREATE USER`, `ALTER USER`, `DROP USER` (or `ROLE`): the SQL parser knows other
    /// dialects' forms of these.
    User(crate::users::UserStatement),
}

fn syntax(message: impl Into<String>) -> ServerError {
    ServerError::new(SqlState::SyntaxError, message)
}

/// A statement's tokens (without whitespace and comments) with their byte ranges in the text.
struct Lexed<'s> {
    sql: &'s str,
    tokens: Vec<Token>,
    ranges: Vec<(usize, usize)>,
}

/// Byte offset of a tokenizer location (1-based line and character column).
fn byte_offset(sql: &str, line_starts: &[usize], line: u64, column: u64) -> usize {
    let Some(start) = line_starts.get((line as usize).saturating_sub(1)) else { return sql.len() };
    let rest = &sql[*start..];
    let chars = (column as usize).saturating_sub(1);
    start + rest.char_indices().nth(chars).map_or(rest.len(), |(i, _)| i)
}

fn lex(sql: &str) -> Option<Lexed<'_>> {
    let with_spans = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location().ok()?;
    let mut line_starts = vec![0];
    line_starts.extend(sql.char_indices().filter(|(_, c)| *c == '\n').map(|(i, _)| i + 1));
    let mut tokens = Vec::new();
    let mut ranges = Vec::new();
    for t in with_spans {
        if matches!(t.token, Token::Whitespace(_)) {
            continue;
        }
        let start = byte_offset(sql, &line_starts, t.span.start.line, t.span.start.column);
        let end = byte_offset(sql, &line_starts, t.span.end.line, t.span.end.column);
        tokens.push(t.token);
        ranges.push((start, end.max(start)));
    }
    Some(Lexed { sql, tokens, ranges })
}

impl Lexed<'_> {
    /// Index ranges of the statements (split at semicolons), empty ones left out.
    fn statements(&self) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, t) in self.tokens.iter().enumerate() {
            if *t == Token::SemiColon {
                if i > start {
                    out.push(start..i);
                }
                start = i + 1;
            }
        }
        if self.tokens.len() > start {
            out.push(start..self.tokens.len());
        }
        out
    }

    /// The original text of tokens `range`.
    fn text(&self, range: std::ops::Range<usize>) -> &str {
        if range.is_empty() {
            return "";
        }
        let from = self.ranges[range.start].0;
        let to = self.ranges[range.end - 1].1;
        self.sql.get(from..to).unwrap_or("")
    }
}

fn keyword(t: Option<&Token>, word: &str) -> bool {
    matches!(t, Some(Token::Word(Word { value, quote_style: None, .. })) if value.eq_ignore_ascii_case(word))
}

/// True when `sql` holds a statement this module runs (checked before the SQL parser, which
/// does not know them).
pub fn is_live(sql: &str) -> bool {
    let Some(lexed) = lex(sql) else { return false };
    lexed.statements().into_iter().any(|r| starts_live(&lexed.tokens[r]))
}

fn starts_live(t: &[Token]) -> bool {
    let first = t.first();
    keyword(first, "subscribe")
        || keyword(first, "fetch")
        || keyword(first, "close")
        || keyword(first, "declare")
        || ((keyword(first, "create") || keyword(first, "drop")) && keyword(t.get(1), "subscription"))
        || ((keyword(first, "create") || keyword(first, "alter") || keyword(first, "drop"))
            && (keyword(t.get(1), "user") || keyword(t.get(1), "role")))
        || (keyword(first, "copy") && t.get(1) == Some(&Token::LParen) && keyword(t.get(2), "subscribe"))
}

/// Splits a query string into statements, each either one of ours or plain SQL text.
///
/// # Errors
/// When one of ours is malformed.
pub fn split(sql: &str) -> Result<Vec<std::result::Result<LiveStatement, String>>> {
    let lexed = lex(sql).ok_or_else(|| syntax("cannot read the statement"))?;
    let mut out = Vec::new();
    for range in lexed.statements() {
        if starts_live(&lexed.tokens[range.clone()]) {
            out.push(Ok(parse_range(&lexed, range)?));
        } else {
            out.push(Err(lexed.text(range).to_string()));
        }
    }
    Ok(out)
}

/// Parses one statement of ours; `None` when `sql` is something else.
///
/// # Errors
/// When it is one of ours but malformed.
pub fn parse(sql: &str) -> Result<Option<LiveStatement>> {
    let Some(lexed) = lex(sql) else { return Ok(None) };
    let statements = lexed.statements();
    if statements.len() != 1 || !starts_live(&lexed.tokens[statements[0].clone()]) {
        return Ok(None);
    }
    parse_range(&lexed, statements[0].clone()).map(Some)
}

fn parse_range(lexed: &Lexed<'_>, range: std::ops::Range<usize>) -> Result<LiveStatement> {
    let mut c = Cursor { tokens: &lexed.tokens[range.clone()], at: 0 };
    let statement = parse_tokens(&mut c)?;
    if let LiveStatement::DeclareQuery { cursor, .. } = statement {
        let query = lexed.text(range.start + c.at..range.end).to_string();
        return Ok(LiveStatement::DeclareQuery { cursor, query });
    }
    Ok(statement)
}

struct Cursor<'a> {
    tokens: &'a [Token],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<&'a Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<&'a Token> {
        let t = self.tokens.get(self.at);
        self.at += 1;
        t
    }

    fn eat(&mut self, word: &str) -> bool {
        if keyword(self.peek(), word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, word: &str) -> Result<()> {
        if self.eat(word) {
            Ok(())
        } else {
            Err(syntax(format!("syntax error: expected {} near {}", word.to_uppercase(), self.near())))
        }
    }

    fn expect_token(&mut self, token: &Token) -> Result<()> {
        if self.peek() == Some(token) {
            self.at += 1;
            Ok(())
        } else {
            Err(syntax(format!("syntax error: expected {token} near {}", self.near())))
        }
    }

    fn near(&self) -> String {
        self.peek().map(|t| format!("\"{t}\"")).unwrap_or_else(|| "end of input".into())
    }

    /// An identifier, possibly qualified; unquoted parts are lower-cased, as Postgres does.
    fn name(&mut self) -> Result<String> {
        let mut parts = Vec::new();
        loop {
            match self.next() {
                Some(Token::Word(w)) => {
                    parts.push(if w.quote_style.is_some() { w.value.clone() } else { w.value.to_lowercase() })
                }
                _ => return Err(syntax(format!("syntax error: expected a name near {}", self.near()))),
            }
            if self.peek() == Some(&Token::Period) {
                self.at += 1;
            } else {
                break;
            }
        }
        // `public.v` and `dev.public.v` name the same relation as `v`.
        Ok(parts.pop().unwrap_or_default())
    }

    fn done(&self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(syntax(format!("syntax error at or near {}", self.near()))),
        }
    }

    /// `WITH (name [=] value, ...)`, names lower-cased, values as text.
    fn options(&mut self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        if !self.eat("with") {
            return Ok(out);
        }
        self.expect_token(&Token::LParen)?;
        loop {
            let name = match self.next() {
                Some(Token::Word(w)) => w.value.to_lowercase(),
                _ => return Err(syntax(format!("syntax error: expected an option name near {}", self.near()))),
            };
            if self.peek() == Some(&Token::Eq) {
                self.at += 1;
            }
            let value = match self.peek() {
                Some(Token::Comma) | Some(Token::RParen) => "true".to_string(),
                Some(Token::SingleQuotedString(s)) => {
                    self.at += 1;
                    s.clone()
                }
                Some(Token::Number(n, _)) => {
                    self.at += 1;
                    n.clone()
                }
                Some(Token::Word(w)) => {
                    self.at += 1;
                    w.value.to_lowercase()
                }
                _ => return Err(syntax(format!("syntax error: expected a value near {}", self.near()))),
            };
            out.push((name, value));
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::RParen) => break,
                _ => return Err(syntax(format!("syntax error: expected , or ) near {}", self.near()))),
            }
        }
        Ok(out)
    }
}

fn boolean_option(name: &str, value: &str) -> Result<bool> {
    match value.to_lowercase().as_str() {
        "true" | "on" | "1" | "yes" => Ok(true),
        "false" | "off" | "0" | "no" => Ok(false),
        _ => Err(ServerError::new(
            SqlState::InvalidParameterValue,
            format!("option {} takes true or false, not \"{value}\"", name.to_uppercase()),
        )),
    }
}

/// `'1s'`, `'500ms'`, `'2 minutes'`, a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim().to_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || {
        ServerError::new(
            SqlState::InvalidParameterValue,
            format!("invalid timeout \"{text}\": write e.g. '1s' or '500ms'"),
        )
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => n,
        "ms" | "millisecond" | "milliseconds" => n / 1000.0,
        "us" | "microsecond" | "microseconds" => n / 1_000_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn subscribe_spec(c: &mut Cursor<'_>) -> Result<SubscribeSpec> {
    c.expect("subscribe")?;
    c.eat("to");
    if c.peek() == Some(&Token::LParen) {
        return Err(ServerError::with_hint(
            SqlState::FeatureNotSupported,
            "not supported: SUBSCRIBE to a query",
            "create a materialized view of the query and subscribe to it",
        ));
    }
    let relation = c.name()?;
    let mut spec = SubscribeSpec { relation, snapshot: true, progress: false };
    for (name, value) in c.options()? {
        match name.as_str() {
            "snapshot" => spec.snapshot = boolean_option(&name, &value)?,
            "progress" => spec.progress = boolean_option(&name, &value)?,
            other => {
                return Err(ServerError::new(
                    SqlState::InvalidParameterValue,
                    format!("unknown SUBSCRIBE option {}: SNAPSHOT and PROGRESS are known", other.to_uppercase()),
                ));
            }
        }
    }
    Ok(spec)
}

/// `[WITH] option ...` of `CREATE USER` and `ALTER USER`: the password and superuser flag.
struct RoleOptions {
    password: Option<Option<crate::users::Secret>>,
    superuser: Option<bool>,
}

fn role_options(c: &mut Cursor<'_>) -> Result<RoleOptions> {
    let mut out = RoleOptions { password: None, superuser: None };
    c.eat("with");
    while c.peek().is_some() {
        if c.eat("encrypted") {
            c.expect("password")?;
            out.password = Some(Some(password_literal(c)?));
        } else if c.eat("password") {
            if c.eat("null") {
                out.password = Some(None);
            } else {
                out.password = Some(Some(password_literal(c)?));
            }
        } else if c.eat("superuser") {
            out.superuser = Some(true);
        } else if c.eat("nosuperuser") {
            out.superuser = Some(false);
        } else if c.eat("login") || c.eat("inherit") {
            // What every Eddy user is.
        } else {
            return Err(ServerError::unsupported(format!(
                "role option {}: PASSWORD, SUPERUSER, NOSUPERUSER and LOGIN are",
                c.near()
            )));
        }
    }
    Ok(out)
}

fn password_literal(c: &mut Cursor<'_>) -> Result<crate::users::Secret> {
    match c.next() {
        Some(Token::SingleQuotedString(s)) => Ok(crate::users::Secret(s.clone())),
        _ => Err(syntax(format!("syntax error: expected a quoted password near {}", c.near()))),
    }
}

fn user_statement(c: &mut Cursor<'_>) -> Result<Option<LiveStatement>> {
    use crate::users::UserStatement;
    let at = c.at;
    let verb = if c.eat("create") {
        "create"
    } else if c.eat("alter") {
        "alter"
    } else if c.eat("drop") {
        "drop"
    } else {
        return Ok(None);
    };
    if !(c.eat("user") || c.eat("role")) {
        c.at = at;
        return Ok(None);
    }
    let statement = match verb {
        "create" => {
            let if_not_exists = c.eat("if");
            if if_not_exists {
                c.expect("not")?;
                c.expect("exists")?;
            }
            let name = c.name()?;
            let options = role_options(c)?;
            UserStatement::Create {
                name,
                if_not_exists,
                password: options.password.flatten(),
                superuser: options.superuser.unwrap_or(false),
            }
        }
        "alter" => {
            let name = c.name()?;
            let options = role_options(c)?;
            UserStatement::Alter { name, password: options.password, superuser: options.superuser }
        }
        _ => {
            let if_exists = c.eat("if");
            if if_exists {
                c.expect("exists")?;
            }
            let mut names = vec![c.name()?];
            while c.peek() == Some(&Token::Comma) {
                c.at += 1;
                names.push(c.name()?);
            }
            c.done()?;
            UserStatement::Drop { names, if_exists }
        }
    };
    Ok(Some(LiveStatement::User(statement)))
}

/// Parses the statement at `c`; for `DECLARE ... FOR <query>`, leaves `c` at the query (whose
/// text the caller cuts from the original).
fn parse_tokens(c: &mut Cursor<'_>) -> Result<LiveStatement> {
    if let Some(user) = user_statement(c)? {
        return Ok(user);
    }
    if keyword(c.peek(), "subscribe") {
        let spec = subscribe_spec(c)?;
        c.done()?;
        return Ok(LiveStatement::CopySubscribe(spec));
    }
    if c.eat("copy") {
        c.expect_token(&Token::LParen)?;
        let spec = subscribe_spec(c)?;
        c.expect_token(&Token::RParen)?;
        c.expect("to")?;
        c.expect("stdout")?;
        for (name, value) in c.options()? {
            if !(name == "format" && value == "text") {
                return Err(ServerError::unsupported(format!(
                    "COPY (SUBSCRIBE ...) option {name} {value}: subscriptions are copied as text"
                )));
            }
        }
        c.done()?;
        return Ok(LiveStatement::CopySubscribe(spec));
    }
    if c.eat("create") {
        c.expect("subscription")?;
        let name = c.name()?;
        c.expect("from")?;
        let relation = c.name()?;
        let mut retention = Duration::from_secs(24 * 3600);
        for (option, value) in c.options()? {
            if option != "retention" {
                return Err(ServerError::new(
                    SqlState::InvalidParameterValue,
                    format!("unknown subscription option {}: RETENTION is known", option.to_uppercase()),
                ));
            }
            retention = parse_duration(&value)?;
        }
        c.done()?;
        return Ok(LiveStatement::CreateSubscription { name, relation, retention });
    }
    if c.eat("drop") {
        c.expect("subscription")?;
        let if_exists = c.eat("if");
        if if_exists {
            c.expect("exists")?;
        }
        let name = c.name()?;
        c.done()?;
        return Ok(LiveStatement::DropSubscription { name, if_exists });
    }
    if c.eat("declare") {
        let cursor = c.name()?;
        if c.eat("subscription") {
            c.expect("cursor")?;
            c.expect("for")?;
            let subscription = c.name()?;
            let start = if c.eat("full") {
                CursorStart::Full
            } else if c.eat("since") {
                match c.next() {
                    Some(Token::Number(n, _)) => {
                        CursorStart::Since(n.parse().map_err(|_| syntax(format!("invalid SINCE timestamp {n}")))?)
                    }
                    Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("now") => {
                        if c.peek() == Some(&Token::LParen) {
                            c.at += 1;
                            c.expect_token(&Token::RParen)?;
                        }
                        CursorStart::Now
                    }
                    _ => return Err(syntax("SINCE takes an eddy_timestamp (milliseconds since the Unix epoch)")),
                }
            } else {
                CursorStart::Now
            };
            c.done()?;
            return Ok(LiveStatement::DeclareSubscriptionCursor { cursor, subscription, start });
        }
        // Postgres's cursor options; none changes what a subscription does.
        while c.eat("binary") || c.eat("insensitive") || c.eat("asensitive") || c.eat("scroll") || c.eat("no") {}
        c.expect("cursor")?;
        if c.eat("with") || c.eat("without") {
            c.expect("hold")?;
        }
        c.expect("for")?;
        if keyword(c.peek(), "subscribe") {
            let spec = subscribe_spec(c)?;
            c.done()?;
            return Ok(LiveStatement::DeclareSubscribe { cursor, spec });
        }
        if c.peek().is_none() {
            return Err(syntax("syntax error: DECLARE ... CURSOR FOR needs a query"));
        }
        return Ok(LiveStatement::DeclareQuery { cursor, query: String::new() });
    }
    if c.eat("fetch") {
        let mut count = FetchCount::Rows(1);
        c.eat("forward");
        if c.eat("all") {
            count = FetchCount::All;
        } else if c.eat("next") {
            count = FetchCount::Rows(1);
        } else if let Some(Token::Number(n, _)) = c.peek() {
            c.at += 1;
            count = FetchCount::Rows(n.parse().map_err(|_| syntax(format!("invalid FETCH count {n}")))?);
        }
        if !c.eat("from") {
            c.eat("in");
        }
        let cursor = c.name()?;
        let mut timeout = None;
        for (name, value) in c.options()? {
            if name != "timeout" {
                return Err(ServerError::new(
                    SqlState::InvalidParameterValue,
                    format!("unknown FETCH option {}: TIMEOUT is known", name.to_uppercase()),
                ));
            }
            timeout = Some(parse_duration(&value)?);
        }
        c.done()?;
        return Ok(LiveStatement::Fetch { cursor, count, timeout });
    }
    if c.eat("close") {
        if c.eat("all") {
            c.done()?;
            return Ok(LiveStatement::Close { cursor: None });
        }
        let cursor = c.name()?;
        c.done()?;
        return Ok(LiveStatement::Close { cursor: Some(cursor) });
    }
    Err(syntax(format!("syntax error at or near {}", c.near())))
}

/// The columns a subscription's rows have: its bookkeeping columns, then the relation's.
fn output_schema(relation: &Schema, progress: bool) -> SchemaRef {
    let mut fields = vec![Field::new("eddy_timestamp", DataType::Int64, false)];
    if progress {
        fields.push(Field::new("eddy_progressed", DataType::Boolean, false));
    }
    fields.push(Field::new("eddy_diff", DataType::Int64, true));
    fields.extend(relation.fields().iter().map(|f| Field::new(f.name(), f.data_type().clone(), true)));
    Arc::new(Schema::new(fields))
}

/// A running subscription with the rows it has not handed out yet.
pub struct LiveSubscription {
    name: String,
    kind: RelationKind,
    subscription: Subscription,
    /// Follows the committed epoch, for progress rows.
    committed: tokio::sync::watch::Receiver<Committed>,
    /// The epoch the starting snapshot was read at: changes up to it are in the snapshot.
    snapshot_epoch: Epoch,
    progress: bool,
    /// The last epoch a progress row was written for.
    progressed: Epoch,
    last_time_ms: i64,
    schema: SchemaRef,
    relation_schema: SchemaRef,
    pending: VecDeque<RecordBatch>,
}

impl std::fmt::Debug for LiveSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSubscription").field("name", &self.name).finish_non_exhaustive()
    }
}

impl LiveSubscription {
    /// Subscribes to `spec.relation`, with its current rows queued first unless
    /// `SNAPSHOT = false`.
    ///
    /// # Errors
    /// When the relation does not exist or is not stored.
    pub async fn open(engine: &Arc<Engine>, spec: &SubscribeSpec) -> Result<Self> {
        let def = engine.catalog.get(&spec.relation).ok_or_else(|| {
            ServerError::new(SqlState::UndefinedTable, format!("relation \"{}\" does not exist", spec.relation))
        })?;
        let layout = match (&def.storage, def.kind.is_stored()) {
            (Some(layout), true) => layout.clone(),
            _ => {
                return Err(ServerError::with_hint(
                    SqlState::WrongObjectType,
                    format!("cannot subscribe to {} \"{}\": its rows are not stored", def.kind.sql_name(), def.name),
                    "subscribe to a table or a materialized view (CREATE MATERIALIZED VIEW ... AS SELECT ...)",
                ));
            }
        };
        let codec = Arc::new(RowCodec::new(def.schema.clone(), layout)?);
        let feed = engine.runtime.feed().clone();
        let committed = feed.committed();
        let (subscription, snapshot) =
            feed.subscribe_with_snapshot(engine.runtime.store(), def.id, codec.clone(), BUFFER_EPOCHS).await?;
        let snapshot_epoch = snapshot
            .meta("epoch")?
            .map(|b| {
                let mut buf = [0u8; 8];
                let n = b.len().min(8);
                buf[..n].copy_from_slice(&b[..n]);
                u64::from_le_bytes(buf)
            })
            .unwrap_or(0);
        let schema = output_schema(&def.schema, spec.progress);
        let mut live = Self {
            name: def.name.clone(),
            kind: def.kind,
            subscription,
            committed,
            snapshot_epoch,
            progress: spec.progress,
            progressed: snapshot_epoch,
            last_time_ms: 0,
            schema,
            relation_schema: def.schema.clone(),
            pending: VecDeque::new(),
        };
        if spec.snapshot {
            let rows = tokio::task::spawn_blocking(move || snapshot.scan(def.id, &codec, &[], 8192, None))
                .await
                .map_err(|e| ServerError::new(SqlState::Internal, format!("reading the snapshot: {e}")))??;
            let time = now_ms();
            for batch in rows {
                let weights = Int64Array::from(vec![1i64; batch.num_rows()]);
                live.queue(time, &batch, &weights)?;
            }
        }
        Ok(live)
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn queue(&mut self, time_ms: i64, data: &RecordBatch, weights: &Int64Array) -> Result<()> {
        if data.num_rows() == 0 {
            return Ok(());
        }
        let time_ms = time_ms.max(self.last_time_ms);
        self.last_time_ms = time_ms;
        let n = data.num_rows();
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![time_ms; n]))];
        if self.progress {
            columns.push(Arc::new(BooleanArray::from(vec![false; n])));
        }
        columns.push(Arc::new(weights.clone()));
        columns.extend(data.columns().iter().cloned());
        self.pending.push_back(RecordBatch::try_new(self.schema.clone(), columns).map_err(internal)?);
        Ok(())
    }

    fn queue_progress(&mut self, committed: Committed) -> Result<()> {
        if !self.progress || committed.epoch <= self.progressed {
            return Ok(());
        }
        self.progressed = committed.epoch;
        let time_ms = committed.time_ms.max(self.last_time_ms);
        self.last_time_ms = time_ms;
        let mut columns: Vec<ArrayRef> =
            vec![Arc::new(Int64Array::from(vec![time_ms])), Arc::new(BooleanArray::from(vec![true]))];
        columns.push(Arc::new(Int64Array::from(vec![None::<i64>])));
        columns.extend(self.relation_schema.fields().iter().map(|f| new_null_array(f.data_type(), 1)));
        self.pending.push_back(RecordBatch::try_new(self.schema.clone(), columns).map_err(internal)?);
        Ok(())
    }

    fn ended(&self, e: FeedError) -> ServerError {
        match e {
            FeedError::Dropped(_) => ServerError::new(
                SqlState::UndefinedTable,
                format!("{} \"{}\" was dropped; the subscription ended", self.kind.sql_name(), self.name),
            ),
            FeedError::FellBehind(n) => ServerError::with_hint(
                SqlState::ObjectNotInPrerequisiteState,
                format!("subscription to \"{}\" ended: the client fell {n} epochs of changes behind", self.name),
                "read the subscription's rows faster, or subscribe to a smaller view",
            ),
            FeedError::ShuttingDown => ServerError::new(SqlState::Internal, format!("subscription ended: {e}")),
        }
    }

    fn take_changes(&mut self, changes: eddy_executor::changefeed::FeedChanges) -> Result<()> {
        if changes.epoch <= self.snapshot_epoch {
            return Ok(());
        }
        let (data, weights) = (changes.changes.data().clone(), changes.changes.weights().clone());
        self.queue(changes.time_ms, &data, &weights)
    }

    /// Moves every change already delivered into the pending rows.
    fn drain(&mut self) -> Result<()> {
        loop {
            match self.subscription.try_next() {
                Ok(Some(c)) => self.take_changes(c)?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.ended(e)),
            }
        }
    }

    /// Waits until rows are pending (or `deadline` passes, or the client is gone).
    async fn wait(&mut self, deadline: Option<tokio::time::Instant>, probe: &ClientProbe) -> Result<()> {
        loop {
            self.drain()?;
            if !self.pending.is_empty() {
                return Ok(());
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Ok(());
            }
            let tick = tokio::time::Instant::now() + LIVENESS_INTERVAL;
            let until = deadline.map_or(tick, |d| d.min(tick));
            let progress = self.progress;
            tokio::select! {
                next = self.subscription.next() => match next {
                    Ok(c) => self.take_changes(c)?,
                    Err(e) => {
                        return Err(self.ended(e));
                    }
                },
                changed = self.committed.changed(), if progress => {
                    if changed.is_ok() {
                        let committed = *self.committed.borrow_and_update();
                        // Changes of that epoch were handed over before the epoch was announced.
                        self.drain()?;
                        self.queue_progress(committed)?;
                    }
                }
                () = tokio::time::sleep_until(until) => {
                    if probe.client_gone() {
                        return Err(ServerError::new(SqlState::QueryCanceled, "the client disconnected"));
                    }
                }
            }
        }
    }

    /// Waits for the next rows and takes all of them (for `COPY`).
    ///
    /// # Errors
    /// When the subscription ended, or the client went away.
    pub async fn next_rows(&mut self, probe: &ClientProbe) -> Result<RecordBatch> {
        self.wait(None, probe).await?;
        self.take(FetchCount::All)
    }

    /// Up to `count` pending rows, as one batch.
    fn take(&mut self, count: FetchCount) -> Result<RecordBatch> {
        take_pending(&mut self.pending, &self.schema, count)
    }
}

/// Up to `count` rows from the front of `pending`, as one batch; a batch that straddles the
/// limit is split and its rest stays pending.
pub(crate) fn take_pending(
    pending: &mut VecDeque<RecordBatch>,
    schema: &SchemaRef,
    count: FetchCount,
) -> Result<RecordBatch> {
    let limit = match count {
        FetchCount::All => usize::MAX,
        FetchCount::Rows(n) => n,
    };
    let mut out = Vec::new();
    let mut taken = 0usize;
    while taken < limit {
        let Some(batch) = pending.pop_front() else { break };
        let room = limit - taken;
        if batch.num_rows() > room {
            out.push(batch.slice(0, room));
            pending.push_front(batch.slice(room, batch.num_rows() - room));
            taken += room;
        } else {
            taken += batch.num_rows();
            out.push(batch);
        }
    }
    datafusion::arrow::compute::concat_batches(schema, &out).map_err(internal)
}

fn internal(e: impl std::fmt::Display) -> ServerError {
    ServerError::new(SqlState::Internal, e.to_string())
}

/// Tells whether the client of a connection is still there while the server is only writing
/// to it (a subscription waiting for changes reads nothing from the socket).
#[derive(Debug, Default)]
pub struct ClientProbe {
    socket: Mutex<Option<std::net::TcpStream>>,
}

impl ClientProbe {
    pub fn new(socket: Option<std::net::TcpStream>) -> Self {
        Self { socket: Mutex::new(socket) }
    }

    /// True when the peer closed the connection (or sent only `Terminate`).
    pub fn client_gone(&self) -> bool {
        let guard = self.socket.lock();
        let Some(socket) = guard.as_ref() else { return false };
        let mut buf = [0u8; 5];
        match socket.peek(&mut buf) {
            Ok(0) => true,
            // A Terminate message: the client said goodbye.
            Ok(n) => n >= 1 && buf[0] == b'X',
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
            Err(_) => true,
        }
    }
}

/// A cursor declared in a session.
pub enum LiveCursor {
    Subscribe(Box<LiveSubscription>),
    Retained(Box<crate::retained::RetainedCursor>),
    Rows { schema: SchemaRef, rows: VecDeque<RecordBatch> },
}

impl LiveCursor {
    pub fn schema(&self) -> SchemaRef {
        match self {
            LiveCursor::Subscribe(s) => s.schema.clone(),
            LiveCursor::Retained(r) => r.schema(),
            LiveCursor::Rows { schema, .. } => schema.clone(),
        }
    }
}

/// Per-connection state of live results: the declared cursors and the client probe.
#[derive(Default)]
pub struct LiveState {
    cursors: Mutex<HashMap<String, Arc<tokio::sync::Mutex<LiveCursor>>>>,
    pub probe: ClientProbe,
}

impl std::fmt::Debug for LiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveState").finish_non_exhaustive()
    }
}

fn no_cursor(name: &str) -> ServerError {
    ServerError::new(SqlState::InvalidCursorName, format!("cursor \"{name}\" does not exist"))
}

impl LiveState {
    pub fn new(probe: ClientProbe) -> Self {
        Self { cursors: Mutex::new(HashMap::new()), probe }
    }

    /// # Errors
    /// When a cursor of that name exists.
    pub fn declare(&self, name: &str, cursor: LiveCursor) -> Result<()> {
        let mut cursors = self.cursors.lock();
        if cursors.contains_key(name) {
            return Err(ServerError::new(SqlState::DuplicateObject, format!("cursor \"{name}\" already exists")));
        }
        cursors.insert(name.to_string(), Arc::new(tokio::sync::Mutex::new(cursor)));
        Ok(())
    }

    /// Closes one cursor (its subscription ends) or all.
    ///
    /// # Errors
    /// When the named cursor does not exist.
    pub fn close(&self, name: Option<&str>) -> Result<()> {
        let mut cursors = self.cursors.lock();
        match name {
            None => {
                cursors.clear();
                Ok(())
            }
            Some(n) => cursors.remove(n).map(|_| ()).ok_or_else(|| no_cursor(n)),
        }
    }

    /// The result columns of `FETCH` from `name`, for `Describe`.
    pub async fn cursor_schema(&self, name: &str) -> Option<SchemaRef> {
        let cursor = self.cursors.lock().get(name).cloned()?;
        let cursor = cursor.lock().await;
        Some(cursor.schema())
    }

    /// Runs `FETCH`: pending rows at once; otherwise waits for the first change (until the
    /// timeout, if given) and returns it with whatever came with it.
    ///
    /// # Errors
    /// When the cursor does not exist or its subscription ended; the cursor is then closed.
    pub async fn fetch(&self, name: &str, count: FetchCount, timeout: Option<Duration>) -> Result<RecordBatch> {
        let cursor = self.cursors.lock().get(name).cloned().ok_or_else(|| no_cursor(name))?;
        let mut cursor = cursor.lock().await;
        match &mut *cursor {
            LiveCursor::Rows { schema, rows } => {
                let limit = match count {
                    FetchCount::All => usize::MAX,
                    FetchCount::Rows(n) => n,
                };
                let mut out = Vec::new();
                let mut taken = 0;
                while taken < limit {
                    let Some(batch) = rows.pop_front() else { break };
                    let room = limit - taken;
                    if batch.num_rows() > room {
                        out.push(batch.slice(0, room));
                        rows.push_front(batch.slice(room, batch.num_rows() - room));
                        taken += room;
                    } else {
                        taken += batch.num_rows();
                        out.push(batch);
                    }
                }
                datafusion::arrow::compute::concat_batches(schema, &out).map_err(internal)
            }
            LiveCursor::Retained(retained) => {
                let fetched = retained.fetch(count, timeout, &self.probe).await;
                if fetched.is_err() {
                    drop(cursor);
                    self.cursors.lock().remove(name);
                }
                fetched
            }
            LiveCursor::Subscribe(live) => {
                let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
                let waited = if count == FetchCount::Rows(0) { Ok(()) } else { live.wait(deadline, &self.probe).await };
                if let Err(e) = waited {
                    drop(cursor);
                    self.cursors.lock().remove(name);
                    return Err(e);
                }
                live.take(count)
            }
        }
    }
}

/// Text form of every column of `batch` for `COPY ... TO STDOUT`, as Postgres writes it.
pub fn text_columns(batch: &RecordBatch) -> Result<Vec<StringArray>> {
    batch
        .columns()
        .iter()
        .map(|c| {
            let text = crate::pg::text_column(c).map_err(internal)?;
            text.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| internal("column has no text form"))
        })
        .collect()
}

/// Appends `batch` as COPY text lines (tab-separated, `\N` for NULL) to `out`.
pub fn copy_text(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<()> {
    let columns = text_columns(batch)?;
    for row in 0..batch.num_rows() {
        for (i, c) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            if c.is_null(row) {
                out.extend_from_slice(b"\\N");
                continue;
            }
            for b in c.value(row).bytes() {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    other => out.push(other),
                }
            }
        }
        out.push(b'\n');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_live_statements() {
        let p = |s: &str| parse(s).expect("parses").expect("is live");
        assert_eq!(
            p("COPY (SUBSCRIBE revenue) TO STDOUT"),
            LiveStatement::CopySubscribe(SubscribeSpec { relation: "revenue".into(), snapshot: true, progress: false })
        );
        assert_eq!(
            p("subscribe to public.\"Rev\" with (snapshot = false, progress)"),
            LiveStatement::CopySubscribe(SubscribeSpec { relation: "Rev".into(), snapshot: false, progress: true })
        );
        assert_eq!(
            p("DECLARE c CURSOR FOR SUBSCRIBE v WITH (SNAPSHOT false)"),
            LiveStatement::DeclareSubscribe {
                cursor: "c".into(),
                spec: SubscribeSpec { relation: "v".into(), snapshot: false, progress: false }
            }
        );
        assert_eq!(
            p("FETCH ALL c WITH (timeout = '1s');"),
            LiveStatement::Fetch { cursor: "c".into(), count: FetchCount::All, timeout: Some(Duration::from_secs(1)) }
        );
        assert_eq!(
            p("FETCH FORWARD 2000 FROM \"srv\""),
            LiveStatement::Fetch { cursor: "srv".into(), count: FetchCount::Rows(2000), timeout: None }
        );
        assert_eq!(p("close all"), LiveStatement::Close { cursor: None });
        match p("DECLARE \"n\" CURSOR WITHOUT HOLD FOR SELECT a FROM t WHERE b = 'x'") {
            LiveStatement::DeclareQuery { cursor, query } => {
                assert_eq!(cursor, "n");
                assert!(query.starts_with("SELECT a FROM t"), "{query}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse("SELECT 1").expect("parses").is_none());
        assert!(parse("COPY t FROM STDIN").expect("parses").is_none());
        assert!(parse("SUBSCRIBE v WITH (colour = red)").is_err());
        assert!(parse("FETCH ALL c WITH (timeout = 'soon')").is_err());
        assert!(is_live("BEGIN; DECLARE c CURSOR FOR SUBSCRIBE v"));
        assert_eq!(
            p("CREATE SUBSCRIPTION s FROM v WITH (retention = '1h')"),
            LiveStatement::CreateSubscription {
                name: "s".into(),
                relation: "v".into(),
                retention: Duration::from_secs(3600)
            }
        );
        assert_eq!(
            p("DECLARE c SUBSCRIPTION CURSOR FOR s SINCE 1732290000123"),
            LiveStatement::DeclareSubscriptionCursor {
                cursor: "c".into(),
                subscription: "s".into(),
                start: CursorStart::Since(1732290000123)
            }
        );
        assert_eq!(
            p("drop subscription if exists s"),
            LiveStatement::DropSubscription { name: "s".into(), if_exists: true }
        );
        assert!(!is_live("CREATE TABLE subscription (a INT)"));
        assert!(!is_live("SELECT 'subscribe'"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").expect("1s"), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").expect("ms"), Duration::from_millis(250));
        assert_eq!(parse_duration("2 minutes").expect("min"), Duration::from_secs(120));
        assert_eq!(parse_duration("0").expect("0"), Duration::ZERO);
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn copy_text_escapes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
            Field::new("c", DataType::Boolean, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("x\ty\\"), Some("z")])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false)])),
            ],
        )
        .expect("batch");
        let mut out = Vec::new();
        copy_text(&batch, &mut out).expect("text");
        assert_eq!(String::from_utf8(out).expect("utf8"), "1\tx\\ty\\\\\tt\n\\N\tz\tf\n");
    }
}
