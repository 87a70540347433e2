//! The randomized differential test: incremental views against batch recomputation.
//!
//! Random tables receive random `INSERT`/`UPDATE`/`DELETE` batches. After every round, each
//! materialized view must hold exactly the rows that DataFusion computes when it runs the
//! view's query as a batch over the tables' current contents. Some views are created midway
//! (so they are backfilled), the server is restarted once (so views resume from their
//! checkpointed state), and one seed runs under a tiny `--memory-limit` (so joins and
//! aggregates evict their state and read it back).
//!
//! Reproducible: `EDDY_DIFF_SEEDS=7,8` and `EDDY_DIFF_ROUNDS=500` choose the runs. Seeds that
//! ever failed are kept in `differential-regressions.txt` and always run first.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use eddy_sql_tests::TestServer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::{Client, SimpleQueryMessage};

/// A maintained view and the batch query that must give the same rows. Views built on other
/// views spell out their inputs in the batch query, so the oracle never reads a view.
struct ViewCase {
    name: &'static str,
    definition: &'static str,
    batch: &'static str,
    /// Created after this many rounds (0 = before any data).
    created_at_round_fraction: u32,
}

const VIEWS: &[ViewCase] = &[
    ViewCase {
        name: "v_filter",
        definition: "SELECT id, g, v FROM t1 WHERE v > 0 AND s <> 'a'",
        batch: "SELECT id, g, v FROM t1 WHERE v > 0 AND s <> 'a'",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_project",
        definition: "SELECT id, v * 2 + g AS x, upper(s) AS u, CASE WHEN b THEN 1 ELSE 0 END AS bb, coalesce(d, -1) AS dd FROM t1",
        batch: "SELECT id, v * 2 + g AS x, upper(s) AS u, CASE WHEN b THEN 1 ELSE 0 END AS bb, coalesce(d, -1) AS dd FROM t1",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_agg",
        definition: "SELECT g, count(*) AS n, count(v) AS nv, sum(v) AS sv, min(v) AS lo, max(v) AS hi, avg(d) AS ad, max(s) AS ms FROM t1 GROUP BY g",
        batch: "SELECT g, count(*) AS n, count(v) AS nv, sum(v) AS sv, min(v) AS lo, max(v) AS hi, avg(d) AS ad, max(s) AS ms FROM t1 GROUP BY g",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_having",
        definition: "SELECT s, count(*) AS c, sum(v) AS sv FROM t1 GROUP BY s HAVING count(*) > 2",
        batch: "SELECT s, count(*) AS c, sum(v) AS sv FROM t1 GROUP BY s HAVING count(*) > 2",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_distinct",
        definition: "SELECT DISTINCT g, s FROM t2",
        batch: "SELECT DISTINCT g, s FROM t2",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_count_distinct",
        definition: "SELECT g, count(DISTINCT s) AS ds, count(DISTINCT w) AS dw, sum(DISTINCT w) AS sw FROM t2 GROUP BY g",
        batch: "SELECT g, count(DISTINCT s) AS ds, count(DISTINCT w) AS dw, sum(DISTINCT w) AS sw FROM t2 GROUP BY g",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_global",
        definition: "SELECT count(*) AS n, sum(v) AS s, min(s) AS m, max(d) AS md, count(DISTINCT g) AS dg FROM t1",
        batch: "SELECT count(*) AS n, sum(v) AS s, min(s) AS m, max(d) AS md, count(DISTINCT g) AS dg FROM t1",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_union",
        definition: "SELECT g, v AS x FROM t1 UNION ALL SELECT g, w FROM t2",
        batch: "SELECT g, v AS x FROM t1 UNION ALL SELECT g, w FROM t2",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_union_agg",
        definition: "SELECT g, count(*) AS n, sum(x) AS s FROM v_union GROUP BY g",
        batch: "SELECT g, count(*) AS n, sum(x) AS s FROM (SELECT g, v AS x FROM t1 UNION ALL SELECT g, w FROM t2) u GROUP BY g",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_bool_string",
        definition: "SELECT g, bool_and(b) AS ba, bool_or(b) AS bo, string_agg(s, '|' ORDER BY s) AS ss FROM t1 GROUP BY g",
        batch: "SELECT g, bool_and(b) AS ba, bool_or(b) AS bo, string_agg(s, '|' ORDER BY s) AS ss FROM t1 GROUP BY g",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_multi_key",
        definition: "SELECT s, w, count(*) AS n, min(g) AS mg FROM t2 WHERE w IS NOT NULL GROUP BY s, w",
        batch: "SELECT s, w, count(*) AS n, min(g) AS mg FROM t2 WHERE w IS NOT NULL GROUP BY s, w",
        created_at_round_fraction: 3,
    },
    ViewCase {
        name: "v_nested",
        definition: "SELECT n, count(*) AS groups, sum(sv) AS total FROM v_agg GROUP BY n",
        batch: "SELECT n, count(*) AS groups, sum(sv) AS total FROM (SELECT g, count(*) AS n, sum(v) AS sv FROM t1 GROUP BY g) a GROUP BY n",
        created_at_round_fraction: 3,
    },
    ViewCase {
        name: "v_multiset_filter",
        definition: "SELECT g, w FROM t2 WHERE w % 2 = 0",
        batch: "SELECT g, w FROM t2 WHERE w % 2 = 0",
        created_at_round_fraction: 2,
    },
    ViewCase {
        name: "v_stats",
        definition: "SELECT g, stddev(d) AS sd, var_pop(d) AS vp, avg(v) AS av FROM t1 GROUP BY g",
        batch: "SELECT g, stddev(d) AS sd, var_pop(d) AS vp, avg(v) AS av FROM t1 GROUP BY g",
        created_at_round_fraction: 2,
    },
    ViewCase {
        name: "v_tumble",
        definition: "SELECT window_start, k, count(*) AS n, sum(v) AS s, max(v) AS m FROM TUMBLE(t3, ts, INTERVAL '5' SECOND) GROUP BY window_start, k",
        batch: "SELECT window_start, k, count(*) AS n, sum(v) AS s, max(v) AS m FROM TUMBLE(t3, ts, INTERVAL '5' SECOND) GROUP BY window_start, k",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_hop",
        definition: "SELECT window_start, window_end, count(*) AS n, min(v) AS lo FROM HOP(t3, ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND) GROUP BY window_start, window_end",
        batch: "SELECT window_start, window_end, count(*) AS n, min(v) AS lo FROM HOP(t3, ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND) GROUP BY window_start, window_end",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_tumble_close",
        definition: "SELECT window_start, count(*) AS n, sum(v) AS s FROM TUMBLE(t3, ts, INTERVAL '5' SECOND) GROUP BY window_start EMIT ON WINDOW CLOSE",
        batch: "SELECT window_start, count(*) AS n, sum(v) AS s FROM TUMBLE(t3, ts, INTERVAL '5' SECOND) GROUP BY window_start \
                HAVING window_start + INTERVAL '5' SECOND <= (SELECT max(ts) - INTERVAL '10' SECOND FROM t3)",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_hop_close_late_created",
        definition: "SELECT window_start, k, count(*) AS n FROM HOP(t3, ts, INTERVAL '3' SECOND, INTERVAL '9' SECOND) GROUP BY window_start, k EMIT ON WINDOW CLOSE",
        batch: "SELECT window_start, k, count(*) AS n FROM HOP(t3, ts, INTERVAL '3' SECOND, INTERVAL '9' SECOND) GROUP BY window_start, k \
                HAVING window_start + INTERVAL '9' SECOND <= (SELECT max(ts) - INTERVAL '10' SECOND FROM t3)",
        created_at_round_fraction: 2,
    },
    ViewCase {
        // Slide 4 s, size 10 s: panes of 2 s, partial aggregates combined per window.
        name: "v_hop_panes",
        definition: "SELECT k, window_end, sum(v) AS s, max(v) AS hi, count(v) FILTER (WHERE v > 0) AS pos, \
                     bool_or(v > 5) AS big FROM HOP(t3, ts, INTERVAL '4' SECOND, INTERVAL '10' SECOND) \
                     GROUP BY k, window_start, window_end",
        batch: "SELECT k, window_end, sum(v) AS s, max(v) AS hi, count(v) FILTER (WHERE v > 0) AS pos, \
                bool_or(v > 5) AS big FROM HOP(t3, ts, INTERVAL '4' SECOND, INTERVAL '10' SECOND) \
                GROUP BY k, window_start, window_end",
        created_at_round_fraction: 1,
    },
    ViewCase {
        name: "v_expr_group",
        definition: "SELECT v % 3 AS m, s IS NULL AS no_s, count(*) AS n FROM t1 GROUP BY v % 3, s IS NULL",
        batch: "SELECT v % 3 AS m, s IS NULL AS no_s, count(*) AS n FROM t1 GROUP BY v % 3, s IS NULL",
        created_at_round_fraction: 4,
    },
    ViewCase {
        name: "v_join_agg",
        definition: "SELECT t1.s, count(*) AS n, sum(t2.w) AS sw FROM t1 JOIN t2 ON t1.g = t2.g GROUP BY t1.s",
        batch: "SELECT t1.s, count(*) AS n, sum(t2.w) AS sw FROM t1 JOIN t2 ON t1.g = t2.g GROUP BY t1.s",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_left_join",
        definition: "SELECT t1.id, t1.g, x.n FROM t1 LEFT JOIN (SELECT g, count(*) AS n FROM t2 GROUP BY g) x ON t1.g = x.g",
        batch: "SELECT t1.id, t1.g, x.n FROM t1 LEFT JOIN (SELECT g, count(*) AS n FROM t2 GROUP BY g) x ON t1.g = x.g",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_full_join",
        definition: "SELECT a.g AS ag, a.n, b.g AS bg, b.m FROM (SELECT g, count(*) AS n FROM t1 GROUP BY g) a FULL JOIN (SELECT g, sum(w) AS m FROM t2 GROUP BY g) b ON a.g = b.g",
        batch: "SELECT a.g AS ag, a.n, b.g AS bg, b.m FROM (SELECT g, count(*) AS n FROM t1 GROUP BY g) a FULL JOIN (SELECT g, sum(w) AS m FROM t2 GROUP BY g) b ON a.g = b.g",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_left_join_residual",
        definition: "SELECT t1.g, count(*) AS n, count(t2.w) AS nw FROM t1 LEFT JOIN t2 ON t1.g = t2.g AND t2.w > t1.v GROUP BY t1.g",
        batch: "SELECT t1.g, count(*) AS n, count(t2.w) AS nw FROM t1 LEFT JOIN t2 ON t1.g = t2.g AND t2.w > t1.v GROUP BY t1.g",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_right_join_residual",
        definition: "SELECT t2.s, t2.w, count(t1.id) AS n FROM t1 RIGHT JOIN t2 ON t1.s = t2.s AND t1.v < t2.w GROUP BY t2.s, t2.w",
        batch: "SELECT t2.s, t2.w, count(t1.id) AS n FROM t1 RIGHT JOIN t2 ON t1.s = t2.s AND t1.v < t2.w GROUP BY t2.s, t2.w",
        created_at_round_fraction: 1,
    },
    ViewCase {
        name: "v_semi",
        definition: "SELECT id, v FROM t1 WHERE g IN (SELECT g FROM t2 WHERE w > 2)",
        batch: "SELECT id, v FROM t1 WHERE g IN (SELECT g FROM t2 WHERE w > 2)",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_anti",
        definition: "SELECT id, s FROM t1 WHERE NOT EXISTS (SELECT 1 FROM t2 WHERE t2.g = t1.g AND t2.s = t1.s)",
        batch: "SELECT id, s FROM t1 WHERE NOT EXISTS (SELECT 1 FROM t2 WHERE t2.g = t1.g AND t2.s = t1.s)",
        created_at_round_fraction: 2,
    },
    ViewCase {
        name: "v_join_cast_key",
        definition: "SELECT t2.g, count(*) AS n FROM t1 JOIN t2 ON t1.id = t2.w GROUP BY t2.g",
        batch: "SELECT t2.g, count(*) AS n FROM t1 JOIN t2 ON t1.id = t2.w GROUP BY t2.g",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_multiway",
        definition: "SELECT a.g, a.n, b.m, c.cnt FROM (SELECT g, count(*) AS n FROM t1 GROUP BY g) a JOIN (SELECT g, max(w) AS m FROM t2 GROUP BY g) b ON a.g = b.g LEFT JOIN (SELECT k, count(*) AS cnt FROM t3 GROUP BY k) c ON c.k = a.g",
        batch: "SELECT a.g, a.n, b.m, c.cnt FROM (SELECT g, count(*) AS n FROM t1 GROUP BY g) a JOIN (SELECT g, max(w) AS m FROM t2 GROUP BY g) b ON a.g = b.g LEFT JOIN (SELECT k, count(*) AS cnt FROM t3 GROUP BY k) c ON c.k = a.g",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_self_join",
        definition: "SELECT a.id, b.id AS other, a.v FROM t1 a JOIN t1 b ON a.v = b.v AND a.g = b.g AND a.id < b.id",
        batch: "SELECT a.id, b.id AS other, a.v FROM t1 a JOIN t1 b ON a.v = b.v AND a.g = b.g AND a.id < b.id",
        created_at_round_fraction: 3,
    },
    ViewCase {
        name: "v_topn",
        definition: "SELECT * FROM (SELECT id, g, v, ROW_NUMBER() OVER (PARTITION BY g ORDER BY v DESC, id) AS rn FROM t1) WHERE rn <= 2",
        batch: "SELECT * FROM (SELECT id, g, v, ROW_NUMBER() OVER (PARTITION BY g ORDER BY v DESC, id) AS rn FROM t1) WHERE rn <= 2",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_rank",
        definition: "SELECT * FROM (SELECT g, w, s, RANK() OVER (PARTITION BY g ORDER BY w) AS r FROM t2) WHERE r <= 2",
        batch: "SELECT * FROM (SELECT g, w, s, RANK() OVER (PARTITION BY g ORDER BY w) AS r FROM t2) WHERE r <= 2",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_dense_rank",
        definition: "SELECT * FROM (SELECT s, w, DENSE_RANK() OVER (PARTITION BY s ORDER BY w DESC) AS dr FROM t2) WHERE dr = 2",
        batch: "SELECT * FROM (SELECT s, w, DENSE_RANK() OVER (PARTITION BY s ORDER BY w DESC) AS dr FROM t2) WHERE dr = 2",
        created_at_round_fraction: 1,
    },
    ViewCase {
        name: "v_order_limit",
        definition: "SELECT id, v FROM t1 ORDER BY v DESC, id LIMIT 5",
        batch: "SELECT id, v FROM t1 ORDER BY v DESC, id LIMIT 5",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_order_limit_offset",
        definition: "SELECT g, w FROM t2 ORDER BY w, g LIMIT 3 OFFSET 2",
        batch: "SELECT g, w FROM t2 ORDER BY w, g LIMIT 3 OFFSET 2",
        created_at_round_fraction: 2,
    },
    ViewCase {
        name: "v_dedup",
        definition: "SELECT g, s FROM (SELECT g, s, ROW_NUMBER() OVER (PARTITION BY g ORDER BY id) AS rn FROM t1) WHERE rn = 1",
        batch: "SELECT g, s FROM (SELECT g, s, ROW_NUMBER() OVER (PARTITION BY g ORDER BY id) AS rn FROM t1) WHERE rn = 1",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_topn_agg",
        definition: "SELECT * FROM (SELECT g, s, n, ROW_NUMBER() OVER (PARTITION BY g ORDER BY n DESC, s) AS rn FROM (SELECT g, s, count(*) AS n FROM t1 GROUP BY g, s)) WHERE rn <= 2",
        batch: "SELECT * FROM (SELECT g, s, n, ROW_NUMBER() OVER (PARTITION BY g ORDER BY n DESC, s) AS rn FROM (SELECT g, s, count(*) AS n FROM t1 GROUP BY g, s)) WHERE rn <= 2",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_not_in",
        definition: "SELECT id, g FROM t1 WHERE g NOT IN (SELECT w FROM t2 WHERE s = 'a')",
        batch: "SELECT id, g FROM t1 WHERE g NOT IN (SELECT w FROM t2 WHERE s = 'a')",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_not_in_filtered",
        definition: "SELECT id, v FROM t1 WHERE v NOT IN (SELECT w FROM t2 WHERE g = 1 AND w IS NOT NULL)",
        batch: "SELECT id, v FROM t1 WHERE v NOT IN (SELECT w FROM t2 WHERE g = 1 AND w IS NOT NULL)",
        created_at_round_fraction: 1,
    },
    ViewCase {
        name: "v_distinct_on",
        definition: "SELECT DISTINCT ON (g) g, id, v FROM t1 ORDER BY g, v DESC, id",
        batch: "SELECT DISTINCT ON (g) g, id, v FROM t1 ORDER BY g, v DESC, id",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_first_last",
        definition: "SELECT s, first_value(w ORDER BY w, g) AS fw, last_value(g ORDER BY w, g) AS lg FROM t2 GROUP BY s",
        batch: "SELECT s, first_value(w ORDER BY w, g) AS fw, last_value(g ORDER BY w, g) AS lg FROM t2 GROUP BY s",
        created_at_round_fraction: 1,
    },
    ViewCase {
        name: "v_interval_join",
        definition: "SELECT a.k, count(*) AS n, sum(b.v) AS s FROM t3 a JOIN t3 b ON a.k = b.k AND a.ts BETWEEN b.ts - INTERVAL '2' SECOND AND b.ts + INTERVAL '1' SECOND GROUP BY a.k",
        batch: "SELECT a.k, count(*) AS n, sum(b.v) AS s FROM t3 a JOIN t3 b ON a.k = b.k AND a.ts BETWEEN b.ts - INTERVAL '2' SECOND AND b.ts + INTERVAL '1' SECOND GROUP BY a.k",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_interval_left_join",
        definition: "SELECT a.k, count(*) AS n, count(b.id) AS nb FROM t3 a LEFT JOIN t3 b ON a.k = b.k AND b.ts >= a.ts AND b.ts < a.ts + INTERVAL '3' SECOND AND a.id <> b.id GROUP BY a.k",
        batch: "SELECT a.k, count(*) AS n, count(b.id) AS nb FROM t3 a LEFT JOIN t3 b ON a.k = b.k AND b.ts >= a.ts AND b.ts < a.ts + INTERVAL '3' SECOND AND a.id <> b.id GROUP BY a.k",
        created_at_round_fraction: 1,
    },
    ViewCase {
        name: "v_window_join",
        definition: "SELECT a.ws, a.k, a.n, b.top FROM (SELECT window_start AS ws, k, count(*) AS n FROM TUMBLE(t3, ts, INTERVAL '5' SECOND) GROUP BY window_start, k) a JOIN (SELECT window_start AS ws, max(v) AS top FROM TUMBLE(t3, ts, INTERVAL '5' SECOND) GROUP BY window_start) b ON a.ws = b.ws AND a.n >= 2",
        batch: "SELECT a.ws, a.k, a.n, b.top FROM (SELECT window_start AS ws, k, count(*) AS n FROM TUMBLE(t3, ts, INTERVAL '5' SECOND) GROUP BY window_start, k) a JOIN (SELECT window_start AS ws, max(v) AS top FROM TUMBLE(t3, ts, INTERVAL '5' SECOND) GROUP BY window_start) b ON a.ws = b.ws AND a.n >= 2",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_join_window_max",
        definition: "SELECT x.id, x.v, x.ts FROM t3 x JOIN (SELECT max(v) AS top, window_end AS we FROM TUMBLE(t3, ts, INTERVAL '5' SECOND) GROUP BY window_end) m ON x.v = m.top WHERE x.ts >= m.we - INTERVAL '5' SECOND AND x.ts < m.we",
        batch: "SELECT x.id, x.v, x.ts FROM t3 x JOIN (SELECT max(v) AS top, window_end AS we FROM TUMBLE(t3, ts, INTERVAL '5' SECOND) GROUP BY window_end) m ON x.v = m.top WHERE x.ts >= m.we - INTERVAL '5' SECOND AND x.ts < m.we",
        created_at_round_fraction: 1,
    },
    ViewCase {
        name: "v_scalar_where",
        definition: "SELECT id, v FROM t1 WHERE v > (SELECT avg(w) FROM t2)",
        batch: "SELECT id, v FROM t1 WHERE v > (SELECT avg(w) FROM t2)",
        created_at_round_fraction: 0,
    },
    ViewCase {
        name: "v_scalar_select",
        definition: "SELECT g, count(*) AS n, (SELECT count(*) FROM t2) AS total FROM t1 GROUP BY g",
        batch: "SELECT g, count(*) AS n, (SELECT count(*) FROM t2) AS total FROM t1 GROUP BY g",
        created_at_round_fraction: 1,
    },
];

/// A row of text cells; floats are recognized for tolerant comparison.
type Row = Vec<String>;

fn rows_of(messages: Vec<SimpleQueryMessage>) -> Vec<Row> {
    let mut rows = Vec::new();
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m {
            rows.push((0..row.len()).map(|i| row.get(i).unwrap_or("NULL").to_string()).collect());
        }
    }
    rows.sort_by_key(sort_key);
    rows
}

fn as_float(cell: &str) -> Option<f64> {
    if cell.contains('.') || cell.contains('e') { cell.parse().ok() } else { None }
}

/// Floats coarsened so that an incremental and a batch computation of the same value sort
/// alike even when their last bits differ.
fn sort_key(row: &Row) -> Vec<String> {
    row.iter()
        .map(|c| match as_float(c) {
            Some(f) => format!("{:.3e}", f),
            None => c.clone(),
        })
        .collect()
}

fn cells_match(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9_f64.max(1e-7 * x.abs().max(y.abs())),
        _ => false,
    }
}

fn rows_match(a: &[Row], b: &[Row]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| cells_match(p, q)))
}

struct Model {
    next_id: i64,
    rng: StdRng,
    /// Event-time clock of `t3`, in milliseconds; rows stay within the watermark delay.
    clock_ms: i64,
}

fn val_or_null(rng: &mut StdRng, value: String, null_pct: u32) -> String {
    if rng.random_range(0..100) < null_pct { "NULL".into() } else { value }
}

impl Model {
    fn g(&mut self) -> String {
        let g = self.rng.random_range(0..5).to_string();
        val_or_null(&mut self.rng, g, 8)
    }

    fn v(&mut self) -> String {
        let v = self.rng.random_range(-20..20).to_string();
        val_or_null(&mut self.rng, v, 10)
    }

    fn s(&mut self) -> String {
        let s = ["'a'", "'b'", "'c'", "'d'"][self.rng.random_range(0..4)].to_string();
        val_or_null(&mut self.rng, s, 10)
    }

    fn b(&mut self) -> String {
        let b = if self.rng.random_bool(0.5) { "true" } else { "false" }.to_string();
        val_or_null(&mut self.rng, b, 15)
    }

    /// Quarters are exact in binary, so float sums stay exact too.
    fn d(&mut self) -> String {
        let d = format!("{}", self.rng.random_range(-8..8) as f64 / 4.0);
        val_or_null(&mut self.rng, d, 10)
    }

    /// Rows for the event-time table: timestamps move forward, each row at most 9 s behind the
    /// newest, so none is late for the 10-second watermark delay.
    fn event_rows(&mut self) -> String {
        let n = self.rng.random_range(1..6);
        let rows: Vec<String> = (0..n)
            .map(|_| {
                self.clock_ms += self.rng.random_range(0..1500);
                let ts = self.clock_ms - self.rng.random_range(0..9000);
                let secs = ts.div_euclid(1000);
                let millis = ts.rem_euclid(1000);
                let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
                format!(
                    "({}, '2024-01-01 {h:02}:{m:02}:{s:02}.{millis:03}', {}, {})",
                    self.rng.random_range(0..1000),
                    self.rng.random_range(0..3),
                    self.rng.random_range(-50..50)
                )
            })
            .collect();
        format!("INSERT INTO t3 VALUES {}", rows.join(", "))
    }

    fn statement(&mut self) -> String {
        if self.rng.random_range(0..100) < 20 {
            return self.event_rows();
        }
        match self.rng.random_range(0..100) {
            0..=29 => {
                let n = self.rng.random_range(1..6);
                let rows: Vec<String> = (0..n)
                    .map(|_| {
                        // Sometimes reuse a small id that may have been deleted.
                        let id = if self.rng.random_bool(0.2) {
                            self.rng.random_range(0..self.next_id.max(1))
                        } else {
                            self.next_id += 1;
                            self.next_id
                        };
                        format!("({id}, {}, {}, {}, {}, {})", self.g(), self.v(), self.s(), self.b(), self.d())
                    })
                    .collect();
                format!("INSERT INTO t1 VALUES {}", rows.join(", "))
            }
            30..=44 => {
                let lo = self.rng.random_range(0..self.next_id.max(1));
                let hi = lo + self.rng.random_range(0..5);
                match self.rng.random_range(0..3) {
                    0 => format!("UPDATE t1 SET v = {}, s = {} WHERE id BETWEEN {lo} AND {hi}", self.v(), self.s()),
                    1 => format!("UPDATE t1 SET g = {}, d = {} WHERE id BETWEEN {lo} AND {hi}", self.g(), self.d()),
                    _ => format!("UPDATE t1 SET b = NOT b, v = v + 1 WHERE g = {}", self.rng.random_range(0..5)),
                }
            }
            45..=54 => {
                let lo = self.rng.random_range(0..self.next_id.max(1));
                match self.rng.random_range(0..3) {
                    0 => format!("DELETE FROM t1 WHERE id BETWEEN {lo} AND {}", lo + self.rng.random_range(0..4)),
                    1 => format!("DELETE FROM t1 WHERE v < {}", self.rng.random_range(-25..-10)),
                    _ => format!("DELETE FROM t1 WHERE s = {} AND g = {}", self.s(), self.g()),
                }
            }
            55..=79 => {
                let n = self.rng.random_range(1..6);
                let rows: Vec<String> = (0..n)
                    .map(|_| {
                        let w = self.rng.random_range(0..6).to_string();
                        let w = val_or_null(&mut self.rng, w, 10);
                        format!("({}, {w}, {})", self.g(), self.s())
                    })
                    .collect();
                format!("INSERT INTO t2 VALUES {}", rows.join(", "))
            }
            80..=89 => format!(
                "DELETE FROM t2 WHERE g = {} AND w = {}",
                self.rng.random_range(0..5),
                self.rng.random_range(0..6)
            ),
            90..=97 => format!("UPDATE t2 SET w = w + 1 WHERE s = {}", self.s()),
            _ => {
                if self.rng.random_bool(0.5) {
                    "DELETE FROM t1".into()
                } else {
                    "DELETE FROM t2 WHERE w IS NULL OR g IS NULL".into()
                }
            }
        }
    }
}

async fn setup(client: &Client) -> Result<()> {
    client
        .batch_execute(
            "CREATE TABLE t1 (id BIGINT PRIMARY KEY, g INT, v INT, s VARCHAR, b BOOLEAN, d DOUBLE);
             CREATE TABLE t2 (g INT, w INT, s VARCHAR);
             CREATE TABLE t3 (id BIGINT, ts TIMESTAMP, k INT, v INT, WATERMARK FOR ts AS ts - INTERVAL '10' SECOND) APPEND ONLY;",
        )
        .await?;
    Ok(())
}

async fn create_views(client: &Client, fraction: u32) -> Result<()> {
    for view in VIEWS.iter().filter(|v| v.created_at_round_fraction == fraction) {
        client.batch_execute(&format!("CREATE MATERIALIZED VIEW {} AS {}", view.name, view.definition)).await?;
    }
    Ok(())
}

async fn check_views(client: &Client, created: u32) -> Result<()> {
    for view in VIEWS.iter().filter(|v| v.created_at_round_fraction <= created) {
        let incremental = rows_of(client.simple_query(&format!("SELECT * FROM {}", view.name)).await?);
        let batch = rows_of(client.simple_query(view.batch).await?);
        if !rows_match(&incremental, &batch) {
            let only_view: Vec<_> = incremental.iter().filter(|r| !batch.contains(r)).collect();
            let only_batch: Vec<_> = batch.iter().filter(|r| !incremental.contains(r)).collect();
            bail!(
                "view {} differs from its batch recomputation\n  only in view:  {only_view:?}\n  only in batch: {only_batch:?}\n  view rows: {}, batch rows: {}",
                view.name,
                incremental.len(),
                batch.len()
            );
        }
    }
    Ok(())
}

async fn run_seed(seed: u64, rounds: u32, restart: bool, memory_limited: bool) -> Result<()> {
    // A tiny memory limit makes joins and aggregates evict every clean group at each
    // checkpoint and read it back from the store when it is next used.
    let mut server =
        if memory_limited { TestServer::start_with(&["--memory-limit", "1KB"])? } else { TestServer::start()? };
    let mut client = server.connect().await?;
    setup(&client).await?;
    create_views(&client, 0).await?;
    let mut model = Model { next_id: 0, rng: StdRng::seed_from_u64(seed), clock_ms: 20_000 };
    let mut created = 0;
    let mut log: Vec<String> = Vec::new();
    for round in 1..=rounds {
        let fraction = round * 5 / rounds.max(1);
        while created < fraction.min(4) {
            created += 1;
            create_views(&client, created).await?;
        }
        if restart && round == rounds / 2 {
            server.restart()?;
            client = server.connect().await?;
            log.push("-- restart".into());
        }
        let n = model.rng.random_range(1..4);
        for _ in 0..n {
            let sql = model.statement();
            log.push(sql.clone());
            if let Err(e) = client.batch_execute(&sql).await {
                // Key collisions are expected from random ids; anything else is a failure.
                let code = e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_default();
                if code != "23505" {
                    bail!("seed {seed} round {round}: `{sql}` failed: {e}");
                }
                log.push(format!("-- rejected: {code}"));
            }
        }
        if let Err(e) = check_views(&client, created).await {
            let tail: Vec<_> = log.iter().rev().take(12).rev().cloned().collect();
            bail!(
                "seed {seed} round {round}: {e}\nlast statements:\n{}\n--- server log ---\n{}",
                tail.join("\n"),
                server.log()
            );
        }
    }
    if memory_limited {
        let evicted = rows_of(client.simple_query("SELECT evicted_entries FROM eddy_catalog.memory").await?);
        let n: i64 = evicted.first().and_then(|r| r.first()).and_then(|c| c.parse().ok()).unwrap_or(0);
        if n == 0 {
            bail!("seed {seed} ran under a memory limit but nothing was evicted");
        }
    }
    Ok(())
}

fn regression_seeds() -> Vec<u64> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("differential-regressions.txt");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('#').next().and_then(|s| s.trim().parse().ok()))
        .collect()
}

fn record_failure(seed: u64) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("differential-regressions.txt");
    if regression_seeds().contains(&seed) {
        return;
    }
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(&format!("{seed}\n"));
    let _ = std::fs::write(path, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_views_match_batch_recomputation() {
    let rounds: u32 = std::env::var("EDDY_DIFF_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(400);
    let mut seeds: Vec<u64> = regression_seeds();
    let chosen: Vec<u64> = std::env::var("EDDY_DIFF_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3, 4, 5]);
    for s in chosen {
        if !seeds.contains(&s) {
            seeds.push(s);
        }
    }
    let mut results: BTreeMap<u64, String> = BTreeMap::new();
    for (i, seed) in seeds.iter().enumerate() {
        let started = std::time::Instant::now();
        if let Err(e) = run_seed(*seed, rounds, i == 0, i == 1).await {
            record_failure(*seed);
            panic!("{e:#}");
        }
        results.insert(*seed, format!("{rounds} rounds in {:.1?}", started.elapsed()));
    }
    eprintln!("differential: {results:?}");
}
