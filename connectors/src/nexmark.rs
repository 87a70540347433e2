//! The Nexmark benchmark generator, written straight into Arrow builders.
//!
//! Follows the Nexmark model (as in the Java reference and RisingWave's Rust port): events are
//! numbered; each group of 50 is one person, three auctions and 46 bids; ids, hot keys, prices,
//! strings and padding follow the reference distributions; the event time is a function of the
//! event number. Every event's random fields come from a generator seeded with its event id,
//! so a run is reproducible and any split of the event numbers produces disjoint, identical
//! events. Split `i` of `n` generates the events whose number is `i (mod n)`.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, BooleanBufferBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder, StructArray,
    TimestampMillisecondBuilder,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::error::{ConnectorError, Result};

/// Which events a source produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableType {
    Person,
    Auction,
    Bid,
    /// All three in one stream: `event_type` plus one struct column per kind.
    Combined,
}

impl TableType {
    /// # Errors
    /// For a name that is not a Nexmark table.
    pub fn parse(name: Option<&str>) -> Result<Self> {
        match name.map(str::to_ascii_lowercase).as_deref() {
            None => Ok(TableType::Combined),
            Some("person") => Ok(TableType::Person),
            Some("auction") => Ok(TableType::Auction),
            Some("bid") => Ok(TableType::Bid),
            Some(other) => Err(ConnectorError::InvalidOption(format!(
                "nexmark.table.type = '{other}': expected Person, Auction or Bid (or leave it out for the combined stream)"
            ))),
        }
    }
}

const PROPORTION_DENOMINATOR: u64 = 50;
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const FIRST_CATEGORY_ID: u64 = 10;
const NUM_CATEGORIES: u64 = 5;
const ACTIVE_PEOPLE: u64 = 1000;
const PERSON_ID_LEAD: u64 = 10;
const IN_FLIGHT_AUCTIONS: u64 = 100;
const AUCTION_ID_LEAD: u64 = 10;
const HOT_SELLER_RATIO: u64 = 4;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_CHANNEL_RATIO: u64 = 2;
const HOT_KEY_BUCKET: u64 = 100;
const AVG_PERSON_BYTES: u64 = 200;
const AVG_AUCTION_BYTES: u64 = 500;
const AVG_BID_BYTES: u64 = 100;
const CHANNELS: usize = 10_000;
/// 2015-07-15 00:00:00 UTC: a fixed origin keeps runs reproducible.
pub const DEFAULT_BASE_TIME_MS: i64 = 1_436_918_400_000;
/// The reference rate of 10,000 events/s: 100 µs of event time per event.
pub const DEFAULT_INTER_EVENT_US: f64 = 100.0;

const FIRST_NAMES: [&str; 11] =
    ["peter", "paul", "luke", "john", "saul", "vicky", "kate", "julie", "sarah", "deiter", "walter"];
const LAST_NAMES: [&str; 9] = ["shultz", "abrams", "spencer", "white", "bartels", "walton", "smith", "jones", "noris"];
const CITIES: [&str; 10] =
    ["phoenix", "los angeles", "san francisco", "boise", "portland", "bend", "redmond", "seattle", "kent", "cheyenne"];
const STATES: [&str; 6] = ["az", "ca", "id", "or", "wa", "wy"];
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// A small, fast generator (wyrand); seeded per event for determinism.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut r = Rng(seed ^ 0x2545_f491_4f6c_dd1d);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) ^ t) as u64
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `len` lowercase letters appended to `out`.
    fn letters(&mut self, len: usize, out: &mut String) {
        let mut left = len;
        while left > 0 {
            let mut bits = self.next();
            for _ in 0..left.min(8) {
                out.push((b'a' + (((bits & 0xff) * 26) >> 8) as u8) as char);
                bits >>= 8;
                left -= 1;
            }
        }
    }

    /// Letters with an occasional delimiter, 3..max long (for url path segments).
    fn delimited(&mut self, max: u64, delimiter: char, out: &mut String) {
        let len = 3 + self.below(max - 3);
        for _ in 0..len {
            if self.below(13) == 0 {
                out.push(delimiter);
            } else {
                out.push((b'a' + self.below(26) as u8) as char);
            }
        }
    }

    /// Padding so events average their idealized size.
    fn extra(&mut self, current: u64, average: u64, out: &mut String) {
        if current > average {
            return;
        }
        let rem = average - current;
        let delta = (rem + 2) / 5;
        let len = rem - delta + if delta == 0 { 0 } else { self.below(2 * delta) };
        self.letters(len as usize, out);
    }

    /// Log-uniform over 100..100,000,000 cents.
    fn price(&mut self) -> i64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as i64
    }
}

fn base_url(seed: u64) -> String {
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut url = String::from("https://www.nexmark.com/");
    for i in 0..3 {
        if i > 0 {
            url.push('/');
        }
        rng.delimited(5, '_', &mut url);
    }
    url.push_str("/item.htm?query=1");
    url
}

/// The 10,000 cached (channel, url) pairs and the four hot urls, built once.
struct Channels {
    cached: Vec<(String, String)>,
    hot_urls: Vec<String>,
}

fn channels() -> &'static Channels {
    static CHANNELS_CELL: OnceLock<Channels> = OnceLock::new();
    CHANNELS_CELL.get_or_init(|| {
        let cached = (0..CHANNELS as u64)
            .map(|i| {
                let mut url = base_url(i);
                let mut rng = Rng::new(i);
                if rng.below(10) > 0 {
                    url.push_str("&channel_id=");
                    url.push_str(&((i as i32).reverse_bits() as i64).abs().to_string());
                }
                (format!("channel-{i}"), url)
            })
            .collect();
        let hot_urls = (0..4).map(|i| base_url(1_000_000 + i)).collect();
        Channels { cached, hot_urls }
    })
}

/// With one person per 50 events, the person count so far is the epoch number.
fn last_person_id(id: u64) -> u64 {
    id / PROPORTION_DENOMINATOR * PERSON_PROPORTION
}

fn next_person_id(id: u64, rng: &mut Rng) -> u64 {
    let people = last_person_id(id) + 1;
    let active = people.min(ACTIVE_PEOPLE);
    people - active + rng.below(active + PERSON_ID_LEAD)
}

fn last_auction_id(id: u64) -> u64 {
    let mut epoch = id / PROPORTION_DENOMINATOR;
    let mut offset = id % PROPORTION_DENOMINATOR;
    if offset < PERSON_PROPORTION {
        epoch = epoch.saturating_sub(1);
        offset = AUCTION_PROPORTION - 1;
    } else if PERSON_PROPORTION + AUCTION_PROPORTION <= offset {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + offset
}

fn next_auction_id(id: u64, rng: &mut Rng) -> u64 {
    let max = last_auction_id(id);
    let min = max.saturating_sub(IN_FLIGHT_AUCTIONS);
    min + rng.below(max - min + 1 + AUCTION_ID_LEAD)
}

/// Settings of one generator.
#[derive(Debug, Clone)]
pub struct NexmarkConfig {
    pub table: TableType,
    pub split: u64,
    pub splits: u64,
    /// Stop after this many events (over all splits); `None` = unbounded.
    pub event_num: Option<u64>,
    pub max_chunk_size: usize,
    pub base_time_ms: i64,
    pub inter_event_us: f64,
}

/// Column layout of each table, as the generator produces it.
pub fn person_fields() -> Fields {
    Fields::from(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("email_address", DataType::Utf8, true),
        Field::new("credit_card", DataType::Utf8, true),
        Field::new("city", DataType::Utf8, true),
        Field::new("state", DataType::Utf8, true),
        Field::new("date_time", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("extra", DataType::Utf8, true),
    ])
}

pub fn auction_fields() -> Fields {
    Fields::from(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("item_name", DataType::Utf8, true),
        Field::new("description", DataType::Utf8, true),
        Field::new("initial_bid", DataType::Int64, true),
        Field::new("reserve", DataType::Int64, true),
        Field::new("date_time", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("expires", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("seller", DataType::Int64, true),
        Field::new("category", DataType::Int64, true),
        Field::new("extra", DataType::Utf8, true),
    ])
}

pub fn bid_fields() -> Fields {
    Fields::from(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("bidder", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("url", DataType::Utf8, true),
        Field::new("date_time", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("extra", DataType::Utf8, true),
    ])
}

/// The schema the generator produces for a table type.
pub fn schema(table: TableType) -> SchemaRef {
    Arc::new(match table {
        TableType::Person => Schema::new(person_fields()),
        TableType::Auction => Schema::new(auction_fields()),
        TableType::Bid => Schema::new(bid_fields()),
        TableType::Combined => Schema::new(vec![
            Field::new("event_type", DataType::Int32, true),
            Field::new("person", DataType::Struct(person_fields()), true),
            Field::new("auction", DataType::Struct(auction_fields()), true),
            Field::new("bid", DataType::Struct(bid_fields()), true),
        ]),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Person,
    Auction,
    Bid,
}

fn kind_of(event_number: u64) -> Kind {
    let rem = event_number % PROPORTION_DENOMINATOR;
    if rem < PERSON_PROPORTION {
        Kind::Person
    } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
        Kind::Auction
    } else {
        Kind::Bid
    }
}

struct PersonBuilders {
    id: Int64Builder,
    name: StringBuilder,
    email: StringBuilder,
    card: StringBuilder,
    city: StringBuilder,
    state: StringBuilder,
    date_time: TimestampMillisecondBuilder,
    extra: StringBuilder,
}

impl PersonBuilders {
    fn new(n: usize) -> Self {
        Self {
            id: Int64Builder::with_capacity(n),
            name: StringBuilder::with_capacity(n, n * 12),
            email: StringBuilder::with_capacity(n, n * 18),
            card: StringBuilder::with_capacity(n, n * 19),
            city: StringBuilder::with_capacity(n, n * 10),
            state: StringBuilder::with_capacity(n, n * 2),
            date_time: TimestampMillisecondBuilder::with_capacity(n),
            extra: StringBuilder::with_capacity(n, n * 140),
        }
    }

    fn append_null(&mut self) {
        self.id.append_null();
        self.name.append_null();
        self.email.append_null();
        self.card.append_null();
        self.city.append_null();
        self.state.append_null();
        self.date_time.append_null();
        self.extra.append_null();
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.id.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.email.finish()),
            Arc::new(self.card.finish()),
            Arc::new(self.city.finish()),
            Arc::new(self.state.finish()),
            Arc::new(self.date_time.finish()),
            Arc::new(self.extra.finish()),
        ]
    }
}

struct AuctionBuilders {
    id: Int64Builder,
    item_name: StringBuilder,
    description: StringBuilder,
    initial_bid: Int64Builder,
    reserve: Int64Builder,
    date_time: TimestampMillisecondBuilder,
    expires: TimestampMillisecondBuilder,
    seller: Int64Builder,
    category: Int64Builder,
    extra: StringBuilder,
}

impl AuctionBuilders {
    fn new(n: usize) -> Self {
        Self {
            id: Int64Builder::with_capacity(n),
            item_name: StringBuilder::with_capacity(n, n * 20),
            description: StringBuilder::with_capacity(n, n * 100),
            initial_bid: Int64Builder::with_capacity(n),
            reserve: Int64Builder::with_capacity(n),
            date_time: TimestampMillisecondBuilder::with_capacity(n),
            expires: TimestampMillisecondBuilder::with_capacity(n),
            seller: Int64Builder::with_capacity(n),
            category: Int64Builder::with_capacity(n),
            extra: StringBuilder::with_capacity(n, n * 340),
        }
    }

    fn append_null(&mut self) {
        self.id.append_null();
        self.item_name.append_null();
        self.description.append_null();
        self.initial_bid.append_null();
        self.reserve.append_null();
        self.date_time.append_null();
        self.expires.append_null();
        self.seller.append_null();
        self.category.append_null();
        self.extra.append_null();
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.id.finish()),
            Arc::new(self.item_name.finish()),
            Arc::new(self.description.finish()),
            Arc::new(self.initial_bid.finish()),
            Arc::new(self.reserve.finish()),
            Arc::new(self.date_time.finish()),
            Arc::new(self.expires.finish()),
            Arc::new(self.seller.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.extra.finish()),
        ]
    }
}

struct BidBuilders {
    auction: Int64Builder,
    bidder: Int64Builder,
    price: Int64Builder,
    channel: StringBuilder,
    url: StringBuilder,
    date_time: TimestampMillisecondBuilder,
    extra: StringBuilder,
}

impl BidBuilders {
    fn new(n: usize) -> Self {
        Self {
            auction: Int64Builder::with_capacity(n),
            bidder: Int64Builder::with_capacity(n),
            price: Int64Builder::with_capacity(n),
            channel: StringBuilder::with_capacity(n, n * 12),
            url: StringBuilder::with_capacity(n, n * 80),
            date_time: TimestampMillisecondBuilder::with_capacity(n),
            extra: StringBuilder::with_capacity(n, n * 70),
        }
    }

    fn append_null(&mut self) {
        self.auction.append_null();
        self.bidder.append_null();
        self.price.append_null();
        self.channel.append_null();
        self.url.append_null();
        self.date_time.append_null();
        self.extra.append_null();
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.auction.finish()),
            Arc::new(self.bidder.finish()),
            Arc::new(self.price.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.url.finish()),
            Arc::new(self.date_time.finish()),
            Arc::new(self.extra.finish()),
        ]
    }
}

/// A Nexmark generator for one split.
pub struct NexmarkGenerator {
    config: NexmarkConfig,
    /// The next event number this split generates.
    next_event: u64,
    schema: SchemaRef,
    scratch: String,
}

impl NexmarkGenerator {
    pub fn new(config: NexmarkConfig) -> Self {
        let schema = schema(config.table);
        let next_event = config.split;
        Self { config, next_event, schema, scratch: String::with_capacity(512) }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The next event number to generate; restoring it resumes the split exactly.
    pub fn position(&self) -> u64 {
        self.next_event
    }

    pub fn seek(&mut self, next_event: u64) {
        self.next_event = next_event;
    }

    /// Event time of an event, in ms since the epoch.
    pub fn event_time_ms(&self, event_number: u64) -> i64 {
        self.config.base_time_ms + (event_number as f64 * self.config.inter_event_us / 1000.0).round() as i64
    }

    fn exhausted(&self, n: u64) -> bool {
        self.config.event_num.is_some_and(|limit| n >= limit)
    }

    /// Generates the next chunk of at most `max_chunk_size` rows of this split's table type
    /// (events of other types are skipped, as in per-table sources). `None` once the event
    /// limit is reached.
    pub fn next_chunk(&mut self) -> Option<RecordBatch> {
        if self.exhausted(self.next_event) {
            return None;
        }
        let rows = self.config.max_chunk_size.max(1);
        let step = self.config.splits.max(1);
        let result = match self.config.table {
            TableType::Bid => {
                let mut b = BidBuilders::new(rows);
                let mut count = 0;
                while count < rows && !self.exhausted(self.next_event) {
                    let n = self.next_event;
                    self.next_event += step;
                    if kind_of(n) == Kind::Bid {
                        self.bid(n, &mut b);
                        count += 1;
                    }
                }
                RecordBatch::try_new(self.schema.clone(), b.finish())
            }
            TableType::Auction => {
                let mut b = AuctionBuilders::new(rows);
                let mut count = 0;
                while count < rows && !self.exhausted(self.next_event) {
                    let n = self.next_event;
                    self.next_event += step;
                    if kind_of(n) == Kind::Auction {
                        self.auction(n, &mut b);
                        count += 1;
                    }
                }
                RecordBatch::try_new(self.schema.clone(), b.finish())
            }
            TableType::Person => {
                let mut b = PersonBuilders::new(rows);
                let mut count = 0;
                while count < rows && !self.exhausted(self.next_event) {
                    let n = self.next_event;
                    self.next_event += step;
                    if kind_of(n) == Kind::Person {
                        self.person(n, &mut b);
                        count += 1;
                    }
                }
                RecordBatch::try_new(self.schema.clone(), b.finish())
            }
            TableType::Combined => self.combined_chunk(rows, step),
        };
        match result {
            Ok(batch) if batch.num_rows() > 0 => Some(batch),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(error = %e, "nexmark generator built an invalid batch");
                None
            }
        }
    }

    fn combined_chunk(&mut self, rows: usize, step: u64) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut types = Int32Builder::with_capacity(rows);
        let mut p = PersonBuilders::new(rows / 40 + 1);
        let mut a = AuctionBuilders::new(rows / 12 + 1);
        let mut b = BidBuilders::new(rows);
        let mut valid =
            [BooleanBufferBuilder::new(rows), BooleanBufferBuilder::new(rows), BooleanBufferBuilder::new(rows)];
        let mut count = 0;
        while count < rows && !self.exhausted(self.next_event) {
            let n = self.next_event;
            self.next_event += step;
            count += 1;
            let kind = kind_of(n);
            types.append_value(match kind {
                Kind::Person => 0,
                Kind::Auction => 1,
                Kind::Bid => 2,
            });
            for (i, v) in valid.iter_mut().enumerate() {
                v.append(i == kind as usize);
            }
            match kind {
                Kind::Person => {
                    self.person(n, &mut p);
                    a.append_null();
                    b.append_null();
                }
                Kind::Auction => {
                    p.append_null();
                    self.auction(n, &mut a);
                    b.append_null();
                }
                Kind::Bid => {
                    p.append_null();
                    a.append_null();
                    self.bid(n, &mut b);
                }
            }
        }
        let [vp, va, vb] = &mut valid;
        let person = StructArray::try_new(person_fields(), p.finish(), Some(NullBuffer::new(vp.finish())))?;
        let auction = StructArray::try_new(auction_fields(), a.finish(), Some(NullBuffer::new(va.finish())))?;
        let bid = StructArray::try_new(bid_fields(), b.finish(), Some(NullBuffer::new(vb.finish())))?;
        RecordBatch::try_new(
            self.schema.clone(),
            vec![Arc::new(types.finish()), Arc::new(person), Arc::new(auction), Arc::new(bid)],
        )
    }

    fn person(&mut self, n: u64, out: &mut PersonBuilders) {
        let id = n;
        let mut rng = Rng::new(id);
        let time = self.event_time_ms(n);
        let s = &mut self.scratch;
        out.id.append_value((last_person_id(id) + FIRST_PERSON_ID) as i64);
        s.clear();
        s.push_str(FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize]);
        s.push(' ');
        s.push_str(LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]);
        let mut size = 8 + s.len() as u64;
        out.name.append_value(s.as_str());
        s.clear();
        rng.letters(7, s);
        s.push('@');
        rng.letters(5, s);
        s.push_str(".com");
        size += s.len() as u64;
        out.email.append_value(s.as_str());
        let card =
            format!("{:04} {:04} {:04} {:04}", rng.below(10000), rng.below(10000), rng.below(10000), rng.below(10000));
        size += card.len() as u64;
        out.card.append_value(card);
        let city = CITIES[rng.below(CITIES.len() as u64) as usize];
        let state = STATES[rng.below(STATES.len() as u64) as usize];
        size += (city.len() + state.len()) as u64;
        out.city.append_value(city);
        out.state.append_value(state);
        out.date_time.append_value(time);
        s.clear();
        rng.extra(size, AVG_PERSON_BYTES, s);
        out.extra.append_value(s.as_str());
    }

    fn auction(&mut self, n: u64, out: &mut AuctionBuilders) {
        let id = n;
        let mut rng = Rng::new(id);
        let time = self.event_time_ms(n);
        let events_for_auctions = IN_FLIGHT_AUCTIONS * PROPORTION_DENOMINATOR / AUCTION_PROPORTION;
        let horizon = (self.event_time_ms(n + events_for_auctions) - time).max(0) as u64;
        let s = &mut self.scratch;
        out.id.append_value((last_auction_id(id) + FIRST_AUCTION_ID) as i64);
        s.clear();
        rng.letters(20, s);
        out.item_name.append_value(s.as_str());
        s.clear();
        rng.letters(100, s);
        out.description.append_value(s.as_str());
        let initial_bid = rng.price();
        out.initial_bid.append_value(initial_bid);
        out.reserve.append_value(initial_bid + rng.price());
        out.date_time.append_value(time);
        // Auctions live about as long as it takes to create ~100 more of them.
        out.expires.append_value(time + 1 + rng.below((horizon * 2).max(1)) as i64);
        let seller = if rng.below(HOT_SELLER_RATIO) > 0 {
            (last_person_id(id) / HOT_KEY_BUCKET) * HOT_KEY_BUCKET
        } else {
            next_person_id(id, &mut rng)
        };
        out.seller.append_value((seller + FIRST_PERSON_ID) as i64);
        out.category.append_value((FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES)) as i64);
        let size = 8 + 20 + 100 + 8 * 5;
        let s = &mut self.scratch;
        s.clear();
        rng.extra(size, AVG_AUCTION_BYTES, s);
        out.extra.append_value(s.as_str());
    }

    fn bid(&mut self, n: u64, out: &mut BidBuilders) {
        let id = n;
        let mut rng = Rng::new(id);
        let auction = if rng.below(HOT_AUCTION_RATIO) > 0 {
            (last_auction_id(id) / HOT_KEY_BUCKET) * HOT_KEY_BUCKET
        } else {
            next_auction_id(id, &mut rng)
        };
        let bidder = if rng.below(HOT_BIDDER_RATIO) > 0 {
            (last_person_id(id) / HOT_KEY_BUCKET) * HOT_KEY_BUCKET + 1
        } else {
            next_person_id(id, &mut rng)
        };
        out.auction.append_value((auction + FIRST_AUCTION_ID) as i64);
        out.bidder.append_value((bidder + FIRST_PERSON_ID) as i64);
        let time = self.event_time_ms(n);
        out.price.append_value(rng.price());
        let ch = channels();
        if rng.below(HOT_CHANNEL_RATIO) > 0 {
            let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
            out.channel.append_value(HOT_CHANNELS[i]);
            out.url.append_value(&ch.hot_urls[i]);
        } else {
            let (c, u) = &ch.cached[rng.below(CHANNELS as u64) as usize];
            out.channel.append_value(c);
            out.url.append_value(u);
        }
        out.date_time.append_value(time);
        let s = &mut self.scratch;
        s.clear();
        rng.extra(32, AVG_BID_BYTES, s);
        out.extra.append_value(s.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    fn config(table: TableType, split: u64, splits: u64, event_num: u64) -> NexmarkConfig {
        NexmarkConfig {
            table,
            split,
            splits,
            event_num: Some(event_num),
            max_chunk_size: 1024,
            base_time_ms: DEFAULT_BASE_TIME_MS,
            inter_event_us: DEFAULT_INTER_EVENT_US,
        }
    }

    fn all(mut g: NexmarkGenerator) -> Vec<RecordBatch> {
        std::iter::from_fn(|| g.next_chunk()).collect()
    }

    #[test]
    fn event_mix_and_determinism() {
        let a = all(NexmarkGenerator::new(config(TableType::Combined, 0, 1, 5000)));
        let b = all(NexmarkGenerator::new(config(TableType::Combined, 0, 1, 5000)));
        assert_eq!(a, b);
        let mut counts = [0usize; 3];
        for batch in &a {
            for t in batch.column(0).as_primitive::<arrow::datatypes::Int32Type>().values() {
                counts[*t as usize] += 1;
            }
        }
        assert_eq!(counts, [100, 300, 4600]);
    }

    #[test]
    fn splits_partition_the_stream() {
        let whole: usize =
            all(NexmarkGenerator::new(config(TableType::Bid, 0, 1, 10_000))).iter().map(|b| b.num_rows()).sum();
        let parts: usize = (0..3)
            .map(|s| {
                all(NexmarkGenerator::new(config(TableType::Bid, s, 3, 10_000)))
                    .iter()
                    .map(|b| b.num_rows())
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(whole, 9200);
        assert_eq!(parts, whole);
    }

    #[test]
    fn bids_follow_the_model() {
        let batches = all(NexmarkGenerator::new(config(TableType::Bid, 0, 1, 50_000)));
        let mut hot = 0usize;
        let mut total = 0usize;
        let mut bytes = 0usize;
        for b in &batches {
            let auction = b.column(0).as_primitive::<Int64Type>();
            let price = b.column(2).as_primitive::<Int64Type>();
            let extra = b.column(6).as_string::<i32>();
            for i in 0..b.num_rows() {
                total += 1;
                if (auction.value(i) - FIRST_AUCTION_ID as i64) % 100 == 0 {
                    hot += 1;
                }
                assert!((100..=100_000_000).contains(&price.value(i)));
                bytes += extra.value(i).len();
            }
            assert_eq!(b.column(5).null_count(), 0);
        }
        let hot_share = hot as f64 / total as f64;
        assert!((0.45..0.6).contains(&hot_share), "hot auction share {hot_share}");
        let avg_extra = bytes as f64 / total as f64;
        assert!((60.0..76.0).contains(&avg_extra), "average padding {avg_extra}");
    }
}
