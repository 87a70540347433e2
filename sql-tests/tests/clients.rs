//! Real clients against the real binary: psql, psycopg 3, tokio-postgres; and protocol garbage.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use eddy_sql_tests::TestServer;

async fn seed(server: &TestServer) -> Result<()> {
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE orders (id INT PRIMARY KEY, customer INT, amount NUMERIC, status VARCHAR);
             CREATE MATERIALIZED VIEW revenue AS
               SELECT customer, count(*) AS n, sum(amount) AS total, max(amount) AS biggest
               FROM orders WHERE status <> 'cancelled' GROUP BY customer HAVING count(*) > 1;
             INSERT INTO orders VALUES (1, 7, 10.5, 'paid'), (2, 7, 3, 'paid');",
        )
        .await?;
    Ok(())
}

fn psql(server: &TestServer, command: &str) -> Result<String> {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "root", "-d", "dev", "-X", "-c", command])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .context("running psql (install the postgresql-client package)")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() || !stderr.trim().is_empty() {
        bail!("psql {command:?} failed: {stdout}\n{stderr}");
    }
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_meta_commands() -> Result<()> {
    let server = TestServer::start()?;
    seed(&server).await?;
    let dt = psql(&server, "\\dt")?;
    assert!(dt.contains("orders") && dt.contains("table"), "\\dt output:\n{dt}");
    assert!(!dt.contains("revenue"), "\\dt must not list views:\n{dt}");
    let dm = psql(&server, "\\dm")?;
    assert!(dm.contains("revenue") && dm.contains("materialized view"), "\\dm output:\n{dm}");
    let d = psql(&server, "\\d revenue")?;
    for needle in ["Materialized view \"public.revenue\"", "customer", "integer", "total", "numeric", "bigint"] {
        assert!(d.contains(needle), "\\d revenue lacks {needle:?}:\n{d}");
    }
    let d = psql(&server, "\\d orders")?;
    assert!(d.contains("Table \"public.orders\"") && d.contains("not null"), "\\d orders:\n{d}");
    let rows = psql(&server, "SELECT * FROM revenue")?;
    assert!(rows.contains("13.5") && rows.contains("10.5"), "revenue:\n{rows}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_extended_protocol() -> Result<()> {
    let server = TestServer::start()?;
    seed(&server).await?;
    let mut client = server.connect().await?;
    // Parameters without declared types are inferred from their context.
    let stmt = client.prepare("SELECT customer, n FROM revenue WHERE customer = $1").await?;
    assert_eq!(stmt.params(), &[tokio_postgres::types::Type::INT4]);
    let rows = client.query(&stmt, &[&7i32]).await?;
    assert_eq!(rows.len(), 1);
    let customer: i32 = rows[0].get(0);
    let n: i64 = rows[0].get(1);
    assert_eq!((customer, n), (7, 2));

    client.batch_execute("CREATE TABLE m (k BIGINT PRIMARY KEY, label TEXT, x DOUBLE PRECISION, ok BOOLEAN)").await?;
    let insert = client.prepare("INSERT INTO m VALUES ($1, $2, $3, $4)").await?;
    for k in 0..10i64 {
        let n = client.execute(&insert, &[&k, &format!("row {k}"), &(k as f64 / 2.0), &(k % 2 == 0)]).await?;
        assert_eq!(n, 1);
    }
    client
        .batch_execute("CREATE MATERIALIZED VIEW m_sum AS SELECT ok, count(*) AS n, sum(x) AS sx FROM m GROUP BY ok")
        .await?;
    let rows = client.query("SELECT ok, n, sx FROM m_sum ORDER BY ok", &[]).await?;
    let got: Vec<(bool, i64, f64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(got, vec![(false, 5, 12.5), (true, 5, 10.0)]);
    let n = client.execute("UPDATE m SET ok = NOT ok WHERE k < $1", &[&2i64]).await?;
    assert_eq!(n, 2);
    let n = client.execute("DELETE FROM m WHERE label = $1", &[&"row 9"]).await?;
    assert_eq!(n, 1);
    let rows = client.query("SELECT ok, n FROM m_sum ORDER BY ok", &[]).await?;
    let got: Vec<(bool, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(false, 4), (true, 5)]);

    // Errors carry SQLSTATE and position.
    let err = client.query("SELECT * FROM nope", &[]).await.err().context("expected an error")?;
    let db = err.as_db_error().context("a database error")?;
    assert_eq!(db.code().code(), "42P01");
    assert!(matches!(db.position(), Some(tokio_postgres::error::ErrorPosition::Original(15))));
    let err = client.batch_execute("SELECT 1 +* 2").await.err().context("expected an error")?;
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("42601"));

    // Transactions are accepted; each statement commits as it runs.
    let tx = client.build_transaction().start().await?;
    tx.execute("INSERT INTO m VALUES (100, 'tx', 1.0, true)", &[]).await?;
    tx.commit().await?;
    let n: i64 = client.query_one("SELECT count(*) FROM m", &[]).await?.get(0);
    assert_eq!(n, 10);
    let version: String = client.query_one("SELECT version()", &[]).await?.get(0);
    assert!(version.starts_with("PostgreSQL 15.0 (Eddy"), "{version}");
    Ok(())
}

/// A Python environment with psycopg 3, made once under `target/`.
fn python_with_psycopg() -> Result<PathBuf> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv");
    let python = target.join("bin/python");
    let ready = Command::new(&python).args(["-c", "import psycopg"]).output().is_ok_and(|o| o.status.success());
    if ready {
        return Ok(python);
    }
    let status = Command::new("python3").arg("-m").arg("venv").arg(&target).status()?;
    if !status.success() {
        bail!("creating a Python venv at {} failed", target.display());
    }
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "psycopg[binary]>=3.1"])
        .status()?;
    if !status.success() {
        bail!("installing psycopg into {} failed", target.display());
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_client() -> Result<()> {
    let python = python_with_psycopg()?;
    let server = TestServer::start()?;
    seed(&server).await?;
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=False) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT customer, n, total FROM revenue")
        rows = cur.fetchall()
        assert len(rows) == 1 and rows[0][0] == 7 and rows[0][1] == 2 and float(rows[0][2]) == 13.5, rows
        cur.execute("INSERT INTO orders VALUES (%s, %s, %s, %s)", (3, 8, 5, "paid"))
        cur.execute("INSERT INTO orders VALUES (%s, %s, %s, %s)", (4, 8, 6, "paid"))
        conn.commit()
        cur.execute("SELECT n, total FROM revenue WHERE customer = %s", (8,))
        n, total = cur.fetchone()
        assert n == 2 and float(total) == 11, (n, total)
        cur.executemany("INSERT INTO orders VALUES (%s, %s, %s, %s)", [(10 + i, 9, i, "paid") for i in range(5)])
        conn.commit()
        cur.execute("SELECT n FROM revenue WHERE customer = 9")
        assert cur.fetchone()[0] == 5
        # Server-side prepared statement after repeated use, binary results.
        for i in range(7):
            cur.execute("SELECT count(*) FROM orders WHERE customer = %s", (9,), prepare=True, binary=True)
            assert cur.fetchone()[0] == 5
        try:
            cur.execute("SELECT * FROM nope")
            raise SystemExit("expected an error")
        except psycopg.errors.UndefinedTable:
            conn.rollback()
print("ok")
"#;
    let out = Command::new(python).arg("-c").arg(script).arg(server.url()).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains("ok"), "psycopg failed:\n{stdout}\n{stderr}\n{}", server.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_garbage_closes_only_that_connection() -> Result<()> {
    let server = TestServer::start()?;
    // Random bytes instead of a startup message.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&[0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03, 0xff, 0xfe])?;
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf);
    // A startup message claiming to be enormous.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0x00, 0x03, 0x00, 0x00])?;
    let _ = s.read(&mut buf);
    // A valid connection, then a query message with an absurd length.
    let client = server.connect().await?;
    client.batch_execute("SELECT 1").await?;
    drop(client);
    // The server still serves others.
    let client = server.connect().await?;
    let one: i64 = client.query_one("SELECT 1::BIGINT", &[]).await?.get(0);
    assert_eq!(one, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_tables_and_views() -> Result<()> {
    let mut server = TestServer::start()?;
    seed(&server).await?;
    server.restart()?;
    let client = server.connect().await?;
    let rows = client.simple_query("SELECT customer, n, total, biggest FROM revenue").await?;
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..4).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect::<Vec<_>>().join(" "))
            }
            _ => None,
        })
        .collect();
    assert_eq!(values, vec!["7 2 13.5 10.5"]);
    client.batch_execute("UPDATE orders SET status = 'cancelled' WHERE id = 1").await?;
    let n: i64 = client.query_one("SELECT count(*) FROM revenue", &[]).await?.get(0);
    assert_eq!(n, 0);
    Ok(())
}

/// A `SELECT` naming every key column of a table or view by `=` is answered by one store
/// lookup instead of DataFusion. Each shape is checked against the same query with a no-op
/// conjunct (`AND 1 = 1`), which the lookup does not take, so DataFusion answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_reads_answer_as_the_general_path_does() -> Result<()> {
    let server = TestServer::start()?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE lines (region VARCHAR, order_id SMALLINT, line BIGINT, qty INT, note VARCHAR,
                                 PRIMARY KEY (region, order_id, line));
             CREATE MATERIALIZED VIEW per_order AS
               SELECT region, order_id, count(*) AS n, sum(qty) AS total FROM lines GROUP BY region, order_id;
             CREATE MATERIALIZED VIEW per_region AS SELECT region, max(qty) AS top FROM lines GROUP BY region;
             INSERT INTO lines VALUES ('eu', 1, 1, 5, 'a'), ('eu', 1, 2, 7, NULL), ('us', -3, 1, 2, 'it''s'),
                                      ('eu', 2, 9000000000, 1, 'b');",
        )
        .await?;
    let simple = [
        "SELECT * FROM lines WHERE region = 'eu' AND order_id = 1 AND line = 2",
        "SELECT qty, note FROM lines WHERE line = 9000000000 AND order_id = 2 AND region = 'eu'",
        "SELECT l.note AS remark, l.qty FROM public.lines AS l WHERE l.region = 'us' AND l.order_id = -3 AND l.line = 1",
        "SELECT n, total FROM per_order WHERE region = 'eu' AND order_id = 1",
        "SELECT total, n, region AS r FROM per_order WHERE (order_id = -3) AND ('us' = region)",
        "SELECT * FROM per_order WHERE region = 'nowhere' AND order_id = 1",
        "SELECT top FROM per_region WHERE region = 'eu'",
        // Not point reads (a NULL key, an out-of-range or fractional value, a missing key
        // column, a cast): these take the general path either way and must say the same.
        "SELECT top FROM per_region WHERE region = NULL",
        "SELECT n FROM per_order WHERE region = 'eu' AND order_id = 100000",
        "SELECT n FROM per_order WHERE region = 'eu' AND order_id = 1.5",
        "SELECT n FROM per_order WHERE region = 'eu'",
        "SELECT n FROM per_order WHERE region = 'eu' AND order_id = '1'",
    ];
    for sql in simple {
        let fast = eddy_sql_tests::rows(&client, sql).await?;
        let general = eddy_sql_tests::rows(&client, &format!("{sql} AND 1 = 1")).await?;
        assert_eq!(fast, general, "{sql}");
    }
    let found = eddy_sql_tests::rows(&client, simple[3]).await?;
    assert_eq!(found, vec![vec!["2".to_string(), "12".to_string()]]);

    // Bound parameters (extended protocol, binary and typed as the server describes them).
    let by_key = client.prepare("SELECT n, total FROM per_order WHERE region = $1 AND order_id = $2").await?;
    let general =
        client.prepare("SELECT n, total FROM per_order WHERE region = $1 AND order_id = $2 AND 1 = 1").await?;
    for (region, order_id) in [("eu", 1i16), ("eu", 2), ("us", -3), ("eu", 3)] {
        let fast: Vec<(i64, i64)> =
            client.query(&by_key, &[&region, &order_id]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
        let slow: Vec<(i64, i64)> =
            client.query(&general, &[&region, &order_id]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(fast, slow, "{region} {order_id}");
    }
    // A change is visible to the next point read.
    client.batch_execute("DELETE FROM lines WHERE region = 'eu' AND order_id = 1 AND line = 1").await?;
    let after: Vec<(i64, i64)> =
        client.query(&by_key, &[&"eu", &1i16]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(after, vec![(1, 7)]);
    Ok(())
}

/// Concurrent single-row INSERTs share commits, yet a key is taken once: of several sessions
/// racing to insert the same keys, exactly one wins each (the others get 23505), UPDATEs and
/// DELETEs in between see every insert that returned, and the view equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_keep_keys_unique() -> Result<()> {
    let server = TestServer::start()?;
    let admin = server.connect().await?;
    admin
        .batch_execute(
            "CREATE TABLE t (id INT PRIMARY KEY, grp INT, v INT);
             CREATE MATERIALIZED VIEW per_grp AS SELECT grp, count(*) AS n, sum(v) AS total FROM t GROUP BY grp;",
        )
        .await?;
    const KEYS: i32 = 150;
    let mut writers = Vec::new();
    for _ in 0..4 {
        let client = server.connect().await?;
        writers.push(tokio::spawn(async move {
            let insert = client.prepare("INSERT INTO t VALUES ($1, $2, 1)").await?;
            let (mut won, mut lost) = (0u32, 0u32);
            for i in 0..KEYS {
                // Every writer walks the keys in the same order: they race for each one.
                let id = i;
                match client.execute(&insert, &[&id, &(id % 7)]).await {
                    Ok(_) => won += 1,
                    Err(e) if e.as_db_error().map(|d| d.code().code()) == Some("23505") => lost += 1,
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
            }
            anyhow::Ok((won, lost))
        }));
    }
    // Meanwhile: updates of keys already inserted must land (they wait for inserts in flight).
    let updater = server.connect().await?;
    let mut updated = 0u64;
    for id in (0..KEYS).step_by(5) {
        updated += updater.execute("UPDATE t SET v = v + 10 WHERE id = $1", &[&id]).await?;
    }
    let mut won = 0;
    for w in writers {
        let (n, lost) = w.await??;
        assert_eq!(n + lost, KEYS as u32);
        won += n;
    }
    assert_eq!(won, KEYS as u32, "each key inserted exactly once");
    let table = eddy_sql_tests::rows(&admin, "SELECT count(*), count(DISTINCT id), sum(v) FROM t").await?;
    assert_eq!(table, vec![vec![KEYS.to_string(), KEYS.to_string(), (KEYS as u64 + 10 * updated).to_string()]]);
    // A delete after all of it, then the view against the same query on the table.
    admin.batch_execute("DELETE FROM t WHERE id % 3 = 0").await?;
    let view = eddy_sql_tests::rows(&admin, "SELECT grp, n, total FROM per_grp ORDER BY grp").await?;
    let batch = eddy_sql_tests::rows(&admin, "SELECT grp, count(*), sum(v) FROM t GROUP BY grp ORDER BY grp").await?;
    assert_eq!(view, batch);
    Ok(())
}
