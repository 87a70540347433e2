//! `postgres-cdc` against the real Postgres on this machine (127.0.0.1:5432, user postgres,
//! `wal_level=logical`; `scripts/setup-cdc-upstreams.sh` sets it up), through the real `eddy`
//! binary. Each test makes its own upstream database and slot names, so they run in parallel.
//!
//! Every check compares what Eddy shows with the same query run on upstream Postgres: the
//! CDC table with the upstream table, views over it with the view's query upstream.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eddy_sql_tests::TestServer;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const UPSTREAM: &str = "host=127.0.0.1 port=5432 user=postgres";

/// A fresh upstream database named `eddy_cdc_<name>`, and a client connected to it.
async fn upstream_db(name: &str) -> Result<(Client, String)> {
    let db = format!("eddy_cdc_{name}");
    let admin = connect(&format!("{UPSTREAM} dbname=postgres")).await.context("connecting to upstream Postgres")?;
    // Slots of an earlier run of this test pin the database; drop them first.
    admin
        .simple_query(&format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{db}' AND active_pid IS NOT NULL"
        ))
        .await?;
    for _ in 0..50 {
        let r = admin
            .simple_query(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{db}'"
            ))
            .await;
        if r.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.simple_query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await?;
    admin.simple_query(&format!("CREATE DATABASE {db}")).await?;
    let client = connect(&format!("{UPSTREAM} dbname={db}")).await?;
    Ok((client, db))
}

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Rows as text, numbers normalised (`10.50` and `10.5000000000` are the same value), sorted.
async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.with_context(|| format!("running {sql}"))? {
        if let SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| normalise(r.get(i))).collect());
        }
    }
    out.sort();
    Ok(out)
}

fn normalise(v: Option<&str>) -> String {
    match v {
        None => "NULL".into(),
        Some(s) if s.contains('.') && s.parse::<f64>().is_ok() && !s.contains('e') => {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        Some(s) => s.to_string(),
    }
}

/// Waits until `eddy_sql` on Eddy returns what `upstream_sql` returns upstream.
async fn converges(eddy: &Client, eddy_sql: &str, up: &Client, upstream_sql: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let expected = rows(up, upstream_sql).await?;
        let actual = rows(eddy, eddy_sql).await?;
        if actual == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            let show = |r: &Vec<Vec<String>>| {
                let mut s: Vec<String> = r.iter().take(8).map(|r| r.join("|")).collect();
                s.push(format!("... {} rows", r.len()));
                s.join("\n")
            };
            bail!(
                "Eddy never matched upstream for {eddy_sql}\nEddy:\n{}\nupstream:\n{}",
                show(&actual),
                show(&expected)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn connection_options(db: &str, slot: &str) -> String {
    format!(
        "connector = 'postgres-cdc', hostname = '127.0.0.1', port = '5432', username = 'postgres', \
         password = '', database.name = '{db}', slot.name = '{slot}'"
    )
}

async fn slot_exists(up: &Client, slot: &str) -> Result<bool> {
    Ok(!rows(up, &format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}'")).await?.is_empty())
}

const ORDERS: &str = "id INT PRIMARY KEY, customer INT, amount NUMERIC(10,2), status VARCHAR, note TEXT";
const REVENUE: &str = "SELECT customer, count(*) AS n, sum(amount) AS total FROM orders GROUP BY customer";
const ORDER_ROWS: &str = "SELECT id, customer, amount, status, length(note), md5(note) FROM orders";

/// Inserts `n` orders from `first` on, one transaction each, while Eddy copies and starts.
async fn write_concurrently(url: String, first: i64, n: i64) -> Result<()> {
    let client = connect(&url).await?;
    for i in first..first + n {
        client
            .simple_query(&format!("INSERT INTO orders VALUES ({i}, {}, {}.25, 'new', NULL)", i % 17, i % 100))
            .await?;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_through_a_shared_source() -> Result<()> {
    let (up, db) = upstream_db("shared").await?;
    up.batch_execute(&format!(
        "CREATE TABLE orders ({ORDERS});
         INSERT INTO orders SELECT i, i % 17, (i % 100) + 0.5, 'paid', NULL FROM generate_series(1, 20000) i;
         CREATE TABLE customers (id INT PRIMARY KEY, name TEXT);
         INSERT INTO customers SELECT i, 'c' || i FROM generate_series(0, 16) i;"
    ))
    .await?;
    let mut server = TestServer::start_with(&["--barrier-interval-ms", "100", "--checkpoint-interval-ms", "300"])?;
    let eddy = server.connect().await?;
    eddy.batch_execute(&format!("CREATE SOURCE pg WITH ({})", connection_options(&db, "eddy_shared"))).await?;

    let writer = tokio::spawn(write_concurrently(format!("{UPSTREAM} dbname={db}"), 100_000, 400));
    eddy.batch_execute(&format!("CREATE TABLE orders ({ORDERS}) FROM pg TABLE 'public.orders'")).await?;
    eddy.batch_execute("CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR) FROM pg TABLE 'public.customers'")
        .await?;
    eddy.batch_execute(&format!("CREATE MATERIALIZED VIEW revenue AS {REVENUE}")).await?;
    eddy.batch_execute(
        "CREATE MATERIALIZED VIEW named AS SELECT c.name, count(*) AS n FROM orders o JOIN customers c ON o.customer = c.id GROUP BY c.name",
    )
    .await?;
    writer.await??;
    // Snapshot + concurrent writes: no gap, no duplicate.
    converges(&eddy, ORDER_ROWS, &up, ORDER_ROWS, Duration::from_secs(60)).await?;

    // Updates, an update of the key, deletes, NULLs, and a 128 KB out-of-line TOAST value
    // that a later UPDATE leaves unchanged (Postgres then does not send it).
    up.batch_execute(
        "UPDATE orders SET status = 'shipped', amount = amount * 2 WHERE id % 7 = 0;
         UPDATE orders SET id = id + 1000000 WHERE id BETWEEN 10 AND 20;
         DELETE FROM orders WHERE id % 11 = 0;
         UPDATE orders SET status = NULL, customer = NULL WHERE id % 13 = 0;
         INSERT INTO orders VALUES (5000000, 3, 1.5, 'big', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 4096) i));
         INSERT INTO customers VALUES (99, 'late');",
    )
    .await?;
    up.batch_execute("UPDATE orders SET status = 'big, touched' WHERE id = 5000000").await?;
    // 128 KB that does not compress cannot sit in an 8 KB heap page: it is stored out of line.
    let toast = rows(&up, "SELECT length(note), pg_column_size(note) > 100000 FROM orders WHERE id = 5000000").await?;
    assert_eq!(toast, vec![vec!["131072".to_string(), "t".to_string()]]);
    converges(&eddy, ORDER_ROWS, &up, ORDER_ROWS, Duration::from_secs(30)).await?;
    converges(&eddy, "SELECT * FROM revenue", &up, REVENUE, Duration::from_secs(10)).await?;
    let named = "SELECT c.name, count(*) AS n FROM orders o JOIN customers c ON o.customer = c.id GROUP BY c.name";
    converges(&eddy, "SELECT * FROM named", &up, named, Duration::from_secs(10)).await?;

    // Progress and slot lag are visible; both tables read the source's one slot, and the
    // temporary slots that exported their snapshots are gone.
    let progress = rows(
        &eddy,
        "SELECT upstream_table, slot, phase, snapshot_rows_copied >= 20000 OR upstream_table LIKE '%customers', healthy
         FROM eddy_catalog.cdc_progress ORDER BY upstream_table",
    )
    .await?;
    let expected_progress = |table: &str| -> Vec<String> {
        vec![format!("public.{table}"), "eddy_shared".into(), "streaming".into(), "t".into(), "t".into()]
    };
    assert_eq!(progress, vec![expected_progress("customers"), expected_progress("orders")]);
    let slots = format!("SELECT slot_name FROM pg_replication_slots WHERE database = '{db}'");
    assert_eq!(rows(&up, &slots).await?, vec![vec!["eddy_shared".to_string()]]);

    // A restart replays `FROM pg TABLE ...` and resumes both tables from the one slot.
    drop(eddy);
    server.restart()?;
    let eddy = server.connect().await?;
    up.batch_execute("UPDATE orders SET amount = amount + 1 WHERE id % 5 = 0; DELETE FROM customers WHERE id = 3;")
        .await?;
    converges(&eddy, ORDER_ROWS, &up, ORDER_ROWS, Duration::from_secs(30)).await?;
    converges(&eddy, "SELECT * FROM revenue", &up, REVENUE, Duration::from_secs(10)).await?;
    converges(&eddy, "SELECT * FROM named", &up, named, Duration::from_secs(10)).await?;

    // The slot is acknowledged once both tables' changes are durable.
    let confirmed =
        "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'eddy_shared'";
    let written: String = up.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !up.query_one(confirmed, &[&written]).await?.get::<_, bool>(0) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the shared slot was not acknowledged past {written}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Dropping one table keeps the slot for the other, which goes on streaming; a table added
    // later copies its own snapshot while the stream runs.
    eddy.batch_execute("DROP MATERIALIZED VIEW named; DROP TABLE customers").await?;
    assert!(slot_exists(&up, "eddy_shared").await?);
    up.batch_execute(
        "CREATE TABLE notes (id INT PRIMARY KEY, body TEXT); INSERT INTO notes VALUES (1, 'a'), (2, 'b');",
    )
    .await?;
    let writer = tokio::spawn(write_concurrently(format!("{UPSTREAM} dbname={db}"), 200_000, 200));
    eddy.batch_execute("CREATE TABLE notes (id INT PRIMARY KEY, body VARCHAR) FROM pg TABLE 'public.notes'").await?;
    up.batch_execute("INSERT INTO notes VALUES (3, 'c'); UPDATE notes SET body = 'B' WHERE id = 2; UPDATE orders SET status = 'x' WHERE id = 1;")
        .await?;
    writer.await??;
    converges(&eddy, ORDER_ROWS, &up, ORDER_ROWS, Duration::from_secs(30)).await?;
    converges(&eddy, "SELECT * FROM notes", &up, "SELECT * FROM notes", Duration::from_secs(30)).await?;
    assert_eq!(rows(&up, &slots).await?, vec![vec!["eddy_shared".to_string()]]);

    // Dropping the source with its tables releases the slot upstream.
    let refused = eddy.batch_execute("DROP SOURCE pg").await;
    assert!(refused.is_err(), "tables read from the source depend on it");
    eddy.batch_execute("DROP SOURCE pg CASCADE").await?;
    assert!(!slot_exists(&up, "eddy_shared").await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_type_arrives_as_upstream_has_it() -> Result<()> {
    let (up, db) = upstream_db("types").await?;
    up.batch_execute(
        "CREATE TABLE t (id INT PRIMARY KEY, a SMALLINT, b BIGINT, c NUMERIC(12,3), d REAL, e DOUBLE PRECISION,
            f BOOLEAN, g TEXT, h VARCHAR(20), i TIMESTAMP, j TIMESTAMPTZ, k DATE, l JSONB, m BYTEA, n UUID,
            o INT[], p TEXT[]);
         INSERT INTO t VALUES
           (1, 7, 9000000000, 12.345, 1.5, 2.25, true, 'x''y', 'v', '2024-01-02 03:04:05.123456',
            '2024-01-02 03:04:05+02', '2024-02-29', '{\"k\": [1, 2]}', '\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            '{1,NULL,3}', '{\"a b\",c}'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .await?;
    let server = TestServer::start_with(&["--barrier-interval-ms", "100"])?;
    let eddy = server.connect().await?;
    eddy.batch_execute(&format!(
        "CREATE TABLE t (id INT PRIMARY KEY, a SMALLINT, b BIGINT, c NUMERIC(12,3), d REAL, e DOUBLE PRECISION,
            f BOOLEAN, g TEXT, h VARCHAR, i TIMESTAMP, j TIMESTAMPTZ, k DATE, l JSONB, m BYTEA, n UUID,
            o INT[], p TEXT[]) WITH ({}, table.name = 'public.t')",
        connection_options(&db, "eddy_types")
    ))
    .await?;
    up.batch_execute(
        "INSERT INTO t VALUES (3, -1, -2, -0.5, -1e10, 1e-5, false, '', 'ü', '1999-12-31 23:59:59',
            '1999-12-31 23:59:59.5-08', '1970-01-01', '[]', '\\x', '00000000-0000-0000-0000-000000000000', '{}', '{NULL}')",
    )
    .await?;
    // Values compared through expressions both sides agree on.
    let query = "SELECT id, a, b, c, d, e, f, g, h, CAST(i AS VARCHAR), CAST(k AS VARCHAR), l, n,
        extract(epoch FROM j), encode(m, 'hex'), cardinality(o), o[1], o[3], p[1], p[2] FROM t";
    let upstream_query = "SELECT id, a, b, c, d, e, CASE WHEN f THEN 'true' WHEN NOT f THEN 'false' END, g, h,
        to_char(i, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), CAST(k AS VARCHAR), CAST(l AS TEXT), CAST(n AS TEXT),
        extract(epoch FROM j), encode(m, 'hex'), cardinality(o), o[1], o[3], p[1], p[2] FROM t";
    let eddy_rows = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = rows(&eddy, query).await?;
            if r.len() == 3 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let upstream_rows = rows(&up, upstream_query).await?;
    assert_eq!(eddy_rows.len(), 3, "{eddy_rows:?}");
    for (e, u) in eddy_rows.iter().zip(&upstream_rows) {
        for (col, (a, b)) in e.iter().zip(u).enumerate() {
            let same = a == b
                || a.trim_end_matches(".000000") == b.trim_end_matches(".000000")
                || a.replace(' ', "T").trim_end_matches(".000000") == b.trim_end_matches(".000000")
                || a.parse::<f64>()
                    .ok()
                    .zip(b.parse::<f64>().ok())
                    .is_some_and(|(x, y)| (x - y).abs() <= 1e-6 * y.abs().max(1.0))
                || (a == "t" && b == "true")
                || (a == "f" && b == "false");
            assert!(same, "column {col}: Eddy {a:?} vs upstream {b:?}\nEddy {e:?}\nupstream {u:?}");
        }
    }
    let bad = rows(&eddy, "SELECT sum(bad_records) FROM eddy_catalog.source_splits").await?;
    assert_eq!(bad, vec![vec!["0".to_string()]]);

    // A value Eddy cannot decode ('NaN' has no Decimal128 form): the row is counted with its
    // LSN, the table is marked unhealthy, and the stream goes on.
    up.batch_execute("INSERT INTO t (id, c) VALUES (4, 'NaN'); INSERT INTO t (id, c) VALUES (5, 1.5);").await?;
    converges(&eddy, "SELECT id FROM t", &up, "SELECT id FROM t WHERE id <> 4", Duration::from_secs(30)).await?;
    let bad = rows(&eddy, "SELECT bad_records, last_error FROM eddy_catalog.source_splits").await?;
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0][0], "1");
    assert!(bad[0][1].contains("at LSN") && bad[0][1].contains("'NaN' cannot be read"), "{bad:?}");
    let health = rows(&eddy, "SELECT healthy, phase FROM eddy_catalog.cdc_progress").await?;
    assert_eq!(health, vec![vec!["f".to_string(), "streaming".to_string()]]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_and_dropped_connections_lose_nothing() -> Result<()> {
    let (up, db) = upstream_db("crash").await?;
    up.batch_execute(
        "CREATE TABLE accounts (id INT PRIMARY KEY, grp INT NOT NULL, balance BIGINT NOT NULL);
         INSERT INTO accounts SELECT i, i % 10, 100 FROM generate_series(1, 2000) i;",
    )
    .await?;
    let mut server = TestServer::start_with(&["--barrier-interval-ms", "50", "--checkpoint-interval-ms", "200"])?;
    let eddy = server.connect().await?;
    eddy.batch_execute(&format!(
        "CREATE TABLE accounts (id INT PRIMARY KEY, grp INT NOT NULL, balance BIGINT NOT NULL)
           WITH ({}, table.name = 'accounts')",
        connection_options(&db, "eddy_crash")
    ))
    .await?;
    let view = "SELECT grp, count(*) AS n, sum(balance) AS total, min(balance) AS lo, max(balance) AS hi FROM accounts GROUP BY grp";
    eddy.batch_execute(&format!("CREATE MATERIALIZED VIEW totals AS {view}")).await?;
    drop(eddy);

    // Transfers in small transactions (balance moves between accounts), new accounts and
    // closed accounts, while Eddy is killed and connections are cut.
    let url = format!("{UPSTREAM} dbname={db}");
    let writer = tokio::spawn(async move {
        let client = connect(&url).await?;
        for i in 0..1500i64 {
            let (a, b) = (1 + (i * 7919) % 2000, 1 + (i * 104729) % 2000);
            client
                .batch_execute(&format!(
                    "BEGIN; UPDATE accounts SET balance = balance - 5 WHERE id = {a};
                     UPDATE accounts SET balance = balance + 5 WHERE id = {b}; COMMIT;"
                ))
                .await?;
            if i % 10 == 0 {
                client.batch_execute(&format!("INSERT INTO accounts VALUES ({}, {}, 1)", 10_000 + i, i % 10)).await?;
            }
            if i % 25 == 0 {
                client.batch_execute(&format!("DELETE FROM accounts WHERE id = {}", 1 + i)).await?;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::Ok(())
    });
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        if round == 1 {
            // A dropped connection: the walsender goes away; Eddy reconnects.
            up.batch_execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'eddy_crash' AND active_pid IS NOT NULL",
            )
            .await?;
        } else {
            server.kill();
            server.restart()?;
        }
    }
    writer.await??;
    let eddy = server.connect().await?;
    let all = "SELECT id, grp, balance FROM accounts";
    converges(&eddy, all, &up, all, Duration::from_secs(60)).await?;
    converges(&eddy, "SELECT * FROM totals", &up, view, Duration::from_secs(10)).await?;

    // Acknowledged only once durable: the slot's confirmed position moved past the start.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let confirmed = rows(
        &up,
        "SELECT confirmed_flush_lsn > '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'eddy_crash'",
    )
    .await?;
    assert_eq!(confirmed, vec![vec!["t".to_string()]]);
    eddy.batch_execute("DROP MATERIALIZED VIEW totals; DROP TABLE accounts").await?;
    assert!(!slot_exists(&up, "eddy_crash").await?, "DROP TABLE releases the slot");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_upstream_are_followed_or_stop_the_table() -> Result<()> {
    let (up, db) = upstream_db("schema").await?;
    up.batch_execute("CREATE TABLE s (id INT PRIMARY KEY, v INT, w TEXT); INSERT INTO s VALUES (1, 1, 'a');").await?;
    let server = TestServer::start_with(&["--barrier-interval-ms", "100"])?;
    let eddy = server.connect().await?;
    eddy.batch_execute(&format!(
        "CREATE TABLE s (id INT PRIMARY KEY, v INT, w VARCHAR) WITH ({}, table.name = 's')",
        connection_options(&db, "eddy_schema")
    ))
    .await?;
    // A compatible change: a new column Eddy does not declare.
    up.batch_execute(
        "ALTER TABLE s ADD COLUMN extra INT; INSERT INTO s VALUES (2, 2, 'b', 9); UPDATE s SET v = 10 WHERE id = 1;",
    )
    .await?;
    let q = "SELECT id, v, w FROM s";
    converges(&eddy, q, &up, q, Duration::from_secs(30)).await?;
    // An incompatible one: a declared column disappears. The table stops, says why, and
    // keeps its last correct rows.
    up.batch_execute("ALTER TABLE s DROP COLUMN w; INSERT INTO s VALUES (3, 3, 0);").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = rows(&eddy, "SELECT healthy, phase, last_error FROM eddy_catalog.cdc_progress").await?;
        if p.first().is_some_and(|r| r[0] == "f") {
            assert_eq!(p[0][1], "stopped");
            assert!(p[0][2].contains("no longer has column \"w\""), "{p:?}");
            break;
        }
        if Instant::now() > deadline {
            bail!("the table did not stop on a dropped column: {p:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rows(&eddy, "SELECT count(*) FROM s").await?, vec![vec!["2".to_string()]]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_refused_at_create_with_the_fix() -> Result<()> {
    let (up, db) = upstream_db("bad").await?;
    up.batch_execute(
        "CREATE TABLE keyless (a INT, b TEXT);
         CREATE TABLE hidden (id INT PRIMARY KEY);
         DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eddy_norepl') THEN CREATE ROLE eddy_norepl LOGIN; END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eddy_repl') THEN CREATE ROLE eddy_repl LOGIN REPLICATION; END IF;
         END $$;",
    )
    .await?;
    let server = TestServer::start()?;
    let eddy = server.connect().await?;
    let attempt = |columns: &'static str, options: String| {
        let eddy = &eddy;
        async move {
            let err = eddy
                .batch_execute(&format!("CREATE TABLE x ({columns}) WITH ({options})"))
                .await
                .err()
                .context("CREATE TABLE should have failed")?;
            let db = err.as_db_error().context("a server error")?;
            anyhow::Ok(format!("{} {}", db.code().code(), db.message()))
        }
    };
    let base = |user: &str, table: &str| {
        format!(
            "connector = 'postgres-cdc', hostname = '127.0.0.1', port = '5432', username = '{user}', \
             database.name = '{db}', slot.name = 'eddy_bad', table.name = '{table}'"
        )
    };
    let e = attempt("id INT PRIMARY KEY", base("nosuchuser", "hidden")).await?;
    assert!(e.starts_with("28") && e.contains("check the username and password"), "{e}");
    let e = attempt("id INT PRIMARY KEY", base("postgres", "missing")).await?;
    assert!(e.contains("public.missing does not exist") && e.contains("table.name"), "{e}");
    let e = attempt("a INT PRIMARY KEY, b VARCHAR", base("postgres", "keyless")).await?;
    assert!(e.contains("REPLICA IDENTITY FULL"), "{e}");
    let e = attempt("id INT PRIMARY KEY", base("eddy_norepl", "hidden")).await?;
    assert!(e.contains("WITH REPLICATION"), "{e}");
    let e = attempt("id INT PRIMARY KEY", base("eddy_repl", "hidden")).await?;
    assert!(e.contains("GRANT SELECT"), "{e}");
    // May read and replicate, but does not own the table, so cannot publish it.
    up.batch_execute("GRANT SELECT ON hidden TO eddy_repl").await?;
    let e = attempt("id INT PRIMARY KEY", base("eddy_repl", "hidden")).await?;
    assert!(e.contains("may not publish") && e.contains("CREATE PUBLICATION"), "{e}");
    let e = attempt("id INT PRIMARY KEY, nope INT", base("postgres", "hidden")).await?;
    assert!(e.contains("no column \"nope\""), "{e}");
    let e = attempt(
        "id INT PRIMARY KEY",
        format!("{}, port = '1'", base("postgres", "hidden").replace(", port = '5432'", "")),
    )
    .await?;
    assert!(e.contains("cannot connect to Postgres at 127.0.0.1:1"), "{e}");
    // REPLICA IDENTITY FULL makes a keyless upstream table usable.
    up.batch_execute("ALTER TABLE keyless REPLICA IDENTITY FULL; INSERT INTO keyless VALUES (1, 'one')").await?;
    eddy.batch_execute(&format!(
        "CREATE TABLE k (a INT PRIMARY KEY, b VARCHAR) WITH ({})",
        base("postgres", "keyless")
    ))
    .await?;
    converges(&eddy, "SELECT a, b FROM k", &up, "SELECT a, b FROM keyless", Duration::from_secs(30)).await?;
    Ok(())
}
