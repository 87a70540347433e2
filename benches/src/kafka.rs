//! `eddy-bench kafka`: Nexmark bids through Kafka.
//!
//! The broker is Tansu, a Kafka-protocol broker process with in-memory storage (installed by
//! scripts/setup-kafka.sh), or librdkafka's mock cluster in this process for small runs; the
//! topic is pre-loaded with `events` Nexmark bids as flat JSON (from Eddy's own
//! generator), then a server consumes them into a view and the time until every record is
//! counted gives events/s and events/s per core of the server's CPU time. The same query then
//! runs on the built-in generator for comparison.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use arrow::json::LineDelimitedWriter;
use eddy_connectors::nexmark::{
    DEFAULT_BASE_TIME_MS, DEFAULT_INTER_EVENT_US, NexmarkConfig, NexmarkGenerator, TableType,
};
use eddy_sql_tests::kafka::{Tansu, create_topics};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::{ServeOptions, Server};

const BID_COLUMNS: &str = "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, \
                           date_time TIMESTAMP, extra VARCHAR";

/// Which Kafka-protocol broker the bench runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Broker {
    Tansu,
    Mock,
}

/// librdkafka's mock cluster keeps only the newest few MB of a partition; more than this many
/// ~250-byte bids per partition would be trimmed before the server reads them.
const MOCK_MAX_BIDS_PER_PARTITION: u64 = 20_000;

/// The broker's CPU seconds so far (user + system, from /proc), to tell its share apart.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Writes `events` bids as JSON records into `topic`, round-robin over its partitions.
fn preload(bootstrap: &str, topic: &str, partitions: i32, events: u64) -> Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut generator = NexmarkGenerator::new(NexmarkConfig {
        table: TableType::Bid,
        split: 0,
        splits: 1,
        event_num: None,
        max_chunk_size: 4096,
        base_time_ms: DEFAULT_BASE_TIME_MS,
        inter_event_us: DEFAULT_INTER_EVENT_US,
    });
    let mut written = 0u64;
    while written < events {
        let Some(batch) = generator.next_chunk() else { break };
        let mut buf = Vec::new();
        {
            let mut writer = LineDelimitedWriter::new(&mut buf);
            writer.write(&batch)?;
            writer.finish()?;
        }
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if written == events {
                break;
            }
            let partition = (written % partitions as u64) as i32;
            let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(partition).payload(line);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(5));
                    }
                }
            }
            written += 1;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Runs `query` (over `bid`) as a blackhole sink until the sources produced `events` rows;
/// returns (wall seconds, server CPU seconds).
async fn measure(server: &Server, query: &str, events: u64) -> Result<(f64, f64)> {
    let client = server.connect().await?;
    let cpu_before = server.cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    client.batch_execute(&format!("CREATE SINK measured AS {query} WITH (connector = 'blackhole')")).await?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let rows: i64 = client
            .query_one(
                "SELECT coalesce(sum(rows), 0)::BIGINT FROM eddy_catalog.source_splits WHERE job = 'measured'",
                &[],
            )
            .await?
            .get(0);
        let finished: i64 = client
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT finished) FROM eddy_catalog.source_splits WHERE job = 'measured'",
                &[],
            )
            .await?
            .get(0);
        if rows as u64 >= events || finished == 0 && rows > 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {rows} of {events} rows arrived");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.batch_execute("FLUSH").await?;
    Ok((started.elapsed().as_secs_f64(), server.cpu_seconds().unwrap_or(0.0) - cpu_before))
}

/// The `kafka` subcommand.
///
/// # Errors
/// When the broker, the server or a statement fails.
pub async fn run(broker: Broker, events: u64, partitions: i32, query: String) -> Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    // Whichever broker runs lives until the end of this function.
    let mut tansu = None;
    let mut mock = None;
    let bootstrap = match broker {
        Broker::Tansu => {
            let t = Tansu::start()?;
            create_topics(&t.bootstrap, &[("bids", partitions)]).await?;
            let b = t.bootstrap.clone();
            tansu = Some(t);
            b
        }
        Broker::Mock => {
            if events > MOCK_MAX_BIDS_PER_PARTITION * partitions as u64 {
                bail!(
                    "the mock cluster keeps only ~{MOCK_MAX_BIDS_PER_PARTITION} bids per partition: \
                     use --broker tansu, fewer --events or more --partitions"
                );
            }
            let cluster = MockCluster::new(1)?;
            cluster.create_topic("bids", partitions, 1)?;
            let b = cluster.bootstrap_servers();
            mock = Some(cluster);
            b
        }
    };
    let loading = Instant::now();
    let (b, n) = (bootstrap.clone(), events);
    tokio::task::spawn_blocking(move || preload(&b, "bids", partitions, n)).await??;
    println!(
        "Nexmark bids through Kafka ({broker:?} broker), {events} bids as JSON in {partitions} partitions \
         (loaded in {:.1} s), {cores} cores; query: {query}",
        loading.elapsed().as_secs_f64()
    );
    let broker_cpu_before = tansu.as_ref().and_then(|t| process_cpu_seconds(t.pid()));
    println!("{:<22} {:>12} {:>14} {:>10} {:>10}", "source", "events/s", "events/s/core", "cpu s", "wall s");
    let options = ServeOptions { barrier_ms: 100, checkpoint_ms: 1000, memory_limit: None };

    let server = Server::start_with(options.clone())?;
    server
        .connect()
        .await?
        .batch_execute(&format!(
            "CREATE SOURCE bid ({BID_COLUMNS}) WITH (connector = 'kafka', topic = 'bids', \
             properties.bootstrap.server = '{bootstrap}', scan.startup.mode = 'earliest') FORMAT PLAIN ENCODE JSON"
        ))
        .await?;
    let (wall, cpu) = measure(&server, &query, events).await?;
    let row = |name: &str, wall: f64, cpu: f64| {
        println!(
            "{:<22} {:>12.0} {:>14.0} {:>10.2} {:>10.2}",
            name,
            events as f64 / wall,
            events as f64 / cpu.max(0.001),
            cpu,
            wall
        );
    };
    row("kafka json", wall, cpu);
    if let (Some(before), Some(after)) = (broker_cpu_before, tansu.as_ref().and_then(|t| process_cpu_seconds(t.pid())))
    {
        println!("  (the broker used {:.2} cpu s of the same cores while serving the fetches)", after - before);
    }
    drop(server);
    drop(tansu);
    drop(mock);

    // The same bids from the built-in generator (it numbers all events; bids are 46 of 50).
    let server = Server::start_with(options)?;
    let generator_events = events * 50 / 46;
    server
        .connect()
        .await?
        .batch_execute(&format!(
            "CREATE SOURCE bid ({BID_COLUMNS}) WITH (connector = 'nexmark', nexmark.table.type = 'Bid', \
             nexmark.split.num = '{partitions}', nexmark.min.event.gap.in.ns = '0', nexmark.event.num = '{generator_events}')"
        ))
        .await?;
    let (wall, cpu) = measure(&server, &query, events).await?;
    row("built-in generator", wall, cpu);
    Ok(())
}
