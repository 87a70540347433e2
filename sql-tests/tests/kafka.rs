//! Kafka end to end through the real `eddy` binary: librdkafka's mock cluster runs in this
//! test process (a real Kafka-protocol broker on loopback ports), a real producer writes
//! JSON, CSV and Debezium records, and views are read over pgwire and compared with a batch
//! recomputation of the same data. Eddy is killed with `kill -9` mid-stream and must count
//! every record exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eddy_sql_tests::kafka::{producer, send};
use eddy_sql_tests::{TestServer, rows, wait_for};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn bid_json(i: i64) -> String {
    format!("{{\"auction\": {}, \"price\": {}, \"date_time\": \"2026-01-01 00:00:{:02}\"}}", i % 7, i * 3 % 101, i % 60)
}

/// The expected view over bids `0..n`: auction → (count, sum(price)).
fn expected_bids(n: i64) -> Vec<Vec<String>> {
    let mut groups: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for i in 0..n {
        let g = groups.entry(i % 7).or_default();
        g.0 += 1;
        g.1 += i * 3 % 101;
    }
    groups.into_iter().map(|(a, (c, s))| vec![a.to_string(), c.to_string(), s.to_string()]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_views_survive_kill_9() -> Result<()> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("bids", 3, 1)?;
    cluster.create_topic("customers", 1, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    let p = producer(&bootstrap)?;
    let mut server = TestServer::start_with(&["--barrier-interval-ms", "100", "--checkpoint-interval-ms", "300"])?;
    let client = server.connect().await?;

    // Broker problems at CREATE are named.
    let err = client
        .simple_query(&format!(
            "CREATE SOURCE nothing (a INT) WITH (connector = 'kafka', topic = 'missing_topic', \
             properties.bootstrap.server = '{bootstrap}', properties.allow.auto.create.topics = 'false') \
             FORMAT PLAIN ENCODE JSON"
        ))
        .await
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(err.contains("missing_topic"), "{err}");

    client
        .batch_execute(&format!(
            "CREATE SOURCE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP) \
               INCLUDE partition AS part \
               WITH (connector = 'kafka', topic = 'bids', properties.bootstrap.server = '{bootstrap}', \
                     scan.startup.mode = 'earliest') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW per_auction AS
               SELECT auction, count(*) AS n, sum(price) AS total FROM bids GROUP BY auction;
             CREATE MATERIALIZED VIEW per_partition AS SELECT part, count(*) AS n FROM bids GROUP BY part;
             CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR, tier VARCHAR)
               WITH (connector = 'kafka', topic = 'customers', properties.bootstrap.server = '{bootstrap}')
               FORMAT DEBEZIUM ENCODE JSON;
             CREATE MATERIALIZED VIEW tiers AS SELECT tier, count(*) AS n FROM customers GROUP BY tier;"
        ))
        .await?;

    // Debezium: creates, an update, a delete (with its tombstone), and a bad record.
    let customer = |id: i64, name: &str, tier: &str| format!("{{\"id\":{id},\"name\":\"{name}\",\"tier\":\"{tier}\"}}");
    for id in 1..=5 {
        let after = customer(id, &format!("c{id}"), if id % 2 == 0 { "gold" } else { "silver" });
        send(&p, "customers", None, None, Some(&format!("{{\"before\":null,\"after\":{after},\"op\":\"c\"}}")))?;
    }
    let (before, after) = (customer(2, "c2", "gold"), customer(2, "c2", "silver"));
    send(&p, "customers", None, None, Some(&format!("{{\"before\":{before},\"after\":{after},\"op\":\"u\"}}")))?;
    let before = customer(3, "c3", "silver");
    send(&p, "customers", None, None, Some(&format!("{{\"before\":{before},\"after\":null,\"op\":\"d\"}}")))?;
    send(&p, "customers", None, None, None)?;
    send(&p, "customers", None, None, Some("{\"op\": \"c\", \"after\": {\"id\": \"not a number\"}}"))?;
    p.flush(Duration::from_secs(10))?;
    let want = vec![
        vec!["1".into(), "c1".into(), "silver".into()],
        vec!["2".into(), "c2".into(), "silver".into()],
        vec!["4".into(), "c4".into(), "gold".into()],
        vec!["5".into(), "c5".into(), "silver".into()],
    ];
    wait_for(&client, "SELECT * FROM customers ORDER BY id", &want, Duration::from_secs(30)).await?;
    let batch = rows(&client, "SELECT tier, count(*) FROM customers GROUP BY tier ORDER BY tier").await?;
    wait_for(&client, "SELECT * FROM tiers ORDER BY tier", &batch, Duration::from_secs(10)).await?;
    wait_for(
        &client,
        "SELECT sum(bad_records) FROM eddy_catalog.source_splits WHERE source = 'customers'",
        &[vec!["1".into()]],
        Duration::from_secs(10),
    )
    .await?;

    // Bids across three partitions, with a kill -9 while they stream in.
    let total = 6000i64;
    let mut sent = 0i64;
    for round in 0..3 {
        let upto = total * (round + 1) / 3;
        while sent < upto {
            send(&p, "bids", Some((sent % 3) as i32), None, Some(&bid_json(sent)))?;
            sent += 1;
            if sent % 500 == 0 {
                p.flush(Duration::from_secs(10))?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        p.flush(Duration::from_secs(10))?;
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(300 * (round as u64 + 1))).await;
            server.kill();
            server.restart()?;
        }
    }
    // A bad record in the middle of the stream is skipped; everything after it still counts.
    send(&p, "bids", Some(1), None, Some("{\"auction\": [1, 2]"))?;
    for i in total..total + 30 {
        send(&p, "bids", Some((i % 3) as i32), None, Some(&bid_json(i)))?;
    }
    p.flush(Duration::from_secs(10))?;
    let client = server.connect().await?;
    wait_for(
        &client,
        "SELECT * FROM per_auction ORDER BY auction",
        &expected_bids(total + 30),
        Duration::from_secs(60),
    )
    .await?;
    let per_partition: Vec<Vec<String>> = (0..3).map(|p| vec![p.to_string(), ((total + 30) / 3).to_string()]).collect();
    wait_for(&client, "SELECT * FROM per_partition ORDER BY part", &per_partition, Duration::from_secs(10)).await?;
    wait_for(
        &client,
        "SELECT sum(bad_records) FROM eddy_catalog.source_splits WHERE job = 'per_auction'",
        &[vec!["1".into()]],
        Duration::from_secs(10),
    )
    .await?;
    // The table kept its rows across the kills.
    wait_for(&client, "SELECT * FROM customers ORDER BY id", &want, Duration::from_secs(10)).await?;
    Ok(())
}

/// Every committed record of `topic` (partition 0) as (key, value), read with
/// `isolation.level = read_committed`, waiting until `done` holds or the topic stays quiet.
fn consume_committed(
    bootstrap: &str,
    topic: &str,
    done: impl Fn(&[(Option<String>, Option<String>)]) -> bool,
) -> Result<Vec<(Option<String>, Option<String>)>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "eddy-test-reader")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                out.push((text(m.key()), text(m.payload())));
                quiet_since = Instant::now();
            }
            Some(Err(e)) => bail!("consuming {topic}: {e}"),
            None => {
                if done(&out) && quiet_since.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_exactly_once_across_kill_9() -> Result<()> {
    let cluster = MockCluster::new(1)?;
    for topic in ["events", "copy", "counts", "changes", "eddy_sink_progress"] {
        cluster.create_topic(topic, 1, 1)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    let p = producer(&bootstrap)?;
    let mut server = TestServer::start_with(&["--barrier-interval-ms", "100", "--checkpoint-interval-ms", "200"])?;
    let client = server.connect().await?;
    let sink =
        |topic: &str| format!("connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{bootstrap}'");
    client
        .batch_execute(&format!(
            "CREATE SOURCE events (id BIGINT, k INT) WITH (connector = 'kafka', topic = 'events', \
               properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON;
             CREATE SINK copy AS SELECT id, k FROM events WITH ({}) FORMAT PLAIN ENCODE JSON;
             CREATE SINK counts AS SELECT k, count(*) AS n FROM events GROUP BY k
               WITH ({}, primary_key = 'k') FORMAT UPSERT ENCODE JSON;",
            sink("copy"),
            sink("counts"),
        ))
        .await?;
    // A retracting stream into a PLAIN sink is refused.
    let err = client
        .simple_query(&format!(
            "CREATE SINK bad AS SELECT k, count(*) AS n FROM events GROUP BY k WITH ({}) FORMAT PLAIN ENCODE JSON",
            sink("changes")
        ))
        .await
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(err.contains("append-only"), "{err}");

    let total = 3000i64;
    let mut sent = 0i64;
    for round in 0..3 {
        let upto = total * (round + 1) / 3;
        while sent < upto {
            send(&p, "events", None, None, Some(&format!("{{\"id\": {sent}, \"k\": {}}}", sent % 5)))?;
            sent += 1;
            if sent % 250 == 0 {
                p.flush(Duration::from_secs(10))?;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
        p.flush(Duration::from_secs(10))?;
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(250 * (round as u64 + 1))).await;
            server.kill();
            server.restart()?;
        }
    }

    let copied = consume_committed(&bootstrap, "copy", |r| r.len() >= total as usize)?;
    let mut ids: Vec<i64> = Vec::new();
    for (_, value) in &copied {
        let v = value.as_deref().unwrap_or_default();
        let id = v
            .split("\"id\":")
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("unexpected record {v}"))?;
        ids.push(id);
    }
    ids.sort();
    let want: Vec<i64> = (0..total).collect();
    assert_eq!(ids.len(), want.len(), "records in the PLAIN sink: duplicates or losses");
    assert_eq!(ids, want);

    // The UPSERT sink: the last record per key is the final count.
    let expected: BTreeMap<String, String> =
        (0..5).map(|k| (format!("{{\"k\":{k}}}"), format!("{{\"k\":{k},\"n\":{}}}", total / 5))).collect();
    let counted = consume_committed(&bootstrap, "counts", |records| {
        let mut last = BTreeMap::new();
        for (k, v) in records {
            last.insert(k.clone().unwrap_or_default(), v.clone().unwrap_or_default());
        }
        last == expected
    })?;
    let mut last = BTreeMap::new();
    for (k, v) in counted {
        last.insert(k.unwrap_or_default(), v.unwrap_or_default());
    }
    assert_eq!(last, expected);
    Ok(())
}

/// A minimal Confluent schema registry: `GET /schemas/ids/{id}` answers `{"schema": "..."}`
/// for the ids it knows and 404 otherwise; `POST /subjects/{subject}/versions` registers a
/// schema (the same text gets the same id) and answers `{"id": n}`.
async fn start_registry(schemas: Vec<(u32, &'static str)>) -> Result<String> {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let schemas: BTreeMap<u32, String> = schemas.into_iter().map(|(id, s)| (id, s.to_string())).collect();
    let schemas = Arc::new(Mutex::new(schemas));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let schemas = schemas.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                while request.len() < head_end + length {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
                let (status, body) =
                    if method == "POST" && path.starts_with("/subjects/") && path.ends_with("/versions") {
                        let posted: serde_json::Value =
                            serde_json::from_slice(&request[head_end..]).unwrap_or(serde_json::Value::Null);
                        match posted.get("schema").and_then(serde_json::Value::as_str) {
                            Some(schema) => {
                                let mut known = schemas.lock().unwrap_or_else(|p| p.into_inner());
                                let id = match known.iter().find(|(_, s)| s.as_str() == schema) {
                                    Some((id, _)) => *id,
                                    None => {
                                        let id = known.keys().max().copied().unwrap_or(0).max(99) + 1;
                                        known.insert(id, schema.to_string());
                                        id
                                    }
                                };
                                ("200 OK", format!("{{\"id\":{id}}}"))
                            }
                            None => (
                                "422 Unprocessable Entity",
                                "{\"error_code\":42201,\"message\":\"Invalid schema\"}".into(),
                            ),
                        }
                    } else {
                        let schema = path
                            .strip_prefix("/schemas/ids/")
                            .and_then(|id| id.parse::<u32>().ok())
                            .and_then(|id| schemas.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned());
                        match schema {
                            Some(s) => ("200 OK", serde_json::json!({ "schema": s }).to_string()),
                            None => {
                                ("404 Not Found", "{\"error_code\":40403,\"message\":\"Schema not found\"}".to_string())
                            }
                        }
                    };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(url)
}

/// Avro binary encoding, the little the test needs, in the Confluent framing.
#[derive(Default)]
struct Avro(Vec<u8>);

impl Avro {
    fn framed(schema_id: u32) -> Self {
        let mut out = vec![0u8];
        out.extend_from_slice(&schema_id.to_be_bytes());
        Self(out)
    }
    fn long(mut self, v: i64) -> Self {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                self.0.push(b);
                return self;
            }
            self.0.push(b | 0x80);
        }
    }
    fn string(self, s: &str) -> Self {
        let mut me = self.long(s.len() as i64);
        me.0.extend_from_slice(s.as_bytes());
        me
    }
    /// A `["null", T]` union holding a value: branch 1, then the value.
    fn some(self) -> Self {
        self.long(1)
    }
    fn null(self) -> Self {
        self.long(0)
    }
}

const BID_V1: &str = r#"{"type":"record","name":"Bid","namespace":"shop","fields":[
  {"name":"auction","type":"long"},
  {"name":"price","type":"long"},
  {"name":"date_time","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"legacy","type":"string"}]}"#;
/// v2: `legacy` removed, `channel` added (with a default), `price` narrowed to int.
const BID_V2: &str = r#"{"type":"record","name":"Bid","namespace":"shop","fields":[
  {"name":"auction","type":"long"},
  {"name":"price","type":"int"},
  {"name":"date_time","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"channel","type":["null","string"],"default":null}]}"#;
const CUSTOMER_ENVELOPE: &str = r#"{"type":"record","name":"Envelope","namespace":"pg.public.customers","fields":[
  {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
     {"name":"id","type":"int"},{"name":"name","type":"string"},{"name":"tier","type":["null","string"]}]}]},
  {"name":"after","type":["null","Value"]},
  {"name":"op","type":"string"},
  {"name":"ts_ms","type":["null","long"]}]}"#;
const KEY: &str = r#"{"type":"record","name":"Key","fields":[{"name":"id","type":"int"}]}"#;
const VALUE: &str = r#"{"type":"record","name":"Value","fields":[
  {"name":"id","type":"int"},{"name":"name","type":"string"},{"name":"tier","type":["null","string"]}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_avro_with_schema_registry() -> Result<()> {
    let cluster = MockCluster::new(1)?;
    for topic in ["avro_bids", "avro_customers", "avro_prices"] {
        cluster.create_topic(topic, 1, 1)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    let registry =
        start_registry(vec![(1, BID_V1), (2, BID_V2), (10, CUSTOMER_ENVELOPE), (20, KEY), (21, VALUE)]).await?;
    let p = producer(&bootstrap)?;
    let server = TestServer::start_with(&["--barrier-interval-ms", "100", "--checkpoint-interval-ms", "300"])?;
    let client = server.connect().await?;
    let with =
        |topic: &str| format!("connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{bootstrap}'");

    // ENCODE AVRO needs a registry, and an http:// one.
    for (encode, needle) in [("AVRO", "schema.registry"), ("AVRO (schema.registry = 'https://r')", "http://")] {
        let err = client
            .simple_query(&format!("CREATE SOURCE x (a INT) WITH ({}) FORMAT PLAIN ENCODE {encode}", with("avro_bids")))
            .await
            .err()
            .map(|e| format!("{e:?}"))
            .unwrap_or_default();
        assert!(err.contains(needle), "{err}");
    }
    client
        .batch_execute(&format!(
            "CREATE SOURCE avro_bids (auction BIGINT, price BIGINT, date_time TIMESTAMP, channel VARCHAR)
               WITH ({}) FORMAT PLAIN ENCODE AVRO (schema.registry = '{registry}');
             CREATE MATERIALIZED VIEW avro_per_channel AS
               SELECT channel, count(*) AS n, sum(price) AS total, max(date_time) AS last
               FROM avro_bids GROUP BY channel;
             CREATE TABLE avro_customers (id INT PRIMARY KEY, name VARCHAR, tier VARCHAR)
               WITH ({}) FORMAT DEBEZIUM ENCODE AVRO (schema.registry = '{registry}');
             CREATE TABLE avro_prices (id INT PRIMARY KEY, name VARCHAR, tier VARCHAR)
               WITH ({}) FORMAT UPSERT ENCODE AVRO (schema.registry = '{registry}');",
            with("avro_bids"),
            with("avro_customers"),
            with("avro_prices"),
        ))
        .await?;

    // Bids written with v1 and v2 mixed, and three bad records among them.
    let base_ms = 1_767_225_600_000i64; // 2026-01-01 00:00:00 UTC
    let mut expected: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    let send_bytes = |topic: &str, key: Option<&[u8]>, value: Option<&[u8]>| -> Result<()> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        p.send(record).map_err(|(e, _)| e)?;
        p.poll(Duration::ZERO);
        Ok(())
    };
    for i in 0..400i64 {
        let (auction, price, ms) = (i % 5, i * 7 % 300, base_ms + i * 10);
        let (bytes, channel) = if i % 2 == 0 {
            (Avro::framed(1).long(auction).long(price).long(ms).string("old").0, "NULL".to_string())
        } else {
            let channel = if i % 3 == 0 { "app" } else { "web" };
            (Avro::framed(2).long(auction).long(price).long(ms).some().string(channel).0, channel.to_string())
        };
        send_bytes("avro_bids", None, Some(&bytes))?;
        let e = expected.entry(channel).or_insert((0, 0, 0));
        e.0 += 1;
        e.1 += price;
        e.2 = e.2.max(ms);
        if i == 100 {
            send_bytes("avro_bids", None, Some(&Avro::framed(99).long(1).long(2).long(3).0))?; // unknown id
        }
        if i == 200 {
            let truncated = Avro::framed(1).long(1).long(2).long(base_ms).string("cut").0;
            send_bytes("avro_bids", None, Some(&truncated[..truncated.len() - 2]))?;
        }
        if i == 300 {
            send_bytes("avro_bids", None, Some(b"{\"auction\": 1}"))?; // not Avro at all
        }
    }
    p.flush(Duration::from_secs(10))?;
    // NULL sorts last, as in Postgres.
    let mut groups: Vec<_> = expected.iter().collect();
    groups.sort_by_key(|(channel, _)| (channel.as_str() == "NULL", channel.to_string()));
    let want: Vec<Vec<String>> = groups
        .into_iter()
        .map(|(channel, (n, total, last))| {
            let secs = (last - base_ms) / 1000;
            // Postgres text form: trailing zeros of the fraction dropped.
            let frac = format!(".{:03}", (last - base_ms) % 1000);
            let last = format!("2026-01-01 00:00:{secs:02}{}", frac.trim_end_matches('0').trim_end_matches('.'));
            vec![channel.clone(), n.to_string(), total.to_string(), last]
        })
        .collect();
    if let Err(e) =
        wait_for(&client, "SELECT * FROM avro_per_channel ORDER BY channel", &want, Duration::from_secs(30)).await
    {
        let splits = rows(&client, "SELECT * FROM eddy_catalog.source_splits").await?;
        bail!("{e}\nsplits: {splits:?}\nlog: {}", server.log());
    }
    wait_for(
        &client,
        "SELECT sum(bad_records) FROM eddy_catalog.source_splits WHERE source = 'avro_bids'",
        &[vec!["3".into()]],
        Duration::from_secs(10),
    )
    .await?;

    // Debezium envelopes in Avro: creates, an update, a delete and its tombstone.
    let value = |a: Avro, id: i64, name: &str, tier: Option<&str>| {
        let a = a.long(id).string(name);
        match tier {
            Some(t) => a.some().string(t),
            None => a.null(),
        }
    };
    for id in 1..=4 {
        let tier = if id == 4 { None } else { Some(if id % 2 == 0 { "gold" } else { "silver" }) };
        let a = value(Avro::framed(10).null().some(), id, &format!("c{id}"), tier).string("c").some().long(base_ms);
        send_bytes("avro_customers", None, Some(&a.0))?;
    }
    let update = value(value(Avro::framed(10).some(), 2, "c2", Some("gold")).some(), 2, "c2", Some("platinum"));
    send_bytes("avro_customers", None, Some(&update.string("u").null().0))?;
    let delete = value(Avro::framed(10).some(), 3, "c3", Some("silver")).null().string("d").null();
    send_bytes("avro_customers", None, Some(&delete.0))?;
    send_bytes("avro_customers", None, None)?;
    // Upserts with Avro keys and values; a tombstone deletes key 1.
    for id in 1..=3 {
        let key = Avro::framed(20).long(id).0;
        send_bytes("avro_prices", Some(&key), Some(&value(Avro::framed(21), id, &format!("p{id}"), Some("x")).0))?;
    }
    send_bytes("avro_prices", Some(&Avro::framed(20).long(1).0), None)?;
    send_bytes("avro_prices", Some(&Avro::framed(20).long(2).0), Some(&value(Avro::framed(21), 2, "p2", None).0))?;
    p.flush(Duration::from_secs(10))?;
    let row = |v: [&str; 3]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    wait_for(
        &client,
        "SELECT * FROM avro_customers ORDER BY id",
        &[row(["1", "c1", "silver"]), row(["2", "c2", "platinum"]), row(["4", "c4", "NULL"])],
        Duration::from_secs(30),
    )
    .await?;
    wait_for(
        &client,
        "SELECT * FROM avro_prices ORDER BY id",
        &[row(["2", "p2", "NULL"]), row(["3", "p3", "x"])],
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

/// Waits until `eddy_sql` returns the same rows as `oracle_sql` (both over Eddy), with
/// something in them.
async fn same_rows(client: &tokio_postgres::Client, eddy_sql: &str, oracle_sql: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (got, want) = (rows(client, eddy_sql).await?, rows(client, oracle_sql).await?);
        if got == want && !want.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{eddy_sql}: expected {want:?} (from {oracle_sql}), got {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Avro sinks: a view's changes leave as Avro UPSERT and DEBEZIUM records whose schemas the
/// sink registered, and Eddy tables reading those topics back through the registry equal the
/// view and the table they came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_avro_sinks_round_trip() -> Result<()> {
    let cluster = MockCluster::new(1)?;
    for topic in ["avro_totals", "avro_orders", "eddy_sink_progress"] {
        cluster.create_topic(topic, 1, 1)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    let registry = start_registry(Vec::new()).await?;
    let server = TestServer::start_with(&["--barrier-interval-ms", "100", "--checkpoint-interval-ms", "200"])?;
    let client = server.connect().await?;
    let with =
        |topic: &str| format!("connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{bootstrap}'");
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (id INT PRIMARY KEY, customer INT, amount DECIMAL(10,2), note VARCHAR, at TIMESTAMP);
             CREATE MATERIALIZED VIEW totals AS
               SELECT customer, count(*) AS n, sum(amount) AS total, max(at) AS last FROM orders GROUP BY customer;
             CREATE SINK totals_out AS SELECT * FROM totals
               WITH ({}, primary_key = 'customer') FORMAT UPSERT ENCODE AVRO (schema.registry = '{registry}');
             CREATE SINK orders_out AS SELECT * FROM orders
               WITH ({}, primary_key = 'id') FORMAT DEBEZIUM ENCODE AVRO (schema.registry = '{registry}');
             CREATE TABLE totals_back (customer INT PRIMARY KEY, n BIGINT, total DECIMAL, last TIMESTAMP)
               WITH ({}) FORMAT UPSERT ENCODE AVRO (schema.registry = '{registry}');
             CREATE TABLE orders_back (id INT PRIMARY KEY, customer INT, amount DECIMAL(10,2), note VARCHAR, at TIMESTAMP)
               WITH ({}) FORMAT DEBEZIUM ENCODE AVRO (schema.registry = '{registry}');",
            with("avro_totals"),
            with("avro_orders"),
            with("avro_totals"),
            with("avro_orders"),
        ))
        .await?;
    client
        .batch_execute(
            "INSERT INTO orders SELECT i, i % 7, (i * 37 % 1000) / 100.0, 'note ' || i,
                    CAST(to_timestamp(1767225600 + i * 1.5) AS TIMESTAMP)
             FROM generate_series(1, 300) AS s(i);
             INSERT INTO orders VALUES (1000, 8, NULL, NULL, NULL), (1001, 9, -0.01, 'ünïcode \"quoted\"', '1999-12-31 23:59:59.999999');",
        )
        .await?;
    client
        .batch_execute(
            "UPDATE orders SET amount = amount + 1, note = 'touched' WHERE id % 10 = 0;
             DELETE FROM orders WHERE id % 9 = 0;
             DELETE FROM orders WHERE customer = 9;",
        )
        .await?;
    let totals = "SELECT customer, n, total, last FROM totals ORDER BY customer";
    same_rows(&client, "SELECT customer, n, total, last FROM totals_back ORDER BY customer", totals).await?;
    let orders = "SELECT id, customer, amount, note, at FROM orders ORDER BY id";
    same_rows(&client, "SELECT id, customer, amount, note, at FROM orders_back ORDER BY id", orders).await?;
    // Customer 9's group was deleted: a tombstone removed it from the read-back table.
    assert!(rows(&client, "SELECT * FROM totals_back WHERE customer = 9").await?.is_empty());

    // What Avro cannot carry, and a registry that does not answer, are refused at CREATE.
    let refused = |sql: String| {
        let client = &client;
        async move {
            let err = client.simple_query(&sql).await.err();
            err.map(|e| e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string())).unwrap_or_default()
        }
    };
    let err = refused(format!(
        "CREATE SINK bad AS SELECT id, ARRAY[id] AS ids FROM orders WITH ({}, primary_key = 'id')
           FORMAT UPSERT ENCODE AVRO (schema.registry = '{registry}')",
        with("avro_orders")
    ))
    .await;
    assert!(err.contains("column \"ids\""), "{err}");
    let err = refused(format!(
        "CREATE SINK bad AS SELECT id FROM orders WITH ({}, primary_key = 'id')
           FORMAT UPSERT ENCODE AVRO (schema.registry = 'http://127.0.0.1:9')",
        with("avro_orders")
    ))
    .await;
    assert!(err.contains("registering the Avro schema"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_faults() -> Result<()> {
    let server = TestServer::start_with(&["--barrier-interval-ms", "100", "--checkpoint-interval-ms", "300"])?;
    let client = server.connect().await?;

    // Broker down at CREATE: a clear error naming the broker, within the metadata timeout.
    let dead = format!("127.0.0.1:{}", eddy_sql_tests::free_port()?);
    let started = Instant::now();
    let err = client
        .simple_query(&format!(
            "CREATE SOURCE unreachable (a INT) WITH (connector = 'kafka', topic = 't', \
             properties.bootstrap.server = '{dead}') FORMAT PLAIN ENCODE JSON"
        ))
        .await
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(err.contains("cannot reach the Kafka broker") && err.contains(&dead), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "CREATE took {:?}", started.elapsed());

    // Broker restart mid-stream: the source and the sink reconnect and continue.
    let cluster = MockCluster::new(1)?;
    for (topic, partitions) in [("faults", 2), ("faults_out", 1), ("eddy_sink_progress", 1)] {
        cluster.create_topic(topic, partitions, 1)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()?;
    let with =
        |topic: &str| format!("connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{bootstrap}'");
    client
        .batch_execute(&format!(
            "CREATE SOURCE faults (id BIGINT, k INT) WITH ({}) FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW fault_counts AS SELECT k, count(*) AS n, sum(id) AS s FROM faults GROUP BY k;
             CREATE SINK fault_sink FROM fault_counts WITH ({}, primary_key = 'k') FORMAT UPSERT ENCODE JSON;",
            with("faults"),
            with("faults_out"),
        ))
        .await?;
    let expected = |n: i64| -> Vec<Vec<String>> {
        let mut groups: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for i in 0..n {
            let g = groups.entry(i % 4).or_default();
            g.0 += 1;
            g.1 += i;
        }
        groups.into_iter().map(|(k, (c, s))| vec![k.to_string(), c.to_string(), s.to_string()]).collect()
    };
    let produce = |from: i64, to: i64| -> Result<()> {
        for i in from..to {
            send(&p, "faults", Some((i % 2) as i32), None, Some(&format!("{{\"id\": {i}, \"k\": {}}}", i % 4)))?;
        }
        Ok(())
    };
    produce(0, 500)?;
    p.flush(Duration::from_secs(10))?;
    wait_for(&client, "SELECT * FROM fault_counts ORDER BY k", &expected(500), Duration::from_secs(30)).await?;

    // Down for a few seconds while records keep coming (the producer holds them meanwhile).
    cluster.broker_down(1)?;
    produce(500, 1000)?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.broker_up(1)?;
    produce(1000, 1500)?;
    p.flush(Duration::from_secs(60))?;
    wait_for(&client, "SELECT * FROM fault_counts ORDER BY k", &expected(1500), Duration::from_secs(60)).await?;

    // The sink topic ends at the view's rows.
    let want: BTreeMap<String, String> = expected(1500)
        .into_iter()
        .map(|r| (format!("{{\"k\":{}}}", r[0]), format!("{{\"k\":{},\"n\":{},\"s\":{}}}", r[0], r[1], r[2])))
        .collect();
    let last_per_key = |records: &[(Option<String>, Option<String>)]| {
        let mut last = BTreeMap::new();
        for (k, v) in records {
            last.insert(k.clone().unwrap_or_default(), v.clone().unwrap_or_default());
        }
        last
    };
    let records = consume_committed(&bootstrap, "faults_out", |r| last_per_key(r) == want)?;
    assert_eq!(last_per_key(&records), want);
    Ok(())
}

/// `scan.startup.mode = 'latest'` (the mock cluster cannot look offsets up by time:
/// `timestamp` is tested against the broker process in kafka_broker.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_startup_modes() -> Result<()> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("startup", 1, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    let p = producer(&bootstrap)?;
    let base_ms = 1_767_225_600_000i64;
    let produce = |ids: std::ops::Range<i64>| -> Result<()> {
        for i in ids {
            let value = format!("{{\"id\": {i}}}");
            let record = BaseRecord::<str, str>::to("startup").payload(&value).timestamp(base_ms + i * 1000);
            p.send(record).map_err(|(e, _)| e)?;
        }
        p.flush(Duration::from_secs(10))?;
        Ok(())
    };
    produce(0..10)?;
    let server = TestServer::start_with(&["--barrier-interval-ms", "100", "--checkpoint-interval-ms", "300"])?;
    let client = server.connect().await?;
    let with = format!("connector = 'kafka', topic = 'startup', properties.bootstrap.server = '{bootstrap}'");
    client
        .batch_execute(&format!(
            "CREATE SOURCE s_latest (id BIGINT) WITH ({with}, scan.startup.mode = 'latest') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW v_latest AS SELECT count(*) AS n, sum(id) AS s FROM s_latest;"
        ))
        .await?;
    // `latest` is resolved when the split starts reading, right after CREATE.
    tokio::time::sleep(Duration::from_secs(2)).await;
    produce(10..15)?;
    let want = |ids: std::ops::Range<i64>| vec![vec![ids.clone().count().to_string(), ids.sum::<i64>().to_string()]];
    wait_for(&client, "SELECT * FROM v_latest", &want(10..15), Duration::from_secs(30)).await?;
    Ok(())
}
