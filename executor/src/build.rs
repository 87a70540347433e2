//! Instantiating an [`OperatorGraph`]: actors, the channels between them, and the edges that
//! attach the new graph to the relations it reads.
//!
//! Every (upstream actor, downstream actor) pair gets its own channel, because barrier
//! alignment counts one barrier per channel. Adding an operator means one line in
//! [`build_operator`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use eddy_common::ids::ObjectId;
use eddy_connectors::{SourceSpec, create_reader};
use eddy_planner::catalog::{Distribution, RelationDef, RelationResolver, StorageLayout};
use eddy_planner::stream::{Exchange, FragmentInput, OperatorGraph, OperatorSpec};
use tokio::sync::{mpsc, oneshot, watch};

use crate::actor::{Actor, ActorReport, Backfill, CommittedEpochs, Input, SourceInput};
use crate::coordinator::JobActors;
use crate::dispatch::{Dispatcher, Edge};
use crate::error::{ExecError, Result};
use crate::memory::MemoryBudget;
use crate::message::{ActorId, Message, NewOutput};
use crate::metrics::Metrics;
use crate::operator::Operator;
use crate::ops::agg::HashAggOperator;
use crate::ops::materialize::MaterializeOperator;
use crate::ops::sink::BlackholeSink;
use crate::ops::stateless::{FilterOperator, ProjectOperator, ScanOperator, UnionOperator, ValuesOperator};
use crate::ops::unnest::UnnestOperator;
use crate::ops::watermark::{SplitClocks, WatermarkFilterOperator};
use crate::state::{SOURCE_POSITION, StateReader, StateScope};
use crate::store::{RowCodec, Snapshot};

/// Capacity of each actor-to-actor channel, in messages. Small, so a slow consumer slows its
/// producers instead of growing memory.
pub const CHANNEL_CAPACITY: usize = 16;

/// A graph ready to start: its actors plus what the coordinator must apply to attach it.
pub struct BuiltJob {
    pub actors: Vec<Actor>,
    pub job: JobActors,
    /// Edges from the scanned relations' actors to this job's scan actors.
    pub add_outputs: HashMap<ObjectId, Vec<Vec<NewOutput>>>,
    /// Backfills waiting for the snapshot of the epoch that attaches the job.
    pub snapshots: Vec<oneshot::Sender<Snapshot>>,
    /// The channel of a table's DML (tables only).
    pub dml: Option<mpsc::Sender<Message>>,
}

/// What building actors needs from the runtime.
pub struct BuildContext<'a> {
    pub store: &'a Arc<crate::store::Store>,
    pub ids: &'a AtomicU32,
    pub reports: &'a mpsc::UnboundedSender<ActorReport>,
    pub metrics: &'a Arc<Metrics>,
    pub committed: CommittedEpochs,
    pub sources_open: watch::Receiver<bool>,
    /// The last checkpoint, when the job restarts from it instead of starting fresh.
    pub restore: Option<Snapshot>,
    pub budget: &'a Arc<MemoryBudget>,
}

impl BuildContext<'_> {
    /// Opens a source split, at the position the last checkpoint stored for it when the job
    /// is restored.
    fn source_input(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        split: usize,
        job: ObjectId,
        scope: StateScope,
        stats: Arc<eddy_connectors::SourceStats>,
    ) -> Result<SourceInput> {
        let position = match &self.restore {
            Some(snapshot) => StateReader::new(snapshot.clone(), job, scope.at(SOURCE_POSITION)).get(&[])?,
            None => None,
        };
        let reader = create_reader(spec, schema, split, position.as_deref(), stats.clone())
            .map_err(|e| ExecError::InvalidInput(e.to_string()))?;
        Ok(SourceInput { reader, stats, open: self.sources_open.clone() })
    }

    /// Tells every operator of an actor where its state lives and, when the job restarts
    /// from a checkpoint, gives it that state.
    fn prepare_chain(&self, chain: &mut [Box<dyn Operator>], job: ObjectId, scope: StateScope) -> Result<()> {
        for (position, op) in chain.iter_mut().enumerate() {
            let scope = scope.at(position as u16);
            op.attach_state(StateReader::of_store(self.store.clone(), job, scope)?);
            if let Some(snapshot) = &self.restore {
                op.restore(&StateReader::new(snapshot.clone(), job, scope))?;
            }
        }
        Ok(())
    }
}

/// The watermark generator of a relation with `WATERMARK FOR`, counting late rows for `job`.
fn watermark_filter(
    def: &RelationDef,
    job: ObjectId,
    ctx: &BuildContext<'_>,
    idle: Option<(Arc<SplitClocks>, usize)>,
) -> Result<Option<Box<dyn Operator>>> {
    let Some(wm) = &def.watermark else { return Ok(None) };
    let schema = DFSchema::try_from(def.schema.as_ref().clone())?;
    let late = ctx.metrics.late_counter(job, def.id);
    let mut op = WatermarkFilterOperator::new(wm.column, &wm.expr, &schema, late)?;
    if let Some((clocks, split)) = idle {
        op = op.with_idle_splits(clocks, split);
    }
    Ok(Some(Box::new(op)))
}

/// The shared event-time clocks of a source's splits in one fragment, when its connector
/// lets idle splits follow the others.
fn split_clocks(source: &RelationDef, splits: usize) -> Option<Arc<SplitClocks>> {
    let connector = source.connector.as_ref()?;
    source.watermark.as_ref()?;
    let timeout = eddy_connectors::idle_timeout(&source_spec(connector, splits))?;
    (splits > 1).then(|| Arc::new(SplitClocks::new(splits, timeout)))
}

/// Builds the single actor of a table: DML and barriers in, rows stored, changes out.
///
/// # Errors
/// When the table's columns have no storage encoding.
pub fn build_table(def: &RelationDef, ctx: &BuildContext<'_>) -> Result<BuiltJob> {
    let ids = ctx.ids;
    let reports = ctx.reports;
    let layout =
        def.storage.clone().ok_or_else(|| ExecError::Internal(format!("table {} has no storage layout", def.name)))?;
    let codec = RowCodec::new(def.schema.clone(), layout)?;
    let id = ids.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let scope = StateScope { fragment: 0, actor_index: 0, position: 0 };
    let actor = Actor {
        id,
        job: def.id,
        inputs: vec![Input { index: 0, receiver: rx }],
        source: match &def.connector {
            Some(c) => {
                let spec = source_spec(c, 1);
                let stats = ctx.metrics.register_source(id, def.id, def.id);
                Some(ctx.source_input(&spec, physical_schema(def), 0, def.id, scope, stats)?)
            }
            None => None,
        },
        chain: {
            // Connector rows get their generated columns; every row is stored; views
            // downstream see only rows on time.
            let mut chain: Vec<Box<dyn Operator>> = Vec::new();
            if def.connector.is_some() && def.generated.iter().any(Option::is_some) {
                chain.push(generated_columns(def)?);
            }
            // A connector feeding a keyed table sends changes by key; DML computes exact
            // changes itself.
            let keyed = !codec.counted();
            chain.push(Box::new(if def.connector.is_some() && keyed {
                MaterializeOperator::upsert(def.id, codec, ctx.store.clone())?
            } else {
                MaterializeOperator::new(def.id, codec)
            }));
            if let Some(wm) = &def.watermark {
                // Event time resumes where the stored rows left it.
                let schema = DFSchema::try_from(def.schema.as_ref().clone())?;
                let late = ctx.metrics.late_counter(def.id, def.id);
                let mut filter = WatermarkFilterOperator::new(wm.column, &wm.expr, &schema, late)?;
                let codec = RowCodec::new(def.schema.clone(), def.storage.clone().unwrap_or(StorageLayout::Counted))?;
                for batch in ctx.store.snapshot()?.scan(def.id, &codec, &[], 8192, None)? {
                    filter.observe(&batch)?;
                }
                chain.push(Box::new(filter));
            }
            chain
        },
        dispatcher: Dispatcher::default(),
        backfill: None,
        relation_output: Some((def.id, 0)),
        reports: reports.clone(),
        metrics: ctx.metrics.clone(),
        sent_watermarks: HashMap::new(),
        state_scope: scope,
        committed: ctx.committed.clone(),
    };
    Ok(BuiltJob {
        actors: vec![actor],
        job: JobActors { job: def.id, actors: vec![id], injected: vec![(id, tx.clone())], fingerprint: None },
        add_outputs: HashMap::new(),
        snapshots: Vec::new(),
        dml: Some(tx),
    })
}

/// Builds the actors of a materialized view.
///
/// # Errors
/// When an operator cannot be built or a scanned relation is unknown.
pub fn build_graph(
    graph: &OperatorGraph,
    def: &RelationDef,
    resolver: &dyn RelationResolver,
    ctx: &BuildContext<'_>,
) -> Result<BuiltJob> {
    let ids = ctx.ids;
    let reports = ctx.reports;
    let n = graph.fragments.len();
    let actor_ids: Vec<Vec<ActorId>> = graph
        .fragments
        .iter()
        .map(|f| (0..f.parallelism).map(|_| ids.fetch_add(1, Ordering::Relaxed)).collect())
        .collect();
    // inputs[f][i]: the channels feeding actor i of fragment f.
    let mut inputs: Vec<Vec<Vec<Input>>> =
        graph.fragments.iter().map(|f| (0..f.parallelism).map(|_| Vec::new()).collect()).collect();
    // edges[f][i]: the outgoing edges of actor i of fragment f.
    let mut edges: Vec<Vec<Vec<Edge>>> =
        graph.fragments.iter().map(|f| (0..f.parallelism).map(|_| Vec::new()).collect()).collect();
    let mut backfills: Vec<Vec<Option<Backfill>>> =
        graph.fragments.iter().map(|f| (0..f.parallelism).map(|_| None).collect()).collect();
    let mut add_outputs: HashMap<ObjectId, Vec<Vec<NewOutput>>> = HashMap::new();
    let mut snapshots = Vec::new();
    let mut injected = Vec::new();
    // Source readers and the operators that turn their rows into the relation's rows.
    let mut sources: Vec<Vec<Option<SourceInput>>> =
        graph.fragments.iter().map(|f| (0..f.parallelism).map(|_| None).collect()).collect();
    let mut source_prefix: Vec<Option<ObjectId>> = vec![None; graph.fragments.len()];

    for (f, fragment) in graph.fragments.iter().enumerate() {
        if fragment.inputs.is_empty() {
            // A source fragment: barriers come straight from the coordinator.
            for (i, actor) in actor_ids[f].iter().enumerate() {
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                inputs[f][i].push(Input { index: 0, receiver: rx });
                injected.push((*actor, tx));
            }
        }
        for (input_index, input) in fragment.inputs.iter().enumerate() {
            match input {
                FragmentInput::Source { id, name } => {
                    let source = resolver
                        .relation_by_id(*id)
                        .ok_or_else(|| ExecError::Internal(format!("source {name} is not in the catalog")))?;
                    let connector = source
                        .connector
                        .as_ref()
                        .ok_or_else(|| ExecError::Internal(format!("source {name} has no connector")))?;
                    let spec = source_spec(connector, source.output_parallelism);
                    let physical = physical_schema(&source);
                    source_prefix[f] = Some(*id);
                    for (i, actor) in actor_ids[f].iter().enumerate() {
                        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                        inputs[f][i].push(Input { index: input_index, receiver: rx });
                        injected.push((*actor, tx));
                        let stats = ctx.metrics.register_source(*actor, def.id, *id);
                        let scope = actor_scope(f, i)?;
                        sources[f][i] = Some(ctx.source_input(&spec, physical.clone(), i, def.id, scope, stats)?);
                    }
                }
                FragmentInput::Relation { id, name } => {
                    let upstream = resolver
                        .relation_by_id(*id)
                        .ok_or_else(|| ExecError::Internal(format!("scanned relation {name} is not in the catalog")))?;
                    let up_p = upstream.output_parallelism.max(1);
                    if up_p != fragment.parallelism {
                        return Err(ExecError::Internal(format!(
                            "scan of {name} has parallelism {} but the relation has {up_p} actors",
                            fragment.parallelism
                        )));
                    }
                    let layout = upstream
                        .storage
                        .clone()
                        .ok_or_else(|| ExecError::Internal(format!("{name} is not stored and cannot be backfilled")))?;
                    let per_actor = add_outputs.entry(*id).or_insert_with(|| vec![Vec::new(); up_p]);
                    for i in 0..fragment.parallelism {
                        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                        inputs[f][i].push(Input { index: input_index, receiver: rx });
                        per_actor[i].push(NewOutput { downstream: actor_ids[f][i], sender: tx });
                        if ctx.restore.is_some() {
                            // Restored state already holds everything the relation had.
                            continue;
                        }
                        let partition = match (&upstream.output_distribution, up_p) {
                            (_, 1) => None,
                            (Distribution::HashBy(cols), p) => Some((cols.clone(), p, i)),
                            // Unknown spread: the first actor reads the whole snapshot.
                            _ if i == 0 => None,
                            _ => continue,
                        };
                        let (snap_tx, snap_rx) = oneshot::channel();
                        snapshots.push(snap_tx);
                        backfills[f][i] = Some(Backfill {
                            relation: *id,
                            codec: RowCodec::new(upstream.schema.clone(), layout.clone())?,
                            snapshot: snap_rx,
                            partition,
                        });
                    }
                }
                FragmentInput::Fragment { fragment: up, exchange } => {
                    let up = *up;
                    if up >= n {
                        return Err(ExecError::Internal(format!("fragment {f} reads unknown fragment {up}")));
                    }
                    let up_p = graph.fragments[up].parallelism;
                    match exchange {
                        Exchange::Forward => {
                            if up_p != fragment.parallelism {
                                return Err(ExecError::Internal("forward edge between different parallelisms".into()));
                            }
                            for i in 0..up_p {
                                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                                inputs[f][i].push(Input { index: input_index, receiver: rx });
                                edges[up][i].push(Edge::Forward { actor: actor_ids[f][i], sender: tx });
                            }
                        }
                        Exchange::Hash(columns) => {
                            for upstream_edges in edges[up].iter_mut() {
                                let mut targets = Vec::new();
                                for i in 0..fragment.parallelism {
                                    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                                    inputs[f][i].push(Input { index: input_index, receiver: rx });
                                    targets.push((actor_ids[f][i], tx));
                                }
                                upstream_edges.push(Edge::Hash { columns: columns.clone(), targets });
                            }
                        }
                        Exchange::Single => {
                            if fragment.parallelism != 1 {
                                return Err(ExecError::Internal("single edge into a parallel fragment".into()));
                            }
                            for upstream_edges in edges[up].iter_mut() {
                                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                                inputs[f][0].push(Input { index: input_index, receiver: rx });
                                upstream_edges.push(Edge::Forward { actor: actor_ids[f][0], sender: tx });
                            }
                        }
                    }
                }
            }
        }
    }

    let mut actors = Vec::new();
    let last = n.saturating_sub(1);
    let mut clocks: Vec<Option<Arc<SplitClocks>>> = vec![None; n];
    for (f, fragment) in graph.fragments.iter().enumerate() {
        for i in 0..fragment.parallelism {
            let mut chain: Vec<Box<dyn Operator>> = Vec::new();
            if let Some(source_id) = source_prefix[f] {
                let source = resolver
                    .relation_by_id(source_id)
                    .ok_or_else(|| ExecError::Internal(format!("source {source_id} is not in the catalog")))?;
                if clocks[f].is_none() {
                    clocks[f] = split_clocks(&source, fragment.parallelism);
                }
                let idle = clocks[f].clone().map(|c| (c, i));
                chain.extend(source_operators(&source, def.id, ctx, idle)?);
            }
            for spec in &fragment.chain {
                chain.push(build_operator(spec, def, ctx, i)?);
            }
            let scope = actor_scope(f, i)?;
            ctx.prepare_chain(&mut chain, def.id, scope)?;
            actors.push(Actor {
                id: actor_ids[f][i],
                job: def.id,
                inputs: std::mem::take(&mut inputs[f][i]),
                source: sources[f][i].take(),
                chain,
                dispatcher: Dispatcher::new(std::mem::take(&mut edges[f][i])),
                backfill: backfills[f][i].take(),
                relation_output: (f == last).then_some((def.id, i)),
                reports: reports.clone(),
                metrics: ctx.metrics.clone(),
                sent_watermarks: HashMap::new(),
                state_scope: scope,
                committed: ctx.committed.clone(),
            });
        }
    }
    Ok(BuiltJob {
        actors,
        job: JobActors {
            job: def.id,
            actors: actor_ids.into_iter().flatten().collect(),
            injected,
            fingerprint: ctx.restore.is_none().then(|| graph.explain()),
        },
        add_outputs,
        snapshots,
        dml: None,
    })
}

/// What a connector needs to open the splits of a table or source read by `splits` actors.
pub fn source_spec(c: &eddy_planner::catalog::ConnectorDef, splits: usize) -> SourceSpec {
    SourceSpec {
        connector: c.connector.clone(),
        options: c.options.clone(),
        format: c.format.as_ref().map(|format| eddy_connectors::SourceFormat {
            format: format.clone(),
            encode: c.encode.clone().unwrap_or_default(),
            options: c.format_options.clone(),
        }),
        splits: Some(splits.max(1)),
    }
}

/// The state scope of actor `index` of fragment `fragment`.
fn actor_scope(fragment: usize, index: usize) -> Result<StateScope> {
    let narrow = |v: usize| u16::try_from(v).map_err(|_| ExecError::Internal("too many fragments or actors".into()));
    Ok(StateScope { fragment: narrow(fragment)?, actor_index: narrow(index)?, position: 0 })
}

/// The columns a source's connector provides (its non-generated columns).
fn physical_schema(source: &RelationDef) -> SchemaRef {
    let fields: Vec<_> = source
        .schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(i, _)| source.generated.get(*i).is_none_or(|g| g.is_none()))
        .map(|(_, f)| f.as_ref().clone())
        .collect();
    Arc::new(Schema::new(fields))
}

/// Turns a source's connector rows into the source's rows: computes generated columns, then
/// generates watermarks (dropping late rows).
fn source_operators(
    source: &RelationDef,
    job: ObjectId,
    ctx: &BuildContext<'_>,
    idle: Option<(Arc<SplitClocks>, usize)>,
) -> Result<Vec<Box<dyn Operator>>> {
    let mut ops: Vec<Box<dyn Operator>> = Vec::new();
    if source.generated.iter().any(|g| g.is_some()) {
        ops.push(generated_columns(source)?);
    }
    ops.extend(watermark_filter(source, job, ctx, idle)?);
    Ok(ops)
}

/// Computes a relation's generated columns from the columns its connector provides.
fn generated_columns(source: &RelationDef) -> Result<Box<dyn Operator>> {
    {
        let physical = physical_schema(source);
        let physical_df = DFSchema::try_from(physical.as_ref().clone())?;
        let full_df = DFSchema::try_from(source.schema.as_ref().clone())?;
        let mut next_physical = 0;
        let mut exprs = Vec::new();
        for (i, f) in source.schema.fields().iter().enumerate() {
            match source.generated.get(i).cloned().flatten() {
                Some(e) => exprs.push(e.alias(f.name())),
                None => {
                    let name = physical.field(next_physical).name().clone();
                    next_physical += 1;
                    exprs.push(Expr::Column(datafusion::common::Column::from_name(name)));
                }
            }
        }
        Ok(Box::new(ProjectOperator::new(&exprs, &physical_df, &full_df)?))
    }
}

/// The one place that maps an operator description to its implementation.
fn build_operator(
    spec: &OperatorSpec,
    def: &RelationDef,
    ctx: &BuildContext<'_>,
    actor_index: usize,
) -> Result<Box<dyn Operator>> {
    Ok(match spec {
        OperatorSpec::Scan { projection, schema, .. } => Box::new(ScanOperator::new(projection.clone(), schema)),
        OperatorSpec::Filter { predicate, input_schema } => Box::new(FilterOperator::new(predicate, input_schema)?),
        OperatorSpec::Project { exprs, input_schema, schema } => {
            Box::new(ProjectOperator::new(exprs, input_schema, schema)?)
        }
        OperatorSpec::HashAgg {
            group_keys,
            calls,
            input_schema,
            schema,
            append_only_input,
            window_key,
            emit_on_close,
        } => Box::new(
            HashAggOperator::new(
                group_keys,
                calls,
                input_schema,
                schema,
                *append_only_input,
                *window_key,
                *emit_on_close,
            )?
            .with_memory_budget(ctx.budget.clone()),
        ),
        OperatorSpec::Union { schema, .. } => Box::new(UnionOperator::new(schema)),
        OperatorSpec::TopN {
            partition,
            order,
            limit,
            offset,
            rank,
            with_rank,
            append_only_input,
            input_schema,
            schema,
        } => Box::new(crate::ops::topn::TopNOperator::new(
            partition,
            order,
            *limit,
            *offset,
            *rank,
            *with_rank,
            *append_only_input,
            input_schema,
            schema,
        )?),
        OperatorSpec::Join {
            join_type,
            left_keys,
            right_keys,
            filter,
            null_equals_null,
            left_schema,
            right_schema,
            filter_schema,
            schema,
            temporal,
            null_aware,
            interval,
            versioned,
        } => match versioned {
            Some(times) => Box::new(crate::ops::versioned_join::VersionedJoinOperator::new(
                *join_type,
                left_keys,
                right_keys,
                *times,
                filter.as_ref(),
                left_schema,
                right_schema,
                filter_schema,
                schema,
            )?),
            None => Box::new(
                crate::ops::join::JoinOperator::new(
                    *temporal,
                    *null_aware,
                    *interval,
                    *join_type,
                    left_keys,
                    right_keys,
                    filter.as_ref(),
                    *null_equals_null,
                    left_schema,
                    right_schema,
                    filter_schema,
                    schema,
                )?
                .with_memory_budget(ctx.budget.clone()),
            ),
        },
        OperatorSpec::SessionAgg { group_keys, sessions, gap_ns, calls, input_schema, schema, emit_on_close } => {
            Box::new(crate::ops::session::SessionAggOperator::new(
                group_keys,
                sessions,
                *gap_ns,
                calls,
                input_schema,
                schema,
                *emit_on_close,
            )?)
        }
        OperatorSpec::Unnest { list_column, dependency, null_handling, schema, .. } => {
            Box::new(UnnestOperator::new(*list_column, dependency.clone(), *null_handling, schema))
        }
        OperatorSpec::Sink { sink, connector, .. } => match connector.as_str() {
            "blackhole" => Box::new(BlackholeSink::new(ctx.metrics.sink_counter(*sink))),
            "kafka" => {
                crate::ops::kafka_sink::KafkaSink::build(def, *sink, actor_index, ctx.metrics.sink_counter(*sink))?
            }
            other => return Err(ExecError::InvalidInput(format!("unknown sink connector \"{other}\""))),
        },
        OperatorSpec::Values { rows, schema } => Box::new(ValuesOperator::new(rows, schema)?),
        OperatorSpec::Materialize { relation, layout, .. } => {
            // Stored under the catalog's schema (its column names), not the plan's.
            let codec = RowCodec::new(def.schema.clone(), layout.clone())?;
            Box::new(MaterializeOperator::new(*relation, codec))
        }
    })
}
