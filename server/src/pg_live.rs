//! Running live-result statements (`SUBSCRIBE`, cursors, `FETCH`) on a pgwire connection.
//!
//! `COPY (SUBSCRIBE ...) TO STDOUT` writes to the client directly: each row is its own
//! `CopyData` message, flushed as soon as its epoch commits, and the copy only ends with an
//! error (the client cancelled or went away, the relation was dropped, the client fell behind).

use std::fmt::Debug;
use std::sync::Arc;

use bytes::Bytes;
use eddy_common::SqlState;
use futures::{Sink, SinkExt};
use pgwire::api::ClientInfo;
use pgwire::api::portal::Format;
use pgwire::api::results::{Response, Tag};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyOutResponse};

use crate::engine::Engine;
use crate::error::{ServerError, to_pg_error};
use crate::live::{LiveCursor, LiveState, LiveStatement, LiveSubscription, copy_text};
use crate::session::{Session, StatementResult};

/// The connection's live state (cursors, client probe), created on first use when the
/// startup handler did not add one.
pub fn live_state_of<C: ClientInfo>(client: &C) -> Arc<LiveState> {
    match client.session_extensions().get::<Arc<LiveState>>() {
        Some(s) => s.as_ref().clone(),
        None => {
            let s = Arc::new(LiveState::default());
            client.session_extensions().insert::<Arc<LiveState>>(s.clone());
            s
        }
    }
}

/// The columns `FETCH` from a cursor returns, for `Describe`.
pub async fn fetch_schema<C: ClientInfo>(
    client: &C,
    statement: &LiveStatement,
) -> Option<datafusion::arrow::datatypes::SchemaRef> {
    let LiveStatement::Fetch { cursor, .. } = statement else { return None };
    live_state_of(client).cursor_schema(cursor).await
}

/// Runs one live statement. `sql` is the text errors point into.
///
/// # Errors
/// As a Postgres error: unknown relations and cursors, ended subscriptions.
pub async fn run<C>(
    engine: &Arc<Engine>,
    session: &Arc<Session>,
    client: &mut C,
    statement: &LiveStatement,
    format: &Format,
    sql: &str,
) -> PgWireResult<Response>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let state = live_state_of(client);
    let err = |e: ServerError| to_pg_error(&e, sql);
    match statement {
        LiveStatement::CopySubscribe(spec) => {
            let live = LiveSubscription::open(engine, spec).await.map_err(err)?;
            copy_out(client, live, &state).await
        }
        LiveStatement::DeclareSubscribe { cursor, spec } => {
            let live = LiveSubscription::open(engine, spec).await.map_err(err)?;
            state.declare(cursor, LiveCursor::Subscribe(Box::new(live))).map_err(err)?;
            Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
        }
        LiveStatement::CreateSubscription { name, relation, retention } => {
            crate::retained::create(engine, name, relation, *retention).await.map_err(err)?;
            Ok(Response::Execution(Tag::new("CREATE_SUBSCRIPTION")))
        }
        LiveStatement::DropSubscription { name, if_exists } => {
            crate::retained::drop_subscription(name, *if_exists).map_err(err)?;
            Ok(Response::Execution(Tag::new("DROP_SUBSCRIPTION")))
        }
        LiveStatement::DeclareSubscriptionCursor { cursor, subscription, start } => {
            let log = crate::retained::get(subscription).map_err(err)?;
            let declared = match start {
                crate::live::CursorStart::Full => {
                    let spec =
                        crate::live::SubscribeSpec { relation: log.relation.clone(), snapshot: true, progress: false };
                    LiveCursor::Subscribe(Box::new(LiveSubscription::open(engine, &spec).await.map_err(err)?))
                }
                crate::live::CursorStart::Now => {
                    LiveCursor::Retained(Box::new(crate::retained::RetainedCursor::new(log, vec![])))
                }
                crate::live::CursorStart::Since(t) => {
                    let initial = log.since(*t).map_err(err)?;
                    LiveCursor::Retained(Box::new(crate::retained::RetainedCursor::new(log, initial)))
                }
            };
            state.declare(cursor, declared).map_err(err)?;
            Ok(Response::Execution(Tag::new("DECLARE SUBSCRIPTION CURSOR")))
        }
        LiveStatement::DeclareQuery { cursor, query } => {
            let mut statements = crate::pg::parse(query).map_err(err)?;
            let is_query = statements.len() == 1
                && matches!(&statements[0].statement, eddy_planner::parser::EddyStatement::Sql(s)
                    if matches!(s.as_ref(), sqlparser::ast::Statement::Query(_)));
            if !is_query {
                return Err(err(ServerError::new(
                    SqlState::SyntaxError,
                    "DECLARE ... CURSOR FOR takes a SELECT or a SUBSCRIBE",
                )));
            }
            let parsed = statements.remove(0);
            let StatementResult::Rows { schema, batches } =
                session.execute(engine, &parsed, None).await.map_err(err)?
            else {
                return Err(err(ServerError::new(SqlState::Internal, "the cursor's query returned no rows")));
            };
            state.declare(cursor, LiveCursor::Rows { schema, rows: batches.into() }).map_err(err)?;
            Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
        }
        LiveStatement::Fetch { cursor, count, timeout } => {
            let batch = state.fetch(cursor, *count, *timeout).await.map_err(err)?;
            let schema = batch.schema();
            let mut response = crate::pg::encode_batches(&schema, vec![batch], format)?;
            response.command_tag = "FETCH".to_string();
            Ok(Response::Query(response))
        }
        LiveStatement::User(user) => {
            let tag = engine.users.execute(engine, user).await.map_err(err)?;
            Ok(Response::Execution(Tag::new(tag)))
        }
        LiveStatement::Close { cursor } => {
            state.close(cursor.as_deref()).map_err(err)?;
            Ok(Response::Execution(Tag::new(if cursor.is_some() { "CLOSE CURSOR" } else { "CLOSE CURSOR ALL" })))
        }
    }
}

/// Streams a subscription as `COPY` text rows; returns only with the error that ended it.
async fn copy_out<C>(client: &mut C, mut live: LiveSubscription, state: &LiveState) -> PgWireResult<Response>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let columns = live.schema().fields().len();
    client
        .send(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(0, columns as i16, vec![0; columns])))
        .await?;
    loop {
        let batch = match live.next_rows(&state.probe).await {
            Ok(b) => b,
            Err(e) => return Err(to_pg_error(&e, "")),
        };
        // One message per row: clients such as psycopg read a row per CopyData.
        let mut text = Vec::new();
        copy_text(&batch, &mut text).map_err(|e| to_pg_error(&e, ""))?;
        for line in text.split_inclusive(|b| *b == b'\n') {
            client.feed(PgWireBackendMessage::CopyData(CopyData::new(Bytes::copy_from_slice(line)))).await?;
        }
        client.flush().await?;
    }
}
