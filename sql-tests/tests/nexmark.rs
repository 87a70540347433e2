//! Nexmark queries on a bounded generator run, checked against a batch oracle.
//!
//! Each query of `benches/nexmark` runs as a materialized view over the `bid` source (two
//! parallel splits). The same generator also fills a table `bid_t`; the oracle is the same
//! query run as a batch over that table. `EMIT ON WINDOW CLOSE` views hold only the windows
//! the final watermark closed, so their oracle keeps only those.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use eddy_sql_tests::TestServer;
use tokio_postgres::{Client, SimpleQueryMessage};

const EVENTS: u64 = 150_000;

fn rows(messages: Vec<SimpleQueryMessage>) -> Vec<String> {
    let mut out: Vec<String> = messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| normalize(r.get(i))).collect::<Vec<_>>().join(" | "))
            }
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn normalize(v: Option<&str>) -> String {
    match v {
        None => "NULL".into(),
        Some(s) if s.contains('.') => match s.parse::<f64>() {
            Ok(f) => format!("{:.6e}", f),
            Err(_) => s.to_string(),
        },
        Some(s) => s.to_string(),
    }
}

async fn wait_finished(client: &Client, job: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let r = client
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT finished), count(*) FROM eddy_catalog.source_splits WHERE job = $1",
                &[&job],
            )
            .await?;
        let (open, all): (i64, i64) = (r.get(0), r.get(1));
        if all > 0 && open == 0 {
            client.batch_execute("FLUSH").await?;
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{job} did not finish reading its source");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_queries_match_batch_oracle() -> Result<()> {
    let server = TestServer::start()?;
    let client = server.connect().await?;
    let bid_columns =
        "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, date_time TIMESTAMP, extra VARCHAR";
    let person_columns = "id BIGINT, name VARCHAR, email_address VARCHAR, credit_card VARCHAR, city VARCHAR, \
                          state VARCHAR, date_time TIMESTAMP, extra VARCHAR";
    let auction_columns = "id BIGINT, item_name VARCHAR, description VARCHAR, initial_bid BIGINT, reserve BIGINT, \
                           date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra VARCHAR";
    let options = |kind: &str, splits: usize| {
        format!(
            "connector = 'nexmark', nexmark.table.type = '{kind}', nexmark.split.num = '{splits}', \
             nexmark.min.event.gap.in.ns = '0', nexmark.event.num = '{EVENTS}'"
        )
    };
    client
        .batch_execute(&format!(
            "CREATE SOURCE bid ({bid_columns}, p_time TIMESTAMPTZ AS PROCTIME(),
                              WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH ({});
             CREATE SOURCE person ({person_columns}, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH ({});
             CREATE SOURCE auction ({auction_columns}, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH ({});
             CREATE TABLE bid_t ({bid_columns}) WITH ({});
             CREATE TABLE person_t ({person_columns}) WITH ({});
             CREATE TABLE auction_t ({auction_columns}) WITH ({});
             CREATE TABLE side_input (key BIGINT PRIMARY KEY, value VARCHAR);
             INSERT INTO side_input SELECT v, 'value-' || v FROM generate_series(0, 9999) AS s(v);",
            options("Bid", 2),
            options("Person", 2),
            options("Auction", 2),
            options("Bid", 1),
            options("Person", 1),
            options("Auction", 1),
        ))
        .await?;
    for table in ["bid_t", "person_t", "auction_t"] {
        wait_finished(&client, table).await?;
    }
    let total: i64 = client.query_one("SELECT count(*) FROM bid_t", &[]).await?.get(0);
    assert_eq!(total as u64, EVENTS * 46 / 50);
    let streams =
        |sql: &str| sql.replace("${BID}", "bid").replace("${PERSON}", "person").replace("${AUCTION}", "auction");
    let tables =
        |sql: &str| sql.replace("${BID}", "bid_t").replace("${PERSON}", "person_t").replace("${AUCTION}", "auction_t");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/nexmark");
    let mut names: Vec<_> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.to_string_lossy();
            p.extension().is_some_and(|e| e == "sql") && !name.ends_with(".oracle.sql") && !name.ends_with(".check.sql")
        })
        .collect();
    names.sort();
    let mut failures = Vec::new();
    for path in names {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("q").to_string();
        let text = std::fs::read_to_string(&path)?;
        let body: String = text.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
        let eowc = body.contains("EMIT ON WINDOW CLOSE");
        client.batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {}", streams(&body))).await?;
        wait_finished(&client, &name).await?;
        if body.contains("p_time") {
            // Processing time differs run to run; every bid must still be counted once.
            let counted: i64 =
                client.query_one(&format!("SELECT sum(bid_count)::BIGINT FROM {name}"), &[]).await?.get(0);
            assert_eq!(counted, total, "{name} counted {counted} of {total} bids");
            eprintln!("{name}: counts all {total} bids");
            client.batch_execute(&format!("DROP MATERIALIZED VIEW {name}")).await?;
            continue;
        }
        // Queries whose ties make the pick arbitrary compare through a projection every pick shares.
        let check = std::fs::read_to_string(path.with_extension("check.sql"))
            .ok()
            .map(|t| t.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n"));
        let read = |relation: &str| match &check {
            Some(c) => c.replace("${RESULT}", relation),
            None => format!("SELECT * FROM {relation}"),
        };
        let incremental = rows(client.simple_query(&read(&name)).await?);
        // A query whose windows a batch query cannot express brings its own oracle.
        let oracle = path.with_extension("oracle.sql");
        let batch_body = match std::fs::read_to_string(&oracle) {
            Ok(t) => t.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n"),
            Err(_) => body.clone(),
        };
        let mut batch_sql = tables(&batch_body).replace("EMIT ON WINDOW CLOSE", "");
        if eowc {
            batch_sql = format!(
                "SELECT * FROM ({batch_sql}) q WHERE window_end <= (SELECT max(date_time) - INTERVAL '4' SECOND FROM bid_t)"
            );
        }
        let batch = rows(client.simple_query(&read(&format!("({batch_sql}) batch_result"))).await?);
        if incremental != batch {
            let only_view: Vec<_> = incremental.iter().filter(|r| !batch.contains(r)).take(5).collect();
            let only_batch: Vec<_> = batch.iter().filter(|r| !incremental.contains(r)).take(5).collect();
            failures.push(format!(
                "{name}: view has {} rows, batch {}\n  only in view: {only_view:?}\n  only in batch: {only_batch:?}",
                incremental.len(),
                batch.len()
            ));
        } else {
            eprintln!("{name}: {} rows match", batch.len());
        }
        client.batch_execute(&format!("DROP MATERIALIZED VIEW {name}")).await?;
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// HOP aggregates with combinable calls aggregate per pane, then per window; others keep one
/// row copy per window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_aggregates_use_panes_when_partials_combine() -> Result<()> {
    let server = TestServer::start()?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE ev (k INT, v INT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) APPEND ONLY",
        )
        .await?;
    let explain = |sql: &'static str| {
        let client = &client;
        async move {
            let lines = client.simple_query(&format!("EXPLAIN CREATE MATERIALIZED VIEW x AS {sql}")).await?;
            let text: Vec<String> = lines
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect();
            Ok::<String, anyhow::Error>(text.join("\n"))
        }
    };
    let combinable = explain(
        "SELECT k, window_start, count(*), sum(v), max(v) FROM HOP(ev, ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND) \
         GROUP BY k, window_start",
    )
    .await?;
    assert!(combinable.contains("hop_panes"), "{combinable}");
    assert_eq!(combinable.matches("HashAgg").count(), 2, "{combinable}");
    let holistic =
        explain("SELECT k, window_start, avg(v) FROM HOP(ev, ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY k, window_start")
            .await?;
    assert!(!holistic.contains("hop_panes"), "{holistic}");
    assert_eq!(holistic.matches("HashAgg").count(), 1, "{holistic}");
    Ok(())
}
