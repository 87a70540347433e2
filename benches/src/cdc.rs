//! `eddy-bench cdc`: Postgres change data capture end to end.
//!
//! Needs the local Postgres with `wal_level=logical` (`scripts/setup-cdc-upstreams.sh`).
//! Measures, into a view over a `postgres-cdc` table:
//! - snapshot throughput: rows already upstream when the table is created, until all are
//!   visible in the view;
//! - streaming throughput: rows inserted upstream in transactions of `batch` rows, from the
//!   first insert until the view shows them all;
//! - latency: single-row transactions, each timed from its commit upstream until the view
//!   shows it (polled every millisecond).
//!
//! With `--tables N` the rows are spread by id over N upstream tables read `FROM` one source,
//! so all of them stream through one replication slot; each has its own view, and the figures
//! are over all of them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_postgres::{Client, NoTls};

use crate::{ServeOptions, Server, percentile};

const DATABASE: &str = "eddy_cdc_bench";

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Rows and the largest id over the views of all `tables`.
async fn count(eddy: &Client, tables: usize) -> Result<(i64, i64)> {
    let parts: Vec<String> = (0..tables).map(|t| format!("SELECT n, top FROM bench_counts_{t}")).collect();
    let sql = format!(
        "SELECT CAST(sum(n) AS BIGINT), CAST(max(top) AS BIGINT) FROM ({}) AS all_views",
        parts.join(" UNION ALL ")
    );
    let row = eddy.query_one(sql.as_str(), &[]).await?;
    Ok((row.get::<_, Option<i64>>(0).unwrap_or(0), row.get::<_, Option<i64>>(1).unwrap_or(0)))
}

async fn wait_for_count(eddy: &Client, tables: usize, n: i64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if count(eddy, tables).await.map(|(c, _)| c >= n).unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the view did not reach {n} rows within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the benchmark; `upstream` is a libpq-style connection string without `dbname`.
pub async fn run(
    upstream: String,
    rows: i64,
    batch: i64,
    samples: usize,
    barrier_ms: u64,
    tables: usize,
) -> Result<()> {
    let admin = connect(&format!("{upstream} dbname=postgres")).await.context("connecting to upstream Postgres")?;
    admin
        .batch_execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'eddy_bench' AND NOT active",
        )
        .await?;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).await?;
    admin.batch_execute(&format!("CREATE DATABASE {DATABASE}")).await?;
    let up = connect(&format!("{upstream} dbname={DATABASE}")).await?;
    let n = tables as i64;
    for t in 0..tables {
        up.batch_execute(&format!(
            "CREATE TABLE bench_events_{t} (id BIGINT PRIMARY KEY, k INT NOT NULL, v BIGINT NOT NULL, note TEXT);
             INSERT INTO bench_events_{t} SELECT i, i % 1000, i, 'snapshot row ' || i
               FROM generate_series(1, {rows}) i WHERE i % {n} = {t};"
        ))
        .await?;
    }

    let server = Server::start_with(ServeOptions { barrier_ms, checkpoint_ms: 1000, memory_limit: None })?;
    let eddy = server.connect().await?;
    let host = upstream_param(&upstream, "host").unwrap_or("127.0.0.1");
    let port = upstream_param(&upstream, "port").unwrap_or("5432");
    let user = upstream_param(&upstream, "user").unwrap_or("postgres");
    let started = Instant::now();
    eddy.batch_execute(&format!(
        "CREATE SOURCE pg WITH (connector = 'postgres-cdc', hostname = '{host}', port = '{port}', username = '{user}',
           database.name = '{DATABASE}', slot.name = 'eddy_bench')"
    ))
    .await?;
    for t in 0..tables {
        eddy.batch_execute(&format!(
            "CREATE TABLE bench_events_{t} (id BIGINT PRIMARY KEY, k INT NOT NULL, v BIGINT NOT NULL, note VARCHAR)
               FROM pg TABLE 'public.bench_events_{t}';
             CREATE MATERIALIZED VIEW bench_counts_{t} AS
               SELECT count(*) AS n, coalesce(max(id), 0) AS top FROM bench_events_{t};"
        ))
        .await?;
    }
    wait_for_count(&eddy, tables, rows, Duration::from_secs(600)).await?;
    let snapshot = started.elapsed();
    println!(
        "cdc snapshot ({tables} table(s), one slot): {rows} rows visible in the views after {:.2} s = {:.0} rows/s",
        snapshot.as_secs_f64(),
        rows as f64 / snapshot.as_secs_f64()
    );

    let started = Instant::now();
    let mut next = rows + 1;
    while next <= 2 * rows {
        let last = (next + batch - 1).min(2 * rows);
        let inserts: Vec<String> = (0..tables)
            .map(|t| {
                format!(
                    "INSERT INTO bench_events_{t} SELECT i, i % 1000, i, 'streamed row ' || i
                       FROM generate_series({next}, {last}) i WHERE i % {n} = {t};"
                )
            })
            .collect();
        up.batch_execute(&format!("BEGIN; {} COMMIT;", inserts.join(" "))).await?;
        next = last + 1;
    }
    let written = started.elapsed();
    wait_for_count(&eddy, tables, 2 * rows, Duration::from_secs(600)).await?;
    let streamed = started.elapsed();
    println!(
        "cdc stream: {rows} rows in transactions of {batch}: written upstream in {:.2} s, visible in the view after {:.2} s = {:.0} rows/s",
        written.as_secs_f64(),
        streamed.as_secs_f64(),
        rows as f64 / streamed.as_secs_f64()
    );

    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples as i64 {
        let id = 10 * rows + i;
        let t = id % n;
        up.batch_execute(&format!("INSERT INTO bench_events_{t} VALUES ({id}, 1, 1, 'latency')")).await?;
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(30);
        loop {
            if count(&eddy, tables).await?.1 >= id {
                latencies.push(committed.elapsed());
                break;
            }
            if Instant::now() > deadline {
                bail!("row {id} did not reach the view within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    latencies.sort();
    println!(
        "cdc latency (commit upstream -> visible in view, {samples} single-row transactions, barrier {barrier_ms} ms): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.9).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    eddy.batch_execute("DROP SOURCE pg CASCADE").await?;
    drop(server);
    Ok(())
}

fn upstream_param<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    url.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}
