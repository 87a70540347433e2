//! Live results through the real binary: `SUBSCRIBE` over `DECLARE`/`FETCH` (tokio-postgres,
//! psycopg 3) and `COPY (SUBSCRIBE ...) TO STDOUT` (psql); the subscription's rows, applied to
//! its snapshot, must equal a fresh `SELECT` of the view after every change.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eddy_sql_tests::TestServer;
use tokio_postgres::{Client, SimpleQueryMessage};

async fn seed(client: &Client) -> Result<()> {
    client
        .batch_execute(
            "CREATE TABLE orders (id INT PRIMARY KEY, customer INT, amount NUMERIC, status VARCHAR);
             CREATE MATERIALIZED VIEW revenue AS
               SELECT customer, count(*) AS n, sum(amount) AS total
               FROM orders WHERE status <> 'cancelled' GROUP BY customer;
             INSERT INTO orders VALUES (1, 7, 10.5, 'paid'), (2, 7, 3, 'paid');",
        )
        .await?;
    Ok(())
}

/// Text rows of a simple query.
async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect()),
            _ => None,
        })
        .collect())
}

/// A multiset of rows, as a subscription's diffs build it.
type Multiset = BTreeMap<Vec<String>, i64>;

fn apply(state: &mut Multiset, changes: &[Vec<String>]) -> Result<()> {
    for row in changes {
        let diff: i64 = row.get(1).context("diff column")?.parse()?;
        let key = row[2..].to_vec();
        let e = state.entry(key.clone()).or_insert(0);
        *e += diff;
        if *e < 0 {
            bail!("row {key:?} went below zero copies");
        }
        if *e == 0 {
            state.remove(&key);
        }
    }
    Ok(())
}

async fn view_contents(client: &Client) -> Result<Multiset> {
    let mut m = Multiset::new();
    for r in rows(client, "SELECT customer, n, total FROM revenue").await? {
        *m.entry(r).or_insert(0) += 1;
    }
    Ok(m)
}

/// Fetches until at least `want` rows arrived (or 20 s passed).
async fn fetch_rows(client: &Client, want: usize) -> Result<Vec<Vec<String>>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        out.extend(rows(client, "FETCH ALL c WITH (timeout = '1s')").await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_cursor_follows_the_view() -> Result<()> {
    let server = TestServer::start()?;
    let writer = server.connect().await?;
    seed(&writer).await?;
    let reader = server.connect().await?;
    reader.batch_execute("DECLARE c CURSOR FOR SUBSCRIBE revenue").await?;
    let snapshot = fetch_rows(&reader, 1).await?;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(&snapshot[0][1..], &["1", "7", "2", "13.5"]);
    let start_ts: i64 = snapshot[0][0].parse()?;
    let mut state = Multiset::new();
    apply(&mut state, &snapshot)?;

    // An update of the group: one -old/+new pair with one timestamp.
    writer.batch_execute("INSERT INTO orders VALUES (3, 7, 6.5, 'paid')").await?;
    let changes = fetch_rows(&reader, 2).await?;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(&changes[0][1..], &["-1", "7", "2", "13.5"]);
    assert_eq!(&changes[1][1..], &["1", "7", "3", "20"]);
    assert_eq!(changes[0][0], changes[1][0]);
    assert!(changes[0][0].parse::<i64>()? >= start_ts);
    apply(&mut state, &changes)?;
    assert_eq!(state, view_contents(&writer).await?);

    // Nothing pending: a zero timeout returns at once with no rows.
    let started = Instant::now();
    assert!(rows(&reader, "FETCH ALL c WITH (timeout = '0s')").await?.is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));

    // More changes: new groups, deletes, updates within one statement; the fold still equals
    // the view after each.
    let statements = [
        "INSERT INTO orders VALUES (4, 8, 1, 'paid'), (5, 9, 2, 'paid'), (6, 8, 4, 'paid')",
        "UPDATE orders SET status = 'cancelled' WHERE customer = 7",
        "DELETE FROM orders WHERE id = 5",
        "UPDATE orders SET amount = amount * 2",
    ];
    for sql in statements {
        writer.batch_execute(sql).await?;
        let expected = view_contents(&writer).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while state != expected && Instant::now() < deadline {
            apply(&mut state, &rows(&reader, "FETCH ALL c WITH (timeout = '500ms')").await?)?;
        }
        assert_eq!(state, expected, "after {sql}");
    }

    // FETCH n takes at most n rows; the rest stay pending.
    writer.batch_execute("INSERT INTO orders VALUES (20, 30, 1, 'paid'), (21, 31, 1, 'paid')").await?;
    let mut first = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.is_empty() && Instant::now() < deadline {
        first = rows(&reader, "FETCH 1 c WITH (timeout = '1s')").await?;
    }
    assert_eq!(first.len(), 1);
    let second = rows(&reader, "FETCH 1 c WITH (timeout = '1s')").await?;
    assert_eq!(second.len(), 1);
    assert_ne!(first[0][2], second[0][2]);

    let n = rows(&writer, "SELECT subscribers FROM eddy_catalog.subscriptions WHERE relation = 'revenue'").await?;
    assert_eq!(n, vec![vec!["1".to_string()]]);

    // Dropping the view ends the subscription with an error.
    writer.batch_execute("DROP MATERIALIZED VIEW revenue").await?;
    let err = reader.simple_query("FETCH ALL c WITH (timeout = '5s')").await.err().context("expected an error")?;
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42P01"), "{err}");
    let err = reader.simple_query("FETCH ALL c").await.err().context("cursor is gone")?;
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("34000"), "{err}");
    let err = reader.simple_query("DECLARE d CURSOR FOR SUBSCRIBE nope").await.err().context("unknown view")?;
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42P01"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_options_and_disconnects() -> Result<()> {
    let server = TestServer::start_with(&["--barrier-interval-ms", "100"])?;
    let writer = server.connect().await?;
    seed(&writer).await?;

    // SNAPSHOT = false: only changes. PROGRESS: progress rows between them.
    let reader = server.connect().await?;
    reader.batch_execute("DECLARE c CURSOR FOR SUBSCRIBE revenue WITH (SNAPSHOT = false, PROGRESS = true)").await?;
    let first = fetch_rows(&reader, 1).await?;
    assert!(first.iter().all(|r| r[1] == "t" && r[2] == "NULL"), "only progress rows expected: {first:?}");
    writer.batch_execute("INSERT INTO orders VALUES (3, 8, 1, 'paid')").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut data = Vec::new();
    while data.is_empty() && Instant::now() < deadline {
        data = fetch_rows(&reader, 1).await?.into_iter().filter(|r| r[1] == "f").collect();
    }
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(&data[0][2..], &["1", "8", "1", "1"]);

    // A client that goes away mid-FETCH frees its subscription.
    let gone = server.connect().await?;
    gone.batch_execute("DECLARE c CURSOR FOR SUBSCRIBE revenue").await?;
    let count = || async {
        let r = rows(&writer, "SELECT coalesce(sum(subscribers), 0) FROM eddy_catalog.subscriptions").await?;
        anyhow::Ok(r[0][0].clone())
    };
    assert_eq!(count().await?, "2");
    let waiting = tokio::spawn(async move {
        let _ = gone.simple_query("FETCH ALL c").await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting.abort();
    let _ = waiting.await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while count().await? != "1" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count().await?, "1");
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count().await? != "0" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count().await?, "0");
    Ok(())
}

/// The psql session: `COPY (SUBSCRIBE revenue) TO STDOUT` prints the current rows,
/// then each change as it happens; killing psql frees the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_subscribe() -> Result<()> {
    let server = TestServer::start()?;
    let writer = server.connect().await?;
    seed(&writer).await?;
    let mut psql = Command::new("stdbuf")
        .args(["-oL", "psql", "-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "root", "-d", "dev", "-X"])
        .args(["-c", "COPY (SUBSCRIBE revenue) TO STDOUT"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running psql")?;
    let stdout = psql.stdout.take().context("psql stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Result<Vec<String>> {
        let line = rx.recv_timeout(Duration::from_secs(20)).with_context(|| format!("waiting for {what}"))?;
        Ok(line.split('\t').map(str::to_string).collect())
    };
    let snapshot = next("the snapshot row")?;
    assert_eq!(&snapshot[1..], &["1", "7", "2", "13.5"], "{snapshot:?}");
    writer.batch_execute("UPDATE orders SET amount = 20 WHERE id = 2").await?;
    let old = next("the retraction")?;
    let new = next("the new row")?;
    assert_eq!(&old[1..], &["-1", "7", "2", "13.5"]);
    assert_eq!(&new[1..], &["1", "7", "2", "30.5"]);
    assert_eq!(old[0], new[0]);
    assert!(new[0].parse::<i64>()? >= snapshot[0].parse::<i64>()?);

    let count = || async {
        let r = rows(&writer, "SELECT coalesce(sum(subscribers), 0) FROM eddy_catalog.subscriptions").await?;
        anyhow::Ok(r[0][0].clone())
    };
    assert_eq!(count().await?, "1");
    let _ = psql.kill();
    let _ = psql.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count().await? != "0" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count().await?, "0", "killing psql must free its subscription");
    Ok(())
}

/// tokio-postgres's `copy_out` runs `COPY (SUBSCRIBE ...)` through the extended protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_subscribe_over_extended_protocol() -> Result<()> {
    use futures::StreamExt;
    let server = TestServer::start()?;
    let writer = server.connect().await?;
    seed(&writer).await?;
    let reader = server.connect().await?;
    let stream = reader.copy_out("COPY (SUBSCRIBE revenue WITH (SNAPSHOT = true)) TO STDOUT").await?;
    futures::pin_mut!(stream);
    let first = tokio::time::timeout(Duration::from_secs(20), stream.next()).await?.context("a row")??;
    let text = String::from_utf8(first.to_vec())?;
    assert!(text.ends_with("\t1\t7\t2\t13.5\n"), "{text:?}");
    writer.batch_execute("DELETE FROM orders WHERE id = 1").await?;
    let row = tokio::time::timeout(Duration::from_secs(20), stream.next()).await?.context("a row")??;
    let text = String::from_utf8(row.to_vec())?;
    assert!(text.ends_with("\t-1\t7\t2\t13.5\n"), "{text:?}");
    Ok(())
}

/// `--metrics-listen` serves Prometheus text that follows the server's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics() -> Result<()> {
    use std::io::{Read, Write};
    let port = eddy_sql_tests::free_port()?;
    let server = TestServer::start_with(&["--metrics-listen", &format!("127.0.0.1:{port}")])?;
    let writer = server.connect().await?;
    seed(&writer).await?;
    let reader = server.connect().await?;
    reader.batch_execute("DECLARE c CURSOR FOR SUBSCRIBE revenue").await?;
    let scrape = |path: &str| -> Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    let body = scrape("/metrics")?;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("eddy_subscriptions{relation=\"revenue\"} 1"), "{body}");
    let epoch: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("eddy_committed_epoch "))
        .context("committed epoch")?
        .trim()
        .parse()?;
    assert!(epoch > 0);
    assert!(scrape("/nope")?.starts_with("HTTP/1.1 404"));
    Ok(())
}

/// RisingWave's subscriptions: changes are retained, and a new cursor resumes from a
/// timestamp after a disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_cursor_resumes_since_a_timestamp() -> Result<()> {
    let server = TestServer::start()?;
    let writer = server.connect().await?;
    seed(&writer).await?;
    writer.batch_execute("CREATE SUBSCRIPTION s FROM revenue WITH (retention = '1h')").await?;
    writer.batch_execute("INSERT INTO orders VALUES (3, 8, 5, 'paid')").await?;
    let first = server.connect().await?;
    first.batch_execute("DECLARE c SUBSCRIPTION CURSOR FOR s SINCE 0").await?;
    let got = fetch_rows(&first, 1).await?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0][1..], &["1", "8", "1", "5"]);
    let seen_ts: i64 = got[0][0].parse()?;
    drop(first);

    // While nobody reads: two more changes.
    writer.batch_execute("INSERT INTO orders VALUES (4, 8, 1, 'paid')").await?;
    let second = server.connect().await?;
    second.batch_execute(&format!("DECLARE c SUBSCRIPTION CURSOR FOR s SINCE {}", seen_ts + 1)).await?;
    let resumed = fetch_rows(&second, 2).await?;
    assert_eq!(resumed.len(), 2, "{resumed:?}");
    assert_eq!(&resumed[0][1..], &["-1", "8", "1", "5"]);
    assert_eq!(&resumed[1][1..], &["1", "8", "2", "6"]);
    // A cursor without SINCE starts at the next change; FULL starts with the current rows.
    second.batch_execute("DECLARE d SUBSCRIPTION CURSOR FOR s; DECLARE e SUBSCRIPTION CURSOR FOR s FULL").await?;
    assert!(rows(&second, "FETCH ALL d WITH (timeout = '200ms')").await?.is_empty());
    let full = rows(&second, "FETCH ALL e WITH (timeout = '5s')").await?;
    assert_eq!(full.len(), 2, "{full:?}");
    writer.batch_execute("DROP SUBSCRIPTION s").await?;
    let err = second.simple_query("DECLARE f SUBSCRIPTION CURSOR FOR s").await.err().context("dropped")?;
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42704"), "{err}");
    Ok(())
}
