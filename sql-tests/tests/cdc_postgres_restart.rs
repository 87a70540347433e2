//! `postgres-cdc` across a restart of the upstream Postgres itself. Its own test binary, so
//! the restart cannot disturb the other CDC tests (test binaries run one after another).
//! Restarts the local cluster with `pg_ctlcluster`, as `scripts/setup-cdc-upstreams.sh` does.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eddy_sql_tests::TestServer;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const UPSTREAM: &str = "host=127.0.0.1 port=5432 user=postgres";

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.with_context(|| format!("running {sql}"))? {
        if let SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect());
        }
    }
    out.sort();
    Ok(out)
}

fn restart_postgres() -> Result<()> {
    let versions = std::fs::read_dir("/etc/postgresql").context("no /etc/postgresql")?;
    let mut versions: Vec<u32> =
        versions.flatten().filter_map(|e| e.file_name().to_str().and_then(|v| v.parse().ok())).collect();
    versions.sort();
    let version = versions.last().context("no Postgres cluster")?.to_string();
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .context("running pg_ctlcluster")?;
    if !status.success() {
        bail!("pg_ctlcluster restart failed with {status}");
    }
    Ok(())
}

async fn upstream_up(url: &str) -> Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_is_followed_without_loss() -> Result<()> {
    let db = "eddy_cdc_upstream_restart";
    let admin = connect(&format!("{UPSTREAM} dbname=postgres")).await?;
    admin
        .simple_query(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{db}' AND NOT active"
        ))
        .await?;
    admin.simple_query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await?;
    admin.simple_query(&format!("CREATE DATABASE {db}")).await?;
    let url = format!("{UPSTREAM} dbname={db}");
    let up = connect(&url).await?;
    up.batch_execute(
        "CREATE TABLE r (id INT PRIMARY KEY, v INT); INSERT INTO r SELECT i, i FROM generate_series(1, 500) i;",
    )
    .await?;
    let server = TestServer::start_with(&["--barrier-interval-ms", "50", "--checkpoint-interval-ms", "200"])?;
    let eddy = server.connect().await?;
    eddy.batch_execute(&format!(
        "CREATE TABLE r (id INT PRIMARY KEY, v INT) WITH (connector = 'postgres-cdc', hostname = '127.0.0.1',
           port = '5432', username = 'postgres', database.name = '{db}', slot.name = 'eddy_upstream_restart',
           table.name = 'r');
         CREATE MATERIALIZED VIEW s AS SELECT count(*) AS n, sum(v) AS total FROM r;"
    ))
    .await?;
    up.batch_execute("UPDATE r SET v = v * 2 WHERE id % 3 = 0; DELETE FROM r WHERE id % 10 = 0;").await?;
    drop(up);

    restart_postgres()?;
    let up = upstream_up(&url).await?;
    up.batch_execute("INSERT INTO r SELECT i, i FROM generate_series(1000, 1200) i; UPDATE r SET v = 0 WHERE id < 50;")
        .await?;

    let query = "SELECT id, v FROM r";
    let view = "SELECT count(*) AS n, sum(v) AS total FROM r";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let expected = (rows(&up, query).await?, rows(&up, view).await?);
        let actual = (rows(&eddy, query).await?, rows(&eddy, "SELECT n, total FROM s").await?);
        if actual == expected {
            break;
        }
        if Instant::now() > deadline {
            bail!("Eddy did not catch up after the upstream restart: view {:?} vs upstream {:?}", actual.1, expected.1);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let progress = rows(&eddy, "SELECT phase, healthy FROM eddy_catalog.cdc_progress").await?;
    assert_eq!(progress, vec![vec!["streaming".to_string(), "t".to_string()]]);
    eddy.batch_execute("DROP MATERIALIZED VIEW s; DROP TABLE r").await?;
    Ok(())
}
