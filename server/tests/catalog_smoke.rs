use std::time::Duration;

use datafusion::prelude::DataFrame;
use eddy_server::{Engine, EngineConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_namespace_reads() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::start(EngineConfig {
        data_dir: dir.path().to_path_buf(),
        barrier_interval: Duration::from_millis(100),
        checkpoint_interval: Duration::from_millis(1000),
        verify_data_dir: false,
        memory_limit: None,
        parallelism: 2,
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let state = engine.state(None);
    let stmt = sqlparser::parser::Parser::parse_sql(
        &sqlparser::dialect::PostgreSqlDialect {},
        "select nspname from pg_catalog.pg_namespace",
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .remove(0);
    eprintln!("planning");
    let plan = engine.plan(&state, &stmt).await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("planned");
    let out = tokio::time::timeout(Duration::from_secs(5), DataFrame::new(state, plan).collect()).await;
    eprintln!("{out:?}");
    assert!(out.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_namespace_through_session() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::start(EngineConfig {
        data_dir: dir.path().to_path_buf(),
        barrier_interval: Duration::from_millis(100),
        checkpoint_interval: Duration::from_millis(1000),
        verify_data_dir: false,
        memory_limit: None,
        parallelism: 2,
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let session = eddy_server::session::Session::new("t");
    let rewriter = datafusion_pg_catalog::sql::PostgresCompatibilityParser::new();
    let stmts = rewriter.parse("select nspname from pg_catalog.pg_namespace").unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", stmts[0]);
    let parsed = eddy_planner::parser::ParsedStatement {
        text: stmts[0].to_string(),
        statement: eddy_planner::parser::EddyStatement::Sql(Box::new(stmts[0].clone())),
    };
    let out = tokio::time::timeout(Duration::from_secs(5), session.execute(&engine, &parsed, None)).await;
    eprintln!("{out:?}");
    assert!(out.is_ok());
}
