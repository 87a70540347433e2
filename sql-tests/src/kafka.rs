//! Kafka for the tests and benchmarks: a Tansu broker process, topic creation, and producing
//! records with a real Kafka client (librdkafka).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord};

use crate::free_port;

/// A producer that batches briefly, so large test loads are fast.
pub fn producer(bootstrap: &str) -> Result<BaseProducer> {
    Ok(ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "5").create()?)
}

/// Sends one record, waiting while the producer's queue is full.
pub fn send(
    p: &BaseProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&str>,
    value: Option<&str>,
) -> Result<()> {
    let mut record = BaseRecord::<str, str>::to(topic);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    loop {
        match p.send(record) {
            Ok(()) => break,
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                p.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
    p.poll(Duration::ZERO);
    Ok(())
}

/// The Tansu binary: `$EDDY_TANSU`, else where scripts/setup-kafka.sh links it.
pub fn tansu_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("EDDY_TANSU") {
        return Ok(PathBuf::from(p));
    }
    let root = match std::env::var("EDDY_TANSU_ROOT") {
        Ok(r) => PathBuf::from(r),
        Err(_) => PathBuf::from(std::env::var("HOME").context("HOME is not set")?).join(".cache/eddy-tansu"),
    };
    let bin = root.join("tansu");
    if !bin.is_file() {
        bail!("Tansu is not installed at {} (run scripts/setup-kafka.sh, or set EDDY_TANSU)", bin.display());
    }
    Ok(bin)
}

/// A Tansu broker process with in-memory storage; killed when dropped.
pub struct Tansu {
    child: Child,
    pub bootstrap: String,
}

impl Tansu {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    ///
    /// # Errors
    /// When Tansu is not installed or does not listen within 30 s.
    pub fn start() -> Result<Self> {
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = Command::new(tansu_binary()?)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu")?;
        // Keep draining its output so the broker never blocks on a full pipe.
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || BufReader::new(out).lines().for_each(drop));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("tansu exited at start with {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("tansu did not listen on port {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, bootstrap: format!("127.0.0.1:{port}") })
    }

    /// The broker's process id (to read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates `topics` (name, partitions) with one replica each.
///
/// # Errors
/// When the broker refuses a topic.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        if let Err((topic, e)) = result {
            bail!("creating topic {topic}: {e}");
        }
    }
    Ok(())
}
