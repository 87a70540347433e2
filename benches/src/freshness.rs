//! `freshness`: how soon a change reaches a `SUBSCRIBE` client, and how fast a point `SELECT`
//! on a view answers.
//!
//! With `--source insert`, writers `INSERT` single rows at a steady rate into a table behind a
//! `GROUP BY` view; each row carries its send time (microseconds since the Unix epoch, same
//! machine), and the view keeps the newest per key. With `--source datagen`, a `datagen`
//! source stamps each row with its generation time and a view keeps every 100th row. A
//! subscriber reads `COPY (SUBSCRIBE ...) TO STDOUT`; for every `+1` row it takes the
//! difference between its arrival and the time the row carries (the last column). Then a
//! prepared `SELECT ... WHERE k = $1` runs against a `GROUP BY` view's key.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::Mutex;

use super::{ServeOptions, Server, percentile};

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Where the changes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// Single-row INSERT statements (each returns once durable and visible).
    Insert,
    /// The built-in `datagen` generator (changes become visible at the next barrier).
    Datagen,
}

/// Datagen rows kept by the subscribed view: one in this many.
const DATAGEN_SAMPLE: i64 = 100;

/// Runs the benchmark and prints its figures.
///
/// # Errors
/// When the server cannot be started or a statement fails.
pub async fn run(
    source: Source,
    seconds: u64,
    rate: u64,
    writers: usize,
    keys: i64,
    reads: usize,
    barrier_ms: u64,
) -> Result<()> {
    let server = Server::start_with(ServeOptions { barrier_ms, ..ServeOptions::default() })?;
    let admin = server.connect().await?;
    admin
        .batch_execute(
            "CREATE TABLE events (id BIGINT PRIMARY KEY, k BIGINT, sent_us BIGINT);
             CREATE MATERIALIZED VIEW latest AS
               SELECT k, count(*) AS n, max(sent_us) AS last_sent_us FROM events GROUP BY k;",
        )
        .await?;
    let subscribed = match source {
        Source::Insert => "latest",
        Source::Datagen => {
            admin
                .batch_execute(&format!(
                    "CREATE SOURCE gen (k BIGINT, ts TIMESTAMP) WITH (connector = 'datagen',
                       fields.k.kind = 'sequence', fields.k.start = '0', datagen.rows.per.second = '{rate}');
                     CREATE MATERIALIZED VIEW sampled AS
                       SELECT k, CAST(extract(epoch FROM ts) * 1000000 AS BIGINT) AS generated_us
                       FROM gen WHERE k % {DATAGEN_SAMPLE} = 0;"
                ))
                .await?;
            "sampled"
        }
    };

    // The subscriber: one COPY stream, rows parsed as they arrive.
    let subscriber = server.connect().await?;
    let arrivals: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let collected = arrivals.clone();
    let reader = tokio::spawn(async move {
        let stream =
            subscriber.copy_out(&format!("COPY (SUBSCRIBE {subscribed} WITH (SNAPSHOT = false)) TO STDOUT")).await?;
        futures::pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let arrived = now_us();
            let text = String::from_utf8_lossy(&chunk);
            for line in text.lines() {
                let fields: Vec<&str> = line.split('\t').collect();
                if fields.get(1) != Some(&"1") {
                    continue;
                }
                if let Some(sent) = fields.last().and_then(|s| s.parse::<i64>().ok()) {
                    collected.lock().await.push(Duration::from_micros((arrived - sent).max(0) as u64));
                }
            }
        }
        anyhow::Ok(())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    if source == Source::Datagen {
        generate(&admin, &arrivals, seconds, rate).await?;
        reader.abort();
        return point_reads(&admin, keys, reads).await;
    }

    // Writers at a steady rate: each sends one row per tick.
    let per_writer = (rate as f64 / writers.max(1) as f64).max(0.001);
    let interval = Duration::from_secs_f64(1.0 / per_writer);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers.max(1) {
        let client = server.connect().await?;
        tasks.push(tokio::spawn(async move {
            let insert = client.prepare("INSERT INTO events VALUES ($1, $2, $3)").await?;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut latencies = Vec::new();
            let mut i: i64 = 0;
            while Instant::now() < deadline {
                ticker.tick().await;
                let id = i * 1000 + w as i64;
                let started = Instant::now();
                client.execute(&insert, &[&id, &(id % keys.max(1)), &now_us()]).await?;
                latencies.push(started.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut statement = Vec::new();
    for t in tasks {
        statement.extend(t.await.context("writer task")??);
    }
    // Let the last changes arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
    let mut fresh = arrivals.lock().await.clone();
    fresh.sort();
    statement.sort();
    let written = statement.len();
    let elapsed = seconds.max(1) as f64;
    println!(
        "freshness: {written} single-row INSERTs in {seconds} s ({:.0}/s) by {writers} writers",
        written as f64 / elapsed
    );
    println!("  INSERT -> SUBSCRIBE client: {} over {} changes", latencies(&fresh), fresh.len());
    println!("  INSERT statement (returns once durable and visible): {}", latencies(&statement));

    point_reads(&admin, keys, reads).await
}

/// The datagen run: a generator at `rate` rows/s for `seconds`, a view keeping every
/// [`DATAGEN_SAMPLE`]th row with its generation time, and the subscriber's arrival times.
async fn generate(
    admin: &tokio_postgres::Client,
    arrivals: &Arc<Mutex<Vec<Duration>>>,
    seconds: u64,
    rate: u64,
) -> Result<()> {
    let rows_before = generated_rows(admin).await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let generated = generated_rows(admin).await? - rows_before;
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut fresh = arrivals.lock().await.clone();
    fresh.sort();
    println!(
        "freshness: datagen at {rate} rows/s asked, {:.0} rows/s generated and processed over {seconds} s",
        generated as f64 / elapsed
    );
    println!("  generated -> SUBSCRIBE client: {} over {} sampled rows", latencies(&fresh), fresh.len());
    Ok(())
}

async fn generated_rows(admin: &tokio_postgres::Client) -> Result<i64> {
    Ok(admin
        .query_one("SELECT coalesce(sum(rows), 0)::BIGINT FROM eddy_catalog.source_splits WHERE job = 'sampled'", &[])
        .await?
        .get(0))
}

/// Point reads on the `latest` view's key (filled first when the run did not fill it).
async fn point_reads(admin: &tokio_postgres::Client, keys: i64, reads: usize) -> Result<()> {
    let filled: i64 = admin.query_one("SELECT count(*) FROM latest", &[]).await?.get(0);
    if filled == 0 {
        admin
            .batch_execute(&format!(
                "INSERT INTO events SELECT i, i % {}, 0 FROM generate_series(0, {}) AS t(i)",
                keys.max(1),
                keys.max(1) * 4 - 1
            ))
            .await?;
    }
    let select = admin.prepare("SELECT n, last_sent_us FROM latest WHERE k = $1").await?;
    let mut reads_taken = Vec::with_capacity(reads);
    for i in 0..reads {
        let k = (i as i64 * 7919) % keys.max(1);
        let started = Instant::now();
        let rows = admin.query(&select, &[&k]).await?;
        reads_taken.push(started.elapsed());
        if rows.len() > 1 {
            anyhow::bail!("key {k} returned {} rows", rows.len());
        }
    }
    reads_taken.sort();
    println!(
        "  point SELECT by key on the view: p50 {:.3} ms, p99 {:.3} ms over {reads} reads",
        ms(percentile(&reads_taken, 0.5)),
        ms(percentile(&reads_taken, 0.99))
    );
    Ok(())
}

/// p50, p90, p99 and max of sorted durations, in milliseconds.
fn latencies(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.9)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default())
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
