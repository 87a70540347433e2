//! The sqllogictest driver: runs statements over pgwire's simple query protocol, as psql does,
//! and reports errors as `SQLSTATE: message` so test files can match either.

use std::time::Duration;

use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType};
use tokio_postgres::{Client, SimpleQueryMessage};

pub struct EddyDb {
    pub client: Client,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DbError(String);

impl DbError {
    pub fn new(message: String) -> Self {
        Self(message)
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for EddyDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let messages = self.client.simple_query(sql).await.map_err(|e| match e.as_db_error() {
            Some(db) => DbError(format!("{}: {}", db.code().code(), db.message())),
            None => DbError(e.to_string()),
        })?;
        let mut rows = Vec::new();
        let mut columns = 0;
        let mut affected = None;
        for m in messages {
            match m {
                SimpleQueryMessage::Row(row) => {
                    columns = row.len();
                    rows.push((0..row.len()).map(|i| crate::cell_text(row.get(i))).collect::<Vec<_>>());
                }
                SimpleQueryMessage::RowDescription(desc) => columns = desc.len(),
                SimpleQueryMessage::CommandComplete(n) => affected = Some(n),
                _ => {}
            }
        }
        let is_query = columns > 0 || !rows.is_empty();
        if is_query {
            Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; columns], rows })
        } else {
            Ok(DBOutput::StatementComplete(affected.unwrap_or(0)))
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "eddy"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}
