//! Snapshot tests of streaming plans: the `EXPLAIN` text of each query shape.
//! Regenerate with `INSTA_UPDATE=always cargo test -p eddy-planner --test explain`.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use eddy_common::ids::ObjectId;
use eddy_planner::catalog::{Distribution, RelationDef, RelationKind, RelationResolver, StorageLayout};
use eddy_planner::plan_stream;

struct Catalog {
    by_name: HashMap<String, Arc<RelationDef>>,
}

impl RelationResolver for Catalog {
    fn relation(&self, name: &str) -> Option<Arc<RelationDef>> {
        self.by_name.get(name).cloned()
    }

    fn relation_by_id(&self, id: ObjectId) -> Option<Arc<RelationDef>> {
        self.by_name.values().find(|d| d.id == id).cloned()
    }
}

fn table(id: u32, name: &str, schema: SchemaRef, pk: Vec<usize>) -> RelationDef {
    RelationDef {
        id: ObjectId(id),
        name: name.into(),
        kind: RelationKind::Table,
        storage: Some(if pk.is_empty() { StorageLayout::Counted } else { StorageLayout::Keyed { key: pk.clone() } }),
        primary_key: pk,
        schema,
        append_only: false,
        watermark: None,
        defaults: vec![],
        generated: vec![],
        connector: None,
        dependencies: vec![],
        output_parallelism: 1,
        output_distribution: Distribution::Single,
        definition: String::new(),
        view_plan: None,
        emit_on_window_close: false,
    }
}

async fn explain(sql: &str) -> String {
    let orders: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("customer", DataType::Int32, true),
        Field::new("amount", DataType::Decimal128(38, 10), true),
        Field::new("status", DataType::Utf8, true),
    ]));
    let events: SchemaRef =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true), Field::new("v", DataType::Int64, true)]));
    let ctx = SessionContext::new();
    ctx.register_table(
        "orders",
        Arc::new(MemTable::try_new(orders.clone(), vec![vec![]]).unwrap_or_else(|e| panic!("{e}"))),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    ctx.register_table(
        "events",
        Arc::new(MemTable::try_new(events.clone(), vec![vec![]]).unwrap_or_else(|e| panic!("{e}"))),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let catalog = Catalog {
        by_name: HashMap::from([
            ("orders".to_string(), Arc::new(table(1, "orders", orders, vec![0]))),
            ("events".to_string(), Arc::new(table(2, "events", events, vec![]))),
        ]),
    };
    let plan = ctx.state().create_logical_plan(sql).await.unwrap_or_else(|e| panic!("{e}"));
    let optimized = ctx.state().optimize(&plan).unwrap_or_else(|e| panic!("{e}"));
    match plan_stream(&optimized, &catalog, ObjectId(100), 2, false, &eddy_planner::stream::Target::Materialize) {
        Ok((_, graph)) => graph.explain(),
        Err(e) => format!("error: {e}"),
    }
}

#[tokio::test]
async fn grouped_view_with_having() {
    insta::assert_snapshot!(
        explain(
            "SELECT customer, count(*) AS n, sum(amount) AS total, max(amount) AS biggest \
         FROM orders WHERE status <> 'cancelled' GROUP BY customer HAVING count(*) > 1"
        )
        .await
    );
}

#[tokio::test]
async fn projection_keeps_the_table_key() {
    insta::assert_snapshot!(explain("SELECT id, amount * 2 AS double FROM orders WHERE customer = 7").await);
}

#[tokio::test]
async fn global_aggregate_runs_on_one_actor() {
    insta::assert_snapshot!(explain("SELECT count(*), sum(v) FROM events").await);
}

#[tokio::test]
async fn union_of_multisets() {
    insta::assert_snapshot!(explain("SELECT k FROM events UNION ALL SELECT customer FROM orders").await);
}

#[tokio::test]
async fn distinct_is_an_aggregate() {
    insta::assert_snapshot!(explain("SELECT DISTINCT k FROM events").await);
}

#[tokio::test]
async fn count_distinct() {
    insta::assert_snapshot!(explain("SELECT k, count(DISTINCT v) FROM events GROUP BY k").await);
}

#[tokio::test]
async fn refuses_what_it_cannot_maintain() {
    insta::assert_snapshot!(explain("SELECT * FROM orders, events").await);
}

#[tokio::test]
async fn order_by_limit_is_a_single_partition_top_n() {
    insta::assert_snapshot!(explain("SELECT k FROM events ORDER BY k LIMIT 3").await);
}

#[tokio::test]
async fn ranking_bounded_by_a_filter_is_a_top_n() {
    insta::assert_snapshot!(
        explain(
            "SELECT * FROM (SELECT k, v, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v DESC) AS rn FROM events) \
             WHERE rn <= 2"
        )
        .await
    );
}

#[tokio::test]
async fn join_exchanges_both_sides_by_key_and_casts_mixed_key_types() {
    insta::assert_snapshot!(
        explain("SELECT o.id, e.v FROM orders o LEFT JOIN events e ON o.customer = e.k AND e.v > o.amount").await
    );
}
