//! The crash test: `kill -9` the real server at random moments under a mixed workload, start
//! it again on the same data directory, and check that nothing acknowledged was lost, nothing
//! was counted twice, and every view equals a batch recomputation over the input it absorbed.
//!
//! The workload: a client running random `INSERT`/`UPDATE`/`DELETE` statements against two
//! tables (it keeps its own record of every acknowledged statement), a Nexmark generator
//! feeding a stored table and a stream source, and views over them: grouped aggregates with
//! min/max, an inner and an outer join, a tumbling window, top-N, an `EMIT ON WINDOW CLOSE`
//! window, and aggregates over the stream. Some iterations create a view just before the
//! kill, so a crash also lands mid-backfill.
//!
//! After each restart: the tables hold exactly the acknowledged statements (the one in flight
//! at the kill may or may not have committed), and each view over tables equals its query run
//! as a batch, in the same statement, so both read one snapshot. When the generators are
//! exhausted, the stream views must equal the same queries over the stored copy of the stream:
//! every event counted exactly once across all the restarts.
//!
//! `EDDY_CRASH_ITERATIONS` (default 6) and `EDDY_CRASH_SEED` (default 1) choose the run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eddy_sql_tests::TestServer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::{Client, SimpleQueryMessage};

/// 5 000 events/s for 12 s: the generators are still producing during the first kills, at a
/// rate a debug build keeps up with (a saturated pipeline would only slow the statements down).
const GENERATOR: &str = "connector = 'nexmark', nexmark.table.type = 'Bid', nexmark.event.num = '60000', \
                         nexmark.min.event.gap.in.ns = '200000'";

/// Expected bids: the generator's event mix has 46 bids in every 50 events.
const EXPECTED_BIDS: i64 = 60_000 / 50 * 46;

/// A view over tables and the batch query it must equal.
struct Checked {
    name: &'static str,
    query: &'static str,
}

const TABLE_VIEWS: &[Checked] = &[
    Checked {
        name: "v_accounts",
        query: "SELECT grp, count(*) AS n, sum(balance) AS total, min(balance) AS lo, max(balance) AS hi \
                FROM accounts GROUP BY grp",
    },
    Checked {
        name: "v_join",
        query: "SELECT a.grp, count(*) AS n, sum(t.amount) AS total FROM accounts a JOIN transfers t \
                ON a.grp = t.grp GROUP BY a.grp",
    },
    Checked {
        name: "v_left",
        query: "SELECT a.id, a.balance, t.amount FROM accounts a LEFT JOIN transfers t ON a.id = t.id",
    },
    Checked {
        name: "v_window",
        query: "SELECT window_start, count(*) AS n, max(price) AS hi, sum(price) AS total \
                FROM TUMBLE(bid_t, date_time, INTERVAL '2' SECOND) GROUP BY window_start",
    },
    Checked {
        name: "v_top",
        query: "SELECT auction, price, bidder FROM (SELECT auction, price, bidder, row_number() OVER \
                (PARTITION BY auction ORDER BY price DESC, bidder) AS rn FROM bid_t) WHERE rn <= 2",
    },
];

/// Created just before some kills; checked like the others once it exists.
const LATE_VIEW: Checked = Checked {
    name: "v_late",
    query: "SELECT auction % 50 AS bucket, count(*) AS n, sum(price) AS total FROM bid_t GROUP BY auction % 50",
};

/// Views over the stream source: compared, once the generators are done, with the same query
/// over the stored table fed by an identical generator.
const STREAM_VIEWS: &[(&str, &str)] = &[
    (
        "s_buckets",
        "SELECT auction % 100 AS bucket, count(*) AS n, sum(price) AS total, max(price) AS hi FROM {} GROUP BY auction % 100",
    ),
    ("s_count", "SELECT count(*) AS n, sum(price) AS total FROM {}"),
];

type Row = Vec<String>;

fn rows(messages: Vec<SimpleQueryMessage>) -> Vec<Row> {
    let mut out: Vec<Row> = messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// The rows of a view and of its batch query, read by one statement (one snapshot).
async fn view_and_batch(client: &Client, view: &str, query: &str) -> Result<(Vec<Row>, Vec<Row>)> {
    let sql = format!("SELECT 'v' AS side, * FROM {view} UNION ALL SELECT 'b' AS side, * FROM ({query}) AS batch");
    let all = rows(client.simple_query(&sql).await.with_context(|| format!("reading {view}"))?);
    let (mut v, mut b) = (Vec::new(), Vec::new());
    for mut r in all {
        let side = r.remove(0);
        if side == "v" { v.push(r) } else { b.push(r) }
    }
    Ok((v, b))
}

fn differ(view: &str, v: &[Row], b: &[Row]) -> String {
    let only_view: Vec<_> = v.iter().filter(|r| !b.contains(r)).take(5).collect();
    let only_batch: Vec<_> = b.iter().filter(|r| !v.contains(r)).take(5).collect();
    format!(
        "{view}: {} rows in the view, {} in the batch; only in view {only_view:?}; only in batch {only_batch:?}",
        v.len(),
        b.len()
    )
}

/// Concurrent writers, each on its own ids (`id % WRITERS`): their statements commit together
/// (group commit), and each knows exactly what it committed.
const WRITERS: i64 = 3;

/// What one writer knows it committed.
#[derive(Default, Clone)]
struct Model {
    accounts: BTreeMap<i64, (i64, i64)>,
    transfers: BTreeMap<i64, (i64, i64)>,
    /// The last id handed out; this writer's ids are `writer + k * WRITERS`.
    next_id: i64,
}

/// One statement and its effect on the model.
#[derive(Clone)]
enum Change {
    PutAccount(i64, i64, i64),
    DeleteAccount(i64),
    PutTransfer(i64, i64, i64),
    DeleteTransfer(i64),
}

impl Model {
    fn apply(&mut self, c: &Change) {
        match c {
            Change::PutAccount(id, g, b) => {
                self.accounts.insert(*id, (*g, *b));
            }
            Change::DeleteAccount(id) => {
                self.accounts.remove(id);
            }
            Change::PutTransfer(id, g, a) => {
                self.transfers.insert(*id, (*g, *a));
            }
            Change::DeleteTransfer(id) => {
                self.transfers.remove(id);
            }
        }
    }

    /// A random statement that succeeds against the current contents.
    fn next_statement(&mut self, rng: &mut StdRng) -> (String, Change) {
        let existing = |m: &BTreeMap<i64, (i64, i64)>, rng: &mut StdRng| -> Option<i64> {
            if m.is_empty() {
                return None;
            }
            m.keys().nth(rng.random_range(0..m.len())).copied()
        };
        match rng.random_range(0..10) {
            0..=2 => {
                self.next_id += WRITERS;
                let (id, g, b) = (self.next_id, rng.random_range(0..8), rng.random_range(-50..1000));
                (format!("INSERT INTO accounts VALUES ({id}, {g}, {b})"), Change::PutAccount(id, g, b))
            }
            3 | 4 => match existing(&self.accounts, rng) {
                Some(id) => {
                    let g = self.accounts.get(&id).map_or(0, |x| x.0);
                    let b = rng.random_range(-50..1000);
                    (format!("UPDATE accounts SET balance = {b} WHERE id = {id}"), Change::PutAccount(id, g, b))
                }
                None => ("SELECT 1".into(), Change::DeleteAccount(-1)),
            },
            5 => match existing(&self.accounts, rng) {
                Some(id) => (format!("DELETE FROM accounts WHERE id = {id}"), Change::DeleteAccount(id)),
                None => ("SELECT 1".into(), Change::DeleteAccount(-1)),
            },
            6..=8 => {
                self.next_id += WRITERS;
                // Transfer ids sometimes equal account ids, for the outer join.
                let (id, g, a) = (self.next_id, rng.random_range(0..8), rng.random_range(1..100));
                (format!("INSERT INTO transfers VALUES ({id}, {g}, {a})"), Change::PutTransfer(id, g, a))
            }
            _ => match existing(&self.transfers, rng) {
                Some(id) => (format!("DELETE FROM transfers WHERE id = {id}"), Change::DeleteTransfer(id)),
                None => ("SELECT 1".into(), Change::DeleteTransfer(-1)),
            },
        }
    }
}

async fn table_rows(client: &Client, sql: &str) -> Result<BTreeMap<i64, (i64, i64)>> {
    let mut out = BTreeMap::new();
    for r in rows(client.simple_query(sql).await?) {
        let num = |i: usize| r[i].parse::<i64>().with_context(|| format!("not a number: {r:?}"));
        out.insert(num(0)?, (num(1)?, num(2)?));
    }
    Ok(out)
}

/// Checks the rows of writer `writer` against its model (its statement in doubt applied or
/// not) and returns the model that matched.
async fn check_tables(client: &Client, writer: i64, model: &Model, in_doubt: Option<&Change>) -> Result<Model> {
    let mine = format!("WHERE id % {WRITERS} = {writer}");
    let accounts = table_rows(client, &format!("SELECT id, grp, balance FROM accounts {mine}")).await?;
    let transfers = table_rows(client, &format!("SELECT id, grp, amount FROM transfers {mine}")).await?;
    let mut candidates = vec![model.clone()];
    if let Some(c) = in_doubt {
        let mut applied = model.clone();
        applied.apply(c);
        candidates.push(applied);
    }
    for m in candidates {
        if m.accounts == accounts && m.transfers == transfers {
            return Ok(m);
        }
    }
    bail!(
        "writer {writer}: tables differ from its acknowledged statements: {} accounts (expected {}), {} transfers \
         (expected {})",
        accounts.len(),
        model.accounts.len(),
        transfers.len(),
        model.transfers.len()
    )
}

async fn check_views(client: &Client, late_view: bool) -> Result<()> {
    let mut views: Vec<&Checked> = TABLE_VIEWS.iter().collect();
    if late_view {
        views.push(&LATE_VIEW);
    }
    for c in views {
        let (v, b) = view_and_batch(client, c.name, c.query).await?;
        if v != b {
            bail!("{}", differ(c.name, &v, &b));
        }
    }
    // Each window the watermark closed was emitted once, with its final value.
    let (v, b) = view_and_batch(
        client,
        "v_closed",
        "SELECT window_start, count(*) AS n FROM TUMBLE(bid_t, date_time, INTERVAL '2' SECOND) GROUP BY window_start",
    )
    .await?;
    if let Some(missing) = v.iter().find(|r| !b.contains(r)) {
        bail!("v_closed holds {missing:?}, which the batch does not: {}", differ("v_closed", &v, &b));
    }
    Ok(())
}

async fn setup(client: &Client) -> Result<()> {
    client
        .batch_execute(&format!(
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY, grp BIGINT, balance BIGINT);
             CREATE TABLE transfers (id BIGINT PRIMARY KEY, grp BIGINT, amount BIGINT);
             CREATE TABLE bid_t (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP,
               WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH ({GENERATOR});
             CREATE SOURCE bid_s (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP,
               WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH ({GENERATOR});
             CREATE MATERIALIZED VIEW v_closed AS SELECT window_start, count(*) AS n
               FROM TUMBLE(bid_t, date_time, INTERVAL '2' SECOND) GROUP BY window_start EMIT ON WINDOW CLOSE;"
        ))
        .await?;
    for c in TABLE_VIEWS {
        client.batch_execute(&format!("CREATE MATERIALIZED VIEW {} AS {}", c.name, c.query)).await?;
    }
    for (name, query) in STREAM_VIEWS {
        client.batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {}", query.replace("{}", "bid_s"))).await?;
    }
    Ok(())
}

/// Runs statements until the connection breaks (the kill); returns the model of acknowledged
/// statements, the statement in flight when the connection broke, and how many were
/// acknowledged.
async fn workload(client: Client, mut model: Model, seed: u64) -> (Model, Option<Change>, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acknowledged = 0;
    loop {
        let (sql, change) = model.next_statement(&mut rng);
        match client.batch_execute(&sql).await {
            Ok(()) => {
                model.apply(&change);
                acknowledged += 1;
            }
            Err(_) => return (model, Some(change), acknowledged),
        }
    }
}

async fn wait_for_generators(client: &Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let r = rows(client.simple_query("SELECT count(*) FROM eddy_catalog.source_splits WHERE NOT finished").await?);
        if r.first().and_then(|r| r.first()).map(String::as_str) == Some("0") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the generators did not finish in time");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_loses_nothing_and_counts_nothing_twice() -> Result<()> {
    let iterations: u32 = std::env::var("EDDY_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let seed: u64 = std::env::var("EDDY_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut server = TestServer::start_with(&["--barrier-interval-ms", "50", "--checkpoint-interval-ms", "200"])?;
    setup(&server.connect().await?).await?;
    let mut models: Vec<Model> = (0..WRITERS).map(|w| Model { next_id: w, ..Model::default() }).collect();
    let mut late_view = false;
    let mut statements = 0usize;
    let started = Instant::now();
    for iteration in 0..iterations {
        let mut workers = Vec::new();
        for model in &models {
            workers.push(tokio::spawn(workload(server.connect().await?, model.clone(), rng.random())));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1200))).await;
        // Every third iteration the kill lands while a view is created (and backfilled).
        let creating = if !late_view && iteration % 3 == 1 {
            let client = server.connect().await?;
            let sql = format!("CREATE MATERIALIZED VIEW {} AS {}", LATE_VIEW.name, LATE_VIEW.query);
            Some(tokio::spawn(async move { client.batch_execute(&sql).await.is_ok() }))
        } else {
            None
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        server.kill();
        let mut outcomes = Vec::new();
        for w in workers {
            outcomes.push(w.await?);
        }
        if let Some(c) = creating {
            // Created or not, either is fine; what exists must be right.
            let _ = c.await;
        }
        server.restart().with_context(|| format!("iteration {iteration}: restart"))?;
        let client = server.connect().await?;
        for (writer, (acked, in_doubt, count)) in outcomes.into_iter().enumerate() {
            statements += count;
            let matched = check_tables(&client, writer as i64, &acked, in_doubt.as_ref())
                .await
                .with_context(|| format!("iteration {iteration}; server log:\n{}", server.log()))?;
            models[writer] = matched;
        }
        late_view = !rows(client.simple_query("SHOW MATERIALIZED VIEWS").await?).iter().all(|r| r[0] != LATE_VIEW.name);
        check_views(&client, late_view)
            .await
            .with_context(|| format!("iteration {iteration}; server log:\n{}", server.log()))?;
    }
    // Every event of the generators, exactly once, however many times they were interrupted.
    let client = server.connect().await?;
    wait_for_generators(&client).await?;
    let count = rows(client.simple_query("SELECT count(*) FROM bid_t").await?);
    assert_eq!(count, vec![vec![EXPECTED_BIDS.to_string()]], "bids stored in bid_t");
    for (name, query) in STREAM_VIEWS {
        let (v, b) = view_and_batch(&client, name, &query.replace("{}", "bid_t")).await?;
        assert!(v == b, "{}", differ(name, &v, &b));
    }
    check_views(&client, late_view).await?;
    eprintln!(
        "crash test: {iterations} kill -9 iterations survived (seed {seed}) in {:.1?}; {statements} statements \
         acknowledged to {WRITERS} writers, {} accounts and {} transfers left",
        started.elapsed(),
        models.iter().map(|m| m.accounts.len()).sum::<usize>(),
        models.iter().map(|m| m.transfers.len()).sum::<usize>()
    );
    Ok(())
}

/// A server with a table, a view and some rows, stopped cleanly.
async fn stopped_server_with_data() -> Result<TestServer> {
    let mut server = TestServer::start()?;
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE t (k INT PRIMARY KEY, v TEXT);
             INSERT INTO t SELECT x, repeat('x', 200) FROM generate_series(1, 20000) AS s(x);
             CREATE MATERIALIZED VIEW m AS SELECT count(*) AS n FROM t;",
        )
        .await?;
    server.stop();
    Ok(server)
}

fn overwrite(path: &std::path::Path, offset: u64, bytes: &[u8]) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_is_refused_and_left_as_it_was() -> Result<()> {
    // A damaged header: nothing can be trusted.
    let mut server = stopped_server_with_data().await?;
    let store = server.data_dir().join("eddy.redb");
    overwrite(&store, 0, b"this is not a store")?;
    let before = std::fs::read(&store)?;
    let err = server.restart().err().context("eddy started over a damaged store")?;
    let message = format!("{err:#}");
    assert!(message.contains("cannot open") && message.contains("eddy.redb"), "{message}");
    assert!(std::fs::read(&store)? == before, "the damaged store was modified");

    // Pages overwritten in the middle of the file: found by verifying the store on start.
    let mut server = stopped_server_with_data().await?;
    let store = server.data_dir().join("eddy.redb");
    let len = std::fs::metadata(&store)?.len();
    for k in 1..8u64 {
        overwrite(&store, len * k / 8 / 4096 * 4096, &[0x5a; 4096])?;
    }
    let err = server.restart_with(&["--verify-data-dir"]).err().context("eddy started over damaged pages")?;
    let message = format!("{err:#}");
    assert!(message.contains("damaged") || message.contains("orrupt"), "{message}");
    assert!(!message.contains("panicked"), "a damaged page must be an error, not a panic: {message}");

    // A store that disappeared from its data directory is not silently replaced.
    let mut server = stopped_server_with_data().await?;
    std::fs::remove_file(server.data_dir().join("eddy.redb"))?;
    let err = server.restart().err().context("eddy started empty in place of a lost store")?;
    assert!(format!("{err:#}").contains("is missing"), "{err:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_start_of_an_intact_store_keeps_everything() -> Result<()> {
    let mut server = stopped_server_with_data().await?;
    server.restart_with(&["--verify-data-dir"])?;
    let client = server.connect().await?;
    assert_eq!(rows(client.simple_query("SELECT n FROM m").await?), vec![vec!["20000".to_string()]]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_objects_free_their_space_for_reuse() -> Result<()> {
    let server = TestServer::start()?;
    let client = server.connect().await?;
    let store = server.data_dir().join("eddy.redb");
    let fill = "CREATE TABLE big (id BIGINT PRIMARY KEY, k BIGINT, pad VARCHAR);
                INSERT INTO big SELECT x, x % 1000, repeat('p', 100) FROM generate_series(1, 30000) AS s(x);
                CREATE MATERIALIZED VIEW big_agg AS SELECT k, count(*) AS n, max(pad) AS m FROM big GROUP BY k;
                CREATE MATERIALIZED VIEW big_join AS SELECT a.id, b.k FROM big a JOIN big b ON a.id = b.id;";
    client.batch_execute(fill).await?;
    let first = std::fs::metadata(&store)?.len();
    // The same objects dropped and created again, several times: the store reuses the space
    // the dropped rows and operator state had, so it does not grow with every round.
    for _ in 0..4 {
        client.batch_execute("DROP TABLE big CASCADE").await?;
        client.batch_execute(fill).await?;
    }
    let last = std::fs::metadata(&store)?.len();
    assert!(last < first * 2, "the store grew from {first} to {last} bytes over four drop-and-refill rounds");
    let n = rows(client.simple_query("SELECT sum(n) FROM big_agg").await?);
    assert_eq!(n, vec![vec!["30000".to_string()]]);
    Ok(())
}
