//! `eddy-bench`: end-to-end benchmarks against a real server process.
//!
//! The server runs as a child process (this same binary in `serve` mode), so its memory is
//! measured on its own. Figures are printed, never asserted.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};

mod cdc;
mod freshness;
mod kafka;

#[derive(Debug, Parser)]
#[command(about = "Eddy end-to-end benchmarks")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a server (used by the benchmarks themselves).
    Serve {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        data_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1000)]
        barrier_ms: u64,
        /// Checkpoint interval; 0 turns interval checkpoints off.
        #[arg(long, default_value_t = 1000)]
        checkpoint_ms: u64,
        #[arg(long)]
        memory_limit: Option<String>,
    },
    /// Run Nexmark queries (`benches/nexmark/*.sql`) on the built-in generator into a blackhole
    /// sink; report events/s, events/s per core of CPU time, peak memory and freshness.
    Nexmark {
        /// Events per query.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Queries to run (file stems, e.g. q0,q5_hop); all by default.
        #[arg(long, value_delimiter = ',')]
        queries: Vec<String>,
        /// Generator splits (parallel source readers); defaults to the number of cores.
        #[arg(long)]
        splits: Option<usize>,
        /// Barrier interval of the server, in milliseconds.
        #[arg(long, default_value_t = 100)]
        barrier_ms: u64,
        /// Checkpoint interval of the server, in milliseconds; 0 turns interval checkpoints off
        /// (to measure what checkpoints cost).
        #[arg(long, default_value_t = 1000)]
        checkpoint_ms: u64,
        /// The server's --memory-limit (e.g. 256MB); unlimited by default.
        #[arg(long)]
        memory_limit: Option<String>,
    },
    /// Recovery time after `kill -9` against the size of the state: fills a table behind an
    /// aggregate with min/max and a join (both keep every row in their state), kills the
    /// server, and times the restart until the views answer.
    Recovery {
        /// Table sizes to measure, in rows.
        #[arg(long, value_delimiter = ',', default_values_t = vec![250_000u64, 1_000_000, 4_000_000])]
        rows: Vec<u64>,
        /// The server's --memory-limit while recovering (unlimited by default).
        #[arg(long)]
        memory_limit: Option<String>,
    },
    /// Freshness of live results: p50/p99 from an INSERT (or a generated row) to its change
    /// arriving at a SUBSCRIBE client at a steady rate, then p50/p99 of a point SELECT by key
    /// on a view.
    Freshness {
        /// Where changes come from: single-row INSERTs, or the datagen generator.
        #[arg(long, value_enum, default_value_t = freshness::Source::Insert)]
        source: freshness::Source,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Single-row INSERTs per second over all writers (or generated rows per second).
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 4)]
        writers: usize,
        #[arg(long, default_value_t = 1000)]
        keys: i64,
        /// Point SELECTs to time.
        #[arg(long, default_value_t = 5000)]
        reads: usize,
        #[arg(long, default_value_t = 1000)]
        barrier_ms: u64,
    },
    /// Nexmark bids through Kafka: pre-load a topic with JSON bids, measure consume → view
    /// events/s, and compare with the built-in generator.
    Kafka {
        /// The broker: `tansu` (a broker process, installed by scripts/setup-kafka.sh) or
        /// `mock` (librdkafka's in-process mock cluster; it keeps only the newest ~5 MB per
        /// partition, so it refuses more than 20 K bids per partition).
        #[arg(long, value_enum, default_value_t = kafka::Broker::Tansu)]
        broker: kafka::Broker,
        /// Bids to pre-load.
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        /// Topic partitions (= source splits).
        #[arg(long, default_value_t = 2)]
        partitions: i32,
        /// The query measured, over `bid`.
        #[arg(long, default_value = "SELECT auction, bidder, price, date_time FROM bid")]
        query: String,
    },
    /// INSERT batches into a table behind a GROUP BY view; report rows/s, statement latency
    /// (an INSERT returns once its rows are visible in the view) and server memory.
    Inserts {
        /// Seconds to run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Concurrent writer connections.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Rows per INSERT statement.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Distinct group keys in the view.
        #[arg(long, default_value_t = 1000)]
        keys: i64,
        /// Target rows per second over all writers (0 = as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Postgres CDC into a view: snapshot and streaming rows/s, commit-to-visible latency.
    Cdc {
        /// Upstream Postgres (libpq style, without dbname); needs wal_level=logical.
        #[arg(long, default_value = "host=127.0.0.1 port=5432 user=postgres")]
        upstream: String,
        /// Rows in the snapshot, and again streamed.
        #[arg(long, default_value_t = 200_000)]
        rows: i64,
        /// Rows per upstream transaction while streaming.
        #[arg(long, default_value_t = 1000)]
        batch: i64,
        /// Single-row transactions timed for latency.
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Barrier interval of the server, in milliseconds.
        #[arg(long, default_value_t = 10)]
        barrier_ms: u64,
        /// Upstream tables, read through one source (and so one replication slot); rows are
        /// spread over them by id.
        #[arg(long, default_value_t = 1)]
        tables: usize,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Serve { listen, data_dir, barrier_ms, checkpoint_ms, memory_limit } => {
            tracing_subscriber::fmt().with_env_filter("warn").init();
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let memory_limit =
                memory_limit.map(|m| eddy_executor::memory::parse_size(&m)).transpose().map_err(anyhow::Error::msg)?;
            let config = eddy_server::EngineConfig {
                data_dir,
                barrier_interval: Duration::from_millis(barrier_ms),
                checkpoint_interval: Duration::from_millis(checkpoint_ms),
                verify_data_dir: false,
                memory_limit,
                parallelism: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            };
            rt.block_on(eddy_server::serve(listen, config, async {
                let _ = tokio::signal::ctrl_c().await;
            }))
        }
        Cmd::Nexmark { events, queries, splits, barrier_ms, checkpoint_ms, memory_limit } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let options = ServeOptions { barrier_ms, checkpoint_ms, memory_limit };
            rt.block_on(nexmark(events, queries, splits, options))
        }
        Cmd::Recovery { rows, memory_limit } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(recovery(rows, memory_limit))
        }
        Cmd::Freshness { source, seconds, rate, writers, keys, reads, barrier_ms } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(freshness::run(source, seconds, rate, writers, keys, reads, barrier_ms))
        }
        Cmd::Kafka { broker, events, partitions, query } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(kafka::run(broker, events, partitions, query))
        }
        Cmd::Inserts { seconds, writers, batch, keys, rate } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(inserts(seconds, writers, batch, keys, rate))
        }
        Cmd::Cdc { upstream, rows, batch, samples, barrier_ms, tables } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(cdc::run(upstream, rows, batch, samples, barrier_ms, tables.max(1)))
        }
    }
}

/// How the benchmarked server runs.
#[derive(Debug, Clone)]
struct ServeOptions {
    barrier_ms: u64,
    checkpoint_ms: u64,
    memory_limit: Option<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self { barrier_ms: 1000, checkpoint_ms: 1000, memory_limit: None }
    }
}

struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Result<Self> {
        Self::start_with(ServeOptions::default())
    }

    fn start_with(options: ServeOptions) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (child, port) = Self::spawn(&dir, &options)?;
        Ok(Self { child, port, dir })
    }

    fn spawn(dir: &tempfile::TempDir, options: &ServeOptions) -> Result<(Child, u16)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command = Command::new(std::env::current_exe()?);
        command.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--barrier-ms",
            &options.barrier_ms.to_string(),
            "--checkpoint-ms",
            &options.checkpoint_ms.to_string(),
        ]);
        if let Some(m) = &options.memory_limit {
            command.args(["--memory-limit", m]);
        }
        let mut child = command.arg("--data-dir").arg(dir.path().join("data")).stdout(Stdio::null()).spawn()?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                bail!("server did not start");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((child, port))
    }

    /// `kill -9`, then starts again on the same data directory; returns how long the start
    /// took until the server accepted connections (it restores every job before that).
    fn crash_and_restart(&mut self, options: ServeOptions) -> Result<Duration> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let started = Instant::now();
        let (child, port) = Self::spawn(&self.dir, &options)?;
        self.child = child;
        self.port = port;
        Ok(started.elapsed())
    }

    /// Bytes of the data directory.
    fn data_bytes(&self) -> u64 {
        let dir = self.dir.path().join("data");
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }

    async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=root dbname=dev", self.port),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// CPU time (user + system) the server process used so far, in seconds.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the command name (which may contain spaces) start at ") ".
        let rest = stat.rsplit_once(") ")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / 100.0)
    }

    /// Peak resident memory of the server process, in MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn inserts(seconds: u64, writers: usize, batch: usize, keys: i64, rate: u64) -> Result<()> {
    let server = Server::start()?;
    let admin = server.connect().await?;
    admin
        .batch_execute(
            "CREATE TABLE events (id BIGINT PRIMARY KEY, k BIGINT, v BIGINT);
             CREATE MATERIALIZED VIEW per_key AS
               SELECT k, count(*) AS n, sum(v) AS total, max(v) AS biggest FROM events GROUP BY k;",
        )
        .await?;
    let next_id = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let per_writer_interval =
        if rate == 0 { None } else { Some(Duration::from_secs_f64(batch as f64 * writers as f64 / rate as f64)) };
    let mut handles = Vec::new();
    for w in 0..writers {
        let first_seed = w as u64;
        let client = server.connect().await?;
        let next_id = next_id.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(first_seed);
            let mut next_start = Instant::now();
            while Instant::now() < deadline {
                if let Some(interval) = per_writer_interval {
                    tokio::time::sleep_until(next_start.into()).await;
                    next_start += interval;
                }
                let first = next_id.fetch_add(batch as u64, Ordering::Relaxed);
                let mut sql = String::with_capacity(batch * 32);
                sql.push_str("INSERT INTO events VALUES ");
                for i in 0..batch as u64 {
                    if i > 0 {
                        sql.push(',');
                    }
                    let k = rng.random_range(0..keys);
                    let v = rng.random_range(0..1_000_000);
                    sql.push_str(&format!("({},{k},{v})", first + i));
                }
                let started = Instant::now();
                client.batch_execute(&sql).await?;
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await.context("writer task")??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let rows = latencies.len() as u64 * batch as u64;
    let total: i64 = admin.query_one("SELECT sum(n)::BIGINT FROM per_key", &[]).await?.get(0);
    if total as u64 != rows {
        bail!("the view counts {total} rows but {rows} were inserted");
    }
    println!("inserts into a GROUP BY view ({keys} keys), {writers} writers x {batch} rows per INSERT, {seconds} s");
    println!("  rows/s            {:.0}", rows as f64 / elapsed.as_secs_f64());
    println!("  statements/s      {:.0}", latencies.len() as f64 / elapsed.as_secs_f64());
    println!(
        "  INSERT -> visible p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    if let Some(mib) = server.peak_rss_mib() {
        println!("  server peak RSS   {mib:.0} MiB");
    }
    println!("  view checked: {total} rows counted");
    Ok(())
}

fn nexmark_queries() -> Result<Vec<(String, String)>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nexmark");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let file = path.to_string_lossy();
        if path.extension().is_some_and(|e| e == "sql")
            && !file.ends_with(".oracle.sql")
            && !file.ends_with(".check.sql")
        {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("q").to_string();
            let text = std::fs::read_to_string(&path)?;
            let body: String =
                text.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
            out.push((name, body));
        }
    }
    out.sort_by_key(|(n, _)| {
        let digits: String = n.chars().skip(1).take_while(|c| c.is_ascii_digit()).collect();
        (digits.parse::<u32>().unwrap_or(0), n.clone())
    });
    Ok(out)
}

async fn nexmark(events: u64, only: Vec<String>, splits: Option<usize>, options: ServeOptions) -> Result<()> {
    let splits = splits.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let checkpoints = match options.checkpoint_ms {
        0 => "no interval checkpoints".to_string(),
        ms => format!("checkpoint every {ms} ms"),
    };
    let memory = options.memory_limit.as_deref().map(|m| format!(", memory limit {m}")).unwrap_or_default();
    println!(
        "Nexmark, {events} events per query, {splits} generator splits, {cores} cores, barrier every {} ms, {checkpoints}{memory}, blackhole sink",
        options.barrier_ms
    );
    println!(
        "{:<12} {:>12} {:>14} {:>10} {:>10} {:>12} {:>17} {:>10}",
        "query", "events/s", "events/s/core", "cpu s", "wall s", "peak RSS MiB", "fresh p50/p99 ms", "sink rows"
    );
    for (name, body) in nexmark_queries()? {
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let server = Server::start_with(options.clone())?;
        let client = server.connect().await?;
        let options = |kind: &str| {
            format!(
                "connector = 'nexmark', nexmark.table.type = '{kind}', nexmark.split.num = '{splits}', \
                 nexmark.min.event.gap.in.ns = '0', nexmark.event.num = '{events}'"
            )
        };
        client
            .batch_execute(&format!(
                "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
                                    date_time TIMESTAMP, extra VARCHAR, p_time TIMESTAMPTZ AS PROCTIME(),
                                    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH ({});
                 CREATE SOURCE person (id BIGINT, name VARCHAR, email_address VARCHAR, credit_card VARCHAR,
                                       city VARCHAR, state VARCHAR, date_time TIMESTAMP, extra VARCHAR,
                                       WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH ({});
                 CREATE SOURCE auction (id BIGINT, item_name VARCHAR, description VARCHAR, initial_bid BIGINT,
                                        reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT,
                                        category BIGINT, extra VARCHAR,
                                        WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH ({});
                 CREATE TABLE side_input (key BIGINT PRIMARY KEY, value VARCHAR);
                 INSERT INTO side_input SELECT v, 'value-' || v FROM generate_series(0, 9999) AS s(v);",
                options("Bid"),
                options("Person"),
                options("Auction"),
            ))
            .await?;
        let sql = body.replace("${BID}", "bid").replace("${PERSON}", "person").replace("${AUCTION}", "auction");
        let cpu_before = server.cpu_seconds().unwrap_or(0.0);
        let started = Instant::now();
        client.batch_execute(&format!("CREATE SINK {name} AS {sql} WITH (connector = 'blackhole')")).await?;
        loop {
            let open: i64 = client
                .query_one(
                    "SELECT count(*) FILTER (WHERE NOT finished) FROM eddy_catalog.source_splits WHERE job = $1",
                    &[&name],
                )
                .await?
                .get(0);
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.batch_execute("FLUSH").await?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = server.cpu_seconds().unwrap_or(0.0) - cpu_before;
        let fresh = client.query_one("SELECT p50_ms, p99_ms FROM eddy_catalog.freshness", &[]).await?;
        let sink_rows: i64 = client
            .query_opt("SELECT rows FROM eddy_catalog.sink_rows WHERE sink = $1", &[&name])
            .await?
            .map(|r| r.get(0))
            .unwrap_or(0);
        let (p50, p99): (f64, f64) = (fresh.get(0), fresh.get(1));
        // Bids are 46 of every 50 events; the generator produces (and pays for) all events.
        println!(
            "{:<12} {:>12.0} {:>14.0} {:>10.2} {:>10.2} {:>12.0} {:>8.0}/{:<6.0} {:>10}",
            name,
            events as f64 / wall,
            events as f64 / cpu.max(0.001),
            cpu,
            wall,
            server.peak_rss_mib().unwrap_or(0.0),
            p50,
            p99,
            sink_rows
        );
    }
    Ok(())
}

async fn recovery(sizes: Vec<u64>, memory_limit: Option<String>) -> Result<()> {
    println!("Recovery after kill -9: a table behind a min/max aggregate and a self-join (both keep every row)");
    println!(
        "{:>10} {:>12} {:>14} {:>14} {:>14} {:>10}",
        "rows", "store MiB", "state MiB", "restart s", "first read s", "s per GiB"
    );
    for rows in sizes {
        let mut server = Server::start()?;
        let client = server.connect().await?;
        client
            .batch_execute(
                "CREATE TABLE r (id BIGINT PRIMARY KEY, k BIGINT, v BIGINT, pad VARCHAR);
                 CREATE MATERIALIZED VIEW agg AS
                   SELECT k, count(*) AS n, sum(v) AS total, min(v) AS lo, max(v) AS hi FROM r GROUP BY k;
                 CREATE MATERIALIZED VIEW joined AS
                   SELECT a.k, count(*) AS n FROM r a JOIN r b ON a.id = b.id GROUP BY a.k;",
            )
            .await?;
        let groups = (rows / 10).max(1);
        let chunk = 250_000u64;
        let mut first = 1u64;
        while first <= rows {
            let last = (first + chunk - 1).min(rows);
            client
                .batch_execute(&format!(
                    "INSERT INTO r SELECT x, x % {groups}, x * 7919 % 100000, 'padding-' || x FROM generate_series({first}, {last}) AS s(x)"
                ))
                .await?;
            first = last + 1;
        }
        let state_bytes: i64 =
            client.query_one("SELECT sum(bytes)::BIGINT FROM eddy_catalog.operator_state", &[]).await?.get(0);
        let store = server.data_bytes();
        drop(client);
        let options = ServeOptions { memory_limit: memory_limit.clone(), ..ServeOptions::default() };
        let restart = server.crash_and_restart(options)?;
        let client = server.connect().await?;
        let read_started = Instant::now();
        let counted: i64 = client.query_one("SELECT sum(n)::BIGINT FROM agg", &[]).await?.get(0);
        let joined: i64 = client.query_one("SELECT sum(n)::BIGINT FROM joined", &[]).await?.get(0);
        let first_read = read_started.elapsed();
        if counted != rows as i64 || joined != rows as i64 {
            bail!("after recovery the views count {counted} and {joined} rows, not {rows}");
        }
        // The restored state must still be maintained: one more change flows through.
        client.batch_execute(&format!("DELETE FROM r WHERE id = {rows}")).await?;
        let after: i64 = client.query_one("SELECT sum(n)::BIGINT FROM joined", &[]).await?.get(0);
        if after != rows as i64 - 1 {
            bail!("a delete after recovery left {after} joined rows, not {}", rows - 1);
        }
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "{:>10} {:>12.0} {:>14.0} {:>14.2} {:>14.3} {:>10.2}",
            rows,
            mib(store),
            mib(state_bytes.max(0) as u64),
            restart.as_secs_f64(),
            first_read.as_secs_f64(),
            restart.as_secs_f64() / (store as f64 / (1u64 << 30) as f64)
        );
    }
    Ok(())
}
