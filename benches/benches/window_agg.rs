//! The windowed hash aggregate alone: rows of (auction, window_start, price) through
//! `count(*), max(price)` grouped by auction and window, emit-on-update and emit-on-close.
//!
//! `cargo bench -p eddy-benches --bench window_agg`

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::DFSchema;
use eddy_common::ChangeBatch;
use eddy_executor::message::Barrier;
use eddy_executor::operator::{Operator, Output};
use eddy_executor::ops::agg::HashAggOperator;
use eddy_planner::stream::{AggCall, AggKind};

const ROWS_PER_BATCH: usize = 4096;
const BATCHES: usize = 64;

fn batches() -> (Vec<ChangeBatch>, DFSchema, DFSchema) {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let input = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("window_start", ts.clone(), true),
        Field::new("price", DataType::Int64, true),
    ]));
    let output = Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("window_start", ts, true),
        Field::new("n", DataType::Int64, true),
        Field::new("m", DataType::Int64, true),
    ]);
    let mut out = Vec::new();
    let mut event = 0i64;
    for _ in 0..BATCHES {
        let mut auctions = Vec::with_capacity(ROWS_PER_BATCH);
        let mut windows = Vec::with_capacity(ROWS_PER_BATCH);
        let mut prices = Vec::with_capacity(ROWS_PER_BATCH);
        for _ in 0..ROWS_PER_BATCH {
            // Half the bids go to one hot auction, as in Nexmark.
            auctions.push(if event % 2 == 0 { 1000 } else { 1000 + (event * 7919) % 1000 });
            windows.push((event / 100_000) * 10_000);
            prices.push((event * 104_729) % 100_000_000);
            event += 1;
        }
        let batch = RecordBatch::try_new(
            input.clone(),
            vec![
                Arc::new(Int64Array::from(auctions)),
                Arc::new(TimestampMillisecondArray::from(windows)),
                Arc::new(Int64Array::from(prices)),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        out.push(ChangeBatch::inserts(batch));
    }
    let input = DFSchema::try_from(input.as_ref().clone()).unwrap_or_else(|e| panic!("{e}"));
    let output = DFSchema::try_from(output).unwrap_or_else(|e| panic!("{e}"));
    (out, input, output)
}

fn calls() -> Vec<AggCall> {
    vec![
        AggCall {
            kind: AggKind::CountRows,
            arg: None,
            arg_type: None,
            distinct: false,
            filter: None,
            order_by: vec![],
            return_type: DataType::Int64,
        },
        AggCall {
            kind: AggKind::Max,
            arg: Some(2),
            arg_type: Some(DataType::Int64),
            distinct: false,
            filter: None,
            order_by: vec![],
            return_type: DataType::Int64,
        },
    ]
}

fn run(emit_on_close: bool, input: &[ChangeBatch], in_schema: &DFSchema, out_schema: &DFSchema) -> usize {
    let mut op = HashAggOperator::new(&[0, 1], &calls(), in_schema, out_schema, true, Some(1), emit_on_close)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Output::default();
    let mut emitted = 0;
    for (i, b) in input.iter().enumerate() {
        op.process(0, b.clone(), &mut out).unwrap_or_else(|e| panic!("{e}"));
        if i % 8 == 7 {
            let barrier = Barrier { epoch: i as u64, checkpoint: false, mutation: None };
            op.on_barrier(&barrier, &mut out).unwrap_or_else(|e| panic!("{e}"));
            // Advance event time: windows behind the latest one close.
            op.on_watermark(1, ((i * ROWS_PER_BATCH) as i64 / 100_000) * 10_000, &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            emitted += out.take().len();
        }
    }
    emitted
}

fn bench(c: &mut Criterion) {
    let (input, in_schema, out_schema) = batches();
    let mut group = c.benchmark_group("window_agg");
    group.throughput(Throughput::Elements((ROWS_PER_BATCH * BATCHES) as u64));
    group.sample_size(20);
    group.bench_function("count_max_by_auction_window/emit_on_update", |b| {
        b.iter(|| run(false, &input, &in_schema, &out_schema))
    });
    group.bench_function("count_max_by_auction_window/emit_on_close", |b| {
        b.iter(|| run(true, &input, &in_schema, &out_schema))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
