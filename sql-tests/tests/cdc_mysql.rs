//! `mysql-cdc` against the real MariaDB on this machine (127.0.0.1:3306, root, empty
//! password, binlog in ROW format; `scripts/setup-cdc-upstreams.sh` sets it up), through the
//! real `eddy` binary. Each test makes its own upstream database and replica ids, so they run
//! in parallel. Upstream is driven with the `mysql` command-line client.
//!
//! Every check compares what Eddy shows with the same query run on MariaDB: the CDC table with
//! the upstream table, views over it with the view's query upstream.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eddy_sql_tests::TestServer;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Runs `sql` (any number of statements) on MariaDB and returns the rows of the last result,
/// tab-separated fields, NULL as `NULL`.
async fn my(sql: &str) -> Result<Vec<Vec<String>>> {
    use tokio::io::AsyncWriteExt;
    // The statements go through stdin: scripts can be longer than one argument may be.
    let mut child = tokio::process::Command::new("mysql")
        .args(["-h", "127.0.0.1", "-P", "3306", "-u", "root", "-N", "-B"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running the mysql client")?;
    let mut stdin = child.stdin.take().context("mysql stdin")?;
    stdin.write_all(sql.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "mysql failed on {}: {}",
            sql.chars().take(200).collect::<String>(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut rows: Vec<Vec<String>> =
        text.lines().map(|l| l.split('\t').map(|v| normalise(Some(v).filter(|v| *v != "NULL"))).collect()).collect();
    rows.sort();
    Ok(rows)
}

/// A fresh upstream database named `eddy_mycdc_<name>`.
async fn upstream_db(name: &str) -> Result<String> {
    let db = format!("eddy_mycdc_{name}");
    my(&format!("DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}")).await?;
    Ok(db)
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

/// Waits until `eddy_sql` on Eddy returns what `upstream_sql` returns on MariaDB.
async fn converges(eddy: &Client, eddy_sql: &str, upstream_sql: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let expected = my(upstream_sql).await?;
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
            let missing: Vec<&Vec<String>> = expected.iter().filter(|r| !actual.contains(r)).take(5).collect();
            let extra: Vec<&Vec<String>> = actual.iter().filter(|r| !expected.contains(r)).take(5).collect();
            bail!(
                "Eddy never matched upstream for {eddy_sql}\nEddy:\n{}\nupstream:\n{}\nmissing in Eddy: {missing:?}\nonly in Eddy: {extra:?}",
                show(&actual),
                show(&expected)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn connection_options(db: &str, server_id: u32) -> String {
    format!(
        "connector = 'mysql-cdc', hostname = '127.0.0.1', port = '3306', username = 'root', \
         password = '', database.name = '{db}', server.id = '{server_id}'"
    )
}

const ORDERS: &str = "id INT PRIMARY KEY, customer INT, amount NUMERIC(10,2), status VARCHAR, note TEXT";
const UPSTREAM_ORDERS: &str =
    "id INT PRIMARY KEY, customer INT, amount DECIMAL(10,2), status VARCHAR(20), note MEDIUMTEXT";
const REVENUE: &str = "SELECT customer, count(*) AS n, sum(amount) AS total FROM orders GROUP BY customer";

/// Inserts `n` orders from `first` on, one transaction each, while Eddy copies and starts.
async fn write_concurrently(db: String, first: i64, n: i64) -> Result<()> {
    let mut script = format!("USE {db};");
    for i in first..first + n {
        script.push_str(&format!(
            "INSERT INTO orders VALUES ({i}, {}, {}.25, 'new', NULL); DO SLEEP(0.003);",
            i % 17,
            i % 100
        ));
    }
    my(&script).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_through_a_shared_source() -> Result<()> {
    let db = upstream_db("shared").await?;
    my(&format!(
        "USE {db};
         CREATE TABLE orders ({UPSTREAM_ORDERS});
         INSERT INTO orders SELECT seq, seq % 17, (seq % 100) + 0.5, 'paid', NULL FROM seq_1_to_20000;
         CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(40));
         INSERT INTO customers SELECT seq, CONCAT('c', seq) FROM seq_0_to_16;"
    ))
    .await?;
    let mut server = TestServer::start_with(&["--barrier-interval-ms", "100", "--checkpoint-interval-ms", "300"])?;
    let eddy = server.connect().await?;
    eddy.batch_execute(&format!("CREATE SOURCE my WITH ({})", connection_options(&db, 5454))).await?;

    let writer = tokio::spawn(write_concurrently(db.clone(), 100_000, 400));
    eddy.batch_execute(&format!("CREATE TABLE orders ({ORDERS}) FROM my TABLE '{db}.orders'")).await?;
    eddy.batch_execute(&format!(
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR) FROM my TABLE '{db}.customers'"
    ))
    .await?;
    eddy.batch_execute(&format!("CREATE MATERIALIZED VIEW revenue AS {REVENUE}")).await?;
    eddy.batch_execute(
        "CREATE MATERIALIZED VIEW named AS SELECT c.name, count(*) AS n FROM orders o JOIN customers c ON o.customer = c.id GROUP BY c.name",
    )
    .await?;
    writer.await??;
    // Snapshot + concurrent writes: no gap, no duplicate.
    let order_rows = "SELECT id, customer, amount, status, note FROM orders";
    let upstream_rows = format!("SELECT id, customer, amount, status, note FROM {db}.orders");
    converges(&eddy, order_rows, &upstream_rows, Duration::from_secs(60)).await?;

    // Updates, an update of the key, deletes, NULLs, new rows in the other table.
    my(&format!(
        "USE {db};
         UPDATE orders SET status = 'shipped', amount = amount * 2 WHERE id % 7 = 0;
         UPDATE orders SET id = id + 1000000 WHERE id BETWEEN 10 AND 20;
         DELETE FROM orders WHERE id % 11 = 0;
         UPDATE orders SET status = NULL, customer = NULL WHERE id % 13 = 0;
         INSERT INTO orders VALUES (5000000, 3, 1.5, 'big', REPEAT('x', 100000));
         INSERT INTO customers VALUES (99, 'late');"
    ))
    .await?;
    converges(&eddy, order_rows, &upstream_rows, Duration::from_secs(30)).await?;
    let upstream_revenue =
        format!("SELECT customer, count(*) AS n, sum(amount) AS total FROM {db}.orders GROUP BY customer");
    converges(&eddy, "SELECT * FROM revenue", &upstream_revenue, Duration::from_secs(10)).await?;
    let upstream_named = format!(
        "SELECT c.name, count(*) AS n FROM {db}.orders o JOIN {db}.customers c ON o.customer = c.id GROUP BY c.name"
    );
    converges(&eddy, "SELECT * FROM named", &upstream_named, Duration::from_secs(10)).await?;

    // Progress is visible: both readers stream, the copy counted every snapshot row.
    let progress = rows(
        &eddy,
        "SELECT upstream_table, phase, snapshot_rows_copied >= 20000 OR upstream_table LIKE '%customers', healthy,
                confirmed_lsn LIKE 'mysql-bin.%' FROM eddy_catalog.cdc_progress",
    )
    .await?;
    assert_eq!(
        progress,
        vec![
            vec![format!("{db}.customers"), "streaming".into(), "t".into(), "t".into(), "t".into()],
            vec![format!("{db}.orders"), "streaming".into(), "t".into(), "t".into(), "t".into()],
        ]
    );

    // A restart replays `FROM my TABLE ...` and resumes both readers from their positions.
    drop(eddy);
    server.restart()?;
    let eddy = server.connect().await?;
    my(&format!(
        "USE {db}; UPDATE orders SET amount = amount + 1 WHERE id % 5 = 0; DELETE FROM customers WHERE id = 3;"
    ))
    .await?;
    converges(&eddy, order_rows, &upstream_rows, Duration::from_secs(30)).await?;
    converges(&eddy, "SELECT * FROM revenue", &upstream_revenue, Duration::from_secs(10)).await?;
    converges(&eddy, "SELECT * FROM named", &upstream_named, Duration::from_secs(10)).await?;

    let refused = eddy.batch_execute("DROP SOURCE my").await;
    assert!(refused.is_err(), "tables read from the source depend on it");
    eddy.batch_execute("DROP SOURCE my CASCADE").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_type_arrives_as_upstream_has_it() -> Result<()> {
    let db = upstream_db("types").await?;
    let columns = "id INT PRIMARY KEY, ti TINYINT, si SMALLINT, mi MEDIUMINT, bi BIGINT, ui INT UNSIGNED,
        ubi BIGINT UNSIGNED, flag BOOLEAN, d DECIMAL(12,3), f FLOAT, dbl DOUBLE, vc VARCHAR(20), txt TEXT,
        ch CHAR(3), bl BLOB, vb VARBINARY(8), dt DATE, dtm DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME,
        yr YEAR, yu SMALLINT UNSIGNED, js JSON, en ENUM('new','paid','it''s'), st SET('a','b','c'), bt BIT(5)";
    let values = |id: i32| {
        format!(
            "({id}, -7, -300, -8000000, -9000000000, 4000000000, 18446744073709551615, TRUE, -12.345, 1.5, 2.25,
              'x''y ü', 'long text', 'abc', x'00ff10', x'cafe', '2024-02-29', '2024-01-02 03:04:05.123456',
              '2024-01-02 03:04:05.250', '-01:02:03', 2024, 65535, '{{\"k\": [1, 2]}}', 'it''s', 'a,c', b'10101')"
        )
    };
    let nulls = |id: i32| format!("({id}{})", ", NULL".repeat(25));
    my(&format!("USE {db}; CREATE TABLE t ({columns}); INSERT INTO t VALUES {}, {};", values(1), nulls(2))).await?;
    let server = TestServer::start_with(&["--barrier-interval-ms", "100"])?;
    let eddy = server.connect().await?;
    eddy.batch_execute(&format!(
        "CREATE TABLE t (id INT PRIMARY KEY, ti SMALLINT, si SMALLINT, mi INT, bi BIGINT, ui BIGINT,
            ubi NUMERIC(20,0), flag BOOLEAN, d NUMERIC(12,3), f REAL, dbl DOUBLE PRECISION, vc VARCHAR, txt TEXT,
            ch VARCHAR, bl BYTEA, vb BYTEA, dt DATE, dtm TIMESTAMP, ts TIMESTAMPTZ, tm VARCHAR,
            yr INT, yu INT, js JSONB, en VARCHAR, st VARCHAR, bt INT) WITH ({}, table.name = 't')",
        connection_options(&db, 6001)
    ))
    .await?;
    // Row 1 came through the snapshot; rows 3 and 4 through the binlog.
    my(&format!("USE {db}; INSERT INTO t VALUES {}, {};", values(3), nulls(4))).await?;
    let query =
        "SELECT id, ti, si, mi, bi, ui, ubi, flag, d, f, dbl, vc, txt, ch, encode(bl, 'hex'), encode(vb, 'hex'),
        CAST(dt AS VARCHAR), CAST(dtm AS VARCHAR), round(extract(epoch FROM ts) * 1000), tm, yr, yu, js, en, st, bt FROM t";
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let r = rows(&eddy, query).await?;
        if r.len() == 4 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if got.len() != 4 {
        let p = rows(&eddy, "SELECT * FROM eddy_catalog.cdc_progress").await?;
        let s = rows(&eddy, "SELECT * FROM eddy_catalog.source_splits").await?;
        bail!("{got:?}\nprogress {p:?}\nsplits {s:?}\n{}", server.log());
    }
    let expected: Vec<String> = [
        "1",
        "-7",
        "-300",
        "-8000000",
        "-9000000000",
        "4000000000",
        "18446744073709551615",
        "t",
        "-12.345",
        "1.5",
        "2.25",
        "x'y ü",
        "long text",
        "abc",
        "00ff10",
        "cafe",
        "2024-02-29",
        "2024-01-02T03:04:05.123456",
        "1704164645250",
        "-01:02:03",
        "2024",
        "65535",
        "{\"k\": [1, 2]}",
        "it's",
        "a,c",
        "21",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The snapshot row and the streamed row read the same.
    assert_eq!(got[0], expected, "snapshot row");
    let mut streamed = expected.clone();
    streamed[0] = "3".into();
    assert_eq!(got[2], streamed, "streamed row");
    for (i, row) in [(1, &got[1]), (3, &got[3])] {
        assert!(row[1..].iter().all(|v| v == "NULL"), "row {i}: {row:?}");
    }
    let bad = rows(&eddy, "SELECT sum(bad_records) FROM eddy_catalog.source_splits").await?;
    assert_eq!(bad, vec![vec!["0".to_string()]]);

    // A value Eddy cannot store (a date MariaDB accepts but Arrow cannot read): the row is
    // counted with its binlog position, the table is marked unhealthy, and the stream goes on.
    my(&format!(
        "USE {db}; SET SESSION sql_mode = ''; INSERT INTO t (id, dt) VALUES (5, '0000-00-00'); INSERT INTO t (id) VALUES (6);"
    ))
    .await?;
    converges(&eddy, "SELECT id FROM t", &format!("SELECT id FROM {db}.t WHERE id <> 5"), Duration::from_secs(30))
        .await?;
    let bad = rows(&eddy, "SELECT bad_records, last_error FROM eddy_catalog.source_splits").await?;
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0][0], "1");
    assert!(bad[0][1].contains("binlog offset") && bad[0][1].contains("'0000-00-00' cannot be read"), "{bad:?}");
    let health = rows(&eddy, "SELECT healthy, phase FROM eddy_catalog.cdc_progress").await?;
    assert_eq!(health, vec![vec!["f".to_string(), "streaming".to_string()]]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_and_dropped_connections_lose_nothing() -> Result<()> {
    let db = upstream_db("crash").await?;
    my(&format!(
        "USE {db};
         CREATE TABLE accounts (id INT PRIMARY KEY, grp INT NOT NULL, balance BIGINT NOT NULL);
         INSERT INTO accounts SELECT seq, seq % 10, 100 FROM seq_1_to_2000;
         CREATE TABLE bulk (id INT PRIMARY KEY, v INT NOT NULL);
         INSERT INTO bulk SELECT seq, 0 FROM seq_1_to_30000;"
    ))
    .await?;
    let mut server = TestServer::start_with(&["--barrier-interval-ms", "50", "--checkpoint-interval-ms", "200"])?;
    let eddy = server.connect().await?;
    eddy.batch_execute(&format!(
        "CREATE TABLE accounts (id INT PRIMARY KEY, grp INT NOT NULL, balance BIGINT NOT NULL)
           WITH ({}, table.name = 'accounts');
         CREATE TABLE bulk (id INT PRIMARY KEY, v INT NOT NULL) WITH ({}, table.name = 'bulk');",
        connection_options(&db, 6101),
        connection_options(&db, 6102)
    ))
    .await?;
    let view = "SELECT grp, count(*) AS n, sum(balance) AS total, min(balance) AS lo, max(balance) AS hi FROM accounts GROUP BY grp";
    eddy.batch_execute(&format!("CREATE MATERIALIZED VIEW totals AS {view}")).await?;
    drop(eddy);

    // Transfers in small transactions (balance moves between accounts), new and closed
    // accounts, and transactions of 30000 rows (larger than a chunk), while Eddy is killed
    // and its binlog connection is cut.
    let script_db = db.clone();
    let writer = tokio::spawn(async move {
        for part in 0..6i64 {
            let mut script = format!("USE {script_db};");
            for i in part * 250..(part + 1) * 250 {
                let (a, b) = (1 + (i * 7919) % 2000, 1 + (i * 104729) % 2000);
                script.push_str(&format!(
                    "BEGIN; UPDATE accounts SET balance = balance - 5 WHERE id = {a};
                     UPDATE accounts SET balance = balance + 5 WHERE id = {b}; COMMIT;"
                ));
                if i % 10 == 0 {
                    script.push_str(&format!("INSERT INTO accounts VALUES ({}, {}, 1);", 10_000 + i, i % 10));
                }
                if i % 25 == 0 {
                    script.push_str(&format!("DELETE FROM accounts WHERE id = {};", 1 + i));
                }
                if i % 100 == 0 {
                    script.push_str(&format!("UPDATE bulk SET v = v + {};", i + 1));
                }
                script.push_str("DO SLEEP(0.002);");
            }
            my(&script).await?;
        }
        anyhow::Ok(())
    });
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        if round == 1 {
            // A dropped connection: the server ends the binlog dumps; Eddy reconnects.
            let dumps = my("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'").await?;
            for id in dumps {
                let _ = my(&format!("KILL {}", id[0])).await;
            }
        } else {
            server.kill();
            server.restart()?;
        }
    }
    writer.await??;
    let eddy = server.connect().await?;
    let all = "SELECT id, grp, balance FROM accounts";
    converges(&eddy, all, &format!("SELECT id, grp, balance FROM {db}.accounts"), Duration::from_secs(60)).await?;
    let upstream_view = view.replace("FROM accounts", &format!("FROM {db}.accounts"));
    converges(&eddy, "SELECT * FROM totals", &upstream_view, Duration::from_secs(10)).await?;
    let bulk = "SELECT v, count(*) FROM bulk GROUP BY v";
    converges(&eddy, bulk, &format!("SELECT v, count(*) FROM {db}.bulk GROUP BY v"), Duration::from_secs(60)).await?;
    let bad = rows(&eddy, "SELECT sum(bad_records) FROM eddy_catalog.source_splits").await?;
    assert_eq!(bad, vec![vec!["0".to_string()]]);
    eddy.batch_execute("DROP MATERIALIZED VIEW totals; DROP TABLE accounts; DROP TABLE bulk").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_upstream_are_followed_or_stop_the_table() -> Result<()> {
    let db = upstream_db("schema").await?;
    my(&format!(
        "USE {db}; CREATE TABLE s (id INT PRIMARY KEY, v INT, w TEXT); INSERT INTO s VALUES (1, 1, 'a');
         CREATE TABLE tr (id INT PRIMARY KEY); INSERT INTO tr VALUES (1);"
    ))
    .await?;
    let server = TestServer::start_with(&["--barrier-interval-ms", "100"])?;
    let eddy = server.connect().await?;
    eddy.batch_execute(&format!(
        "CREATE TABLE s (id INT PRIMARY KEY, v INT, w VARCHAR) WITH ({}, table.name = 's');
         CREATE TABLE tr (id INT PRIMARY KEY) WITH ({}, table.name = 'tr');",
        connection_options(&db, 6201),
        connection_options(&db, 6202)
    ))
    .await?;
    // A compatible change: a new column Eddy does not declare.
    my(&format!(
        "USE {db}; ALTER TABLE s ADD COLUMN extra INT; INSERT INTO s VALUES (2, 2, 'b', 9); UPDATE s SET v = 10 WHERE id = 1;"
    ))
    .await?;
    let q = "SELECT id, v, w FROM s";
    converges(&eddy, q, &format!("SELECT id, v, w FROM {db}.s"), Duration::from_secs(30)).await?;
    // Incompatible ones: a declared column disappears; a table is truncated. Each table stops,
    // says why, and keeps its last correct rows.
    my(&format!("USE {db}; ALTER TABLE s DROP COLUMN w; INSERT INTO s VALUES (3, 3, 0); TRUNCATE TABLE tr;")).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = rows(&eddy, "SELECT upstream_table, healthy, phase, last_error FROM eddy_catalog.cdc_progress").await?;
        if p.len() == 2 && p.iter().all(|r| r[1] == "f") {
            assert_eq!(p[0][2], "stopped");
            assert!(p[0][3].contains("no column \"w\""), "{p:?}");
            assert!(p[1][3].contains("was truncated"), "{p:?}");
            break;
        }
        if Instant::now() > deadline {
            bail!("the tables did not stop: {p:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rows(&eddy, "SELECT count(*) FROM s").await?, vec![vec!["2".to_string()]]);
    assert_eq!(rows(&eddy, "SELECT count(*) FROM tr").await?, vec![vec!["1".to_string()]]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_refused_at_create_with_the_fix() -> Result<()> {
    let db = upstream_db("bad").await?;
    my(&format!(
        "USE {db}; CREATE TABLE keyless (a INT, b TEXT); CREATE TABLE hidden (id INT PRIMARY KEY);
         CREATE USER IF NOT EXISTS 'eddy_pw'@'%' IDENTIFIED BY 'secret';
         GRANT SELECT ON {db}.* TO 'eddy_pw'@'%';"
    ))
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
    let base = |user: &str, password: &str, table: &str| {
        format!(
            "connector = 'mysql-cdc', hostname = '127.0.0.1', port = '3306', username = '{user}', \
             password = '{password}', database.name = '{db}', server.id = '6301', table.name = '{table}'"
        )
    };
    let e = attempt("id INT PRIMARY KEY", base("eddy_pw", "wrong", "hidden")).await?;
    assert!(e.starts_with("28") && e.contains("check the username and password"), "{e}");
    // The right password gets further: this user may not read the binlog.
    let e = attempt("id INT PRIMARY KEY", base("eddy_pw", "secret", "hidden")).await?;
    assert!(e.contains("REPLICATION"), "{e}");
    let e = attempt("id INT PRIMARY KEY", base("root", "", "missing")).await?;
    assert!(e.contains(&format!("{db}.missing does not exist")) && e.contains("table.name"), "{e}");
    let e = attempt("a INT PRIMARY KEY, b VARCHAR", base("root", "", "keyless")).await?;
    assert!(e.contains("no primary key"), "{e}");
    let e = attempt("id INT PRIMARY KEY, nope INT", base("root", "", "hidden")).await?;
    assert!(e.contains("no column \"nope\""), "{e}");
    let e = attempt("id BYTEA PRIMARY KEY", base("root", "", "hidden")).await?;
    assert!(e.contains("cannot be read as"), "{e}");
    let e = attempt("id INT PRIMARY KEY", base("root", "", "hidden").replace("port = '3306'", "port = '1'")).await?;
    assert!(e.contains("cannot connect to MySQL at 127.0.0.1:1"), "{e}");
    let e = attempt("id INT PRIMARY KEY", format!("{}, slot.name = 'x'", base("root", "", "hidden"))).await?;
    assert!(e.contains("unknown option \"slot.name\""), "{e}");
    my("DROP USER IF EXISTS 'eddy_pw'@'%'").await?;
    Ok(())
}
