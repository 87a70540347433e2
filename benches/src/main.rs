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
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Serve { listen, data_dir } => {
            tracing_subscriber::fmt().with_env_filter("warn").init();
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let config = eddy_server::EngineConfig {
                data_dir,
                barrier_interval: Duration::from_millis(1000),
                parallelism: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            };
            rt.block_on(eddy_server::serve(listen, config, async {
                let _ = tokio::signal::ctrl_c().await;
            }))
        }
        Cmd::Inserts { seconds, writers, batch, keys, rate } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(inserts(seconds, writers, batch, keys, rate))
        }
    }
}

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("server did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, port, _dir: dir })
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
