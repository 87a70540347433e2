//! Retractable accumulators, one state slot per group.
//!
//! Every accumulator here is a function of the multiset of values seen so far, maintained under
//! positive and negative weights: sums and counts add the weight; `min`/`max`, `string_agg` and
//! `array_agg` keep a multiset of values (row-encoded, so byte order is value order) and read
//! their answer from it. An append-only input lets `min`/`max` keep only the current extreme.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array, ListArray, StringArray,
    UInt32Array, new_empty_array, new_null_array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::{cast, concat, take};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::arrow::row::{RowConverter, SortField};
use eddy_planner::stream::AggKind;

use crate::error::{ExecError, Result};
use crate::state::{Decoder, Encoder};

/// The rows of one batch that reach an accumulator: group slot, value row, weight.
pub struct Update<'a> {
    pub groups: &'a [usize],
    /// Row index into `values` for each entry (rows filtered out are absent).
    pub rows: &'a [usize],
    pub weights: &'a [i64],
    pub values: Option<&'a ArrayRef>,
    /// Ordering key bytes for each row (string_agg / array_agg with ORDER BY).
    pub order_keys: Option<&'a [Vec<u8>]>,
}

pub trait GroupAccumulator: Send {
    /// Makes room for group slots `0..n`.
    fn resize(&mut self, n: usize);
    fn update(&mut self, update: &Update<'_>) -> Result<()>;
    /// The current value for each of `groups`, as an array of the call's return type.
    fn evaluate(&self, groups: &[usize]) -> Result<ArrayRef>;
    /// Forgets a group whose slot will be reused.
    fn reset(&mut self, group: usize);
    /// Writes one group's state, for a checkpoint.
    fn save(&self, group: usize, out: &mut Encoder);
    /// Reads what [`GroupAccumulator::save`] wrote into an empty slot.
    fn load(&mut self, group: usize, input: &mut Decoder<'_>) -> Result<()>;
}

/// Writes a multiset of encoded values.
fn save_multiset<'a>(out: &mut Encoder, entries: impl ExactSizeIterator<Item = (&'a [u8], i64)>) {
    out.u64(entries.len() as u64);
    for (value, count) in entries {
        out.bytes(value).i64(count);
    }
}

/// Reads what [`save_multiset`] wrote, calling `insert` per entry.
fn load_multiset(input: &mut Decoder<'_>, mut insert: impl FnMut(Vec<u8>, i64)) -> Result<()> {
    let n = input.u64()?;
    for _ in 0..n {
        let value = input.bytes()?.to_vec();
        insert(value, input.i64()?);
    }
    Ok(())
}

/// Builds the accumulator for a call.
///
/// # Errors
/// `Internal` for an argument type the kind cannot handle (the planner refuses those first).
pub fn make_accumulator(
    kind: &AggKind,
    arg_type: Option<&DataType>,
    return_type: &DataType,
    append_only: bool,
) -> Result<Box<dyn GroupAccumulator>> {
    let arg = || arg_type.cloned().ok_or_else(|| ExecError::Internal(format!("{} needs an argument", kind.name())));
    Ok(match kind {
        AggKind::CountRows => {
            Box::new(CountAcc { counts: Vec::new(), non_null_only: false, return_type: return_type.clone() })
        }
        AggKind::Count => {
            Box::new(CountAcc { counts: Vec::new(), non_null_only: true, return_type: return_type.clone() })
        }
        AggKind::ApproxCountDistinct => {
            Box::new(CountAcc { counts: Vec::new(), non_null_only: true, return_type: return_type.clone() })
        }
        AggKind::Sum => Box::new(SumAcc::new(&arg()?, return_type.clone(), false)?),
        AggKind::Avg => Box::new(SumAcc::new(&arg()?, return_type.clone(), true)?),
        AggKind::Min | AggKind::Max => {
            Box::new(ExtremeAcc::new(arg()?, matches!(kind, AggKind::Max), append_only, return_type.clone())?)
        }
        AggKind::BoolAnd | AggKind::BoolOr => {
            Box::new(BoolAcc { trues: Vec::new(), falses: Vec::new(), is_and: matches!(kind, AggKind::BoolAnd) })
        }
        AggKind::StringAgg { delimiter } => {
            Box::new(CollectAcc::new(arg()?, Collect::String { delimiter: delimiter.clone() }, return_type.clone())?)
        }
        AggKind::ArrayAgg => Box::new(CollectAcc::new(arg()?, Collect::Array, return_type.clone())?),
        AggKind::FirstValue => Box::new(CollectAcc::new(arg()?, Collect::First, return_type.clone())?),
        AggKind::LastValue => Box::new(CollectAcc::new(arg()?, Collect::Last, return_type.clone())?),
        AggKind::Variance { sample, sqrt } => Box::new(VarianceAcc {
            n: Vec::new(),
            sum: Vec::new(),
            sum_sq: Vec::new(),
            sample: *sample,
            sqrt: *sqrt,
            return_type: return_type.clone(),
        }),
    })
}

fn cast_to(array: ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if array.data_type() == to { Ok(array) } else { Ok(cast(&array, to)?) }
}

/// `count(*)`, `count(x)`: the sum of weights (of non-null values).
struct CountAcc {
    counts: Vec<i64>,
    non_null_only: bool,
    return_type: DataType,
}

impl GroupAccumulator for CountAcc {
    fn resize(&mut self, n: usize) {
        self.counts.resize(n, 0);
    }

    fn update(&mut self, u: &Update<'_>) -> Result<()> {
        match (self.non_null_only, u.values) {
            (true, Some(values)) if values.null_count() > 0 => {
                for ((g, r), w) in u.groups.iter().zip(u.rows).zip(u.weights) {
                    if values.is_valid(*r) {
                        self.counts[*g] += w;
                    }
                }
            }
            _ => {
                for (g, w) in u.groups.iter().zip(u.weights) {
                    self.counts[*g] += w;
                }
            }
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[usize]) -> Result<ArrayRef> {
        let a: ArrayRef = Arc::new(groups.iter().map(|g| self.counts[*g]).collect::<Int64Array>());
        cast_to(a, &self.return_type)
    }

    fn reset(&mut self, group: usize) {
        self.counts[group] = 0;
    }

    fn save(&self, group: usize, out: &mut Encoder) {
        out.i64(self.counts[group]);
    }

    fn load(&mut self, group: usize, input: &mut Decoder<'_>) -> Result<()> {
        self.counts[group] = input.i64()?;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum SumMode {
    /// Integers, summed exactly in i128.
    Int,
    /// Floats, summed in f64.
    Float,
    /// Decimal128 raw values at the input's scale.
    Decimal { scale: i8 },
}

/// `sum` and `avg`: a running sum and a count of non-null values.
struct SumAcc {
    mode: SumMode,
    ints: Vec<i128>,
    floats: Vec<f64>,
    counts: Vec<i64>,
    avg: bool,
    return_type: DataType,
}

impl SumAcc {
    fn new(arg: &DataType, return_type: DataType, avg: bool) -> Result<Self> {
        let mode = match arg {
            t if t.is_integer() => SumMode::Int,
            DataType::Float16 | DataType::Float32 | DataType::Float64 => SumMode::Float,
            DataType::Decimal128(_, s) => SumMode::Decimal { scale: *s },
            other => {
                return Err(ExecError::Internal(format!(
                    "{} over {other} is not supported",
                    if avg { "avg" } else { "sum" }
                )));
            }
        };
        Ok(Self { mode, ints: Vec::new(), floats: Vec::new(), counts: Vec::new(), avg, return_type })
    }
}

impl GroupAccumulator for SumAcc {
    fn resize(&mut self, n: usize) {
        self.counts.resize(n, 0);
        match self.mode {
            SumMode::Float => self.floats.resize(n, 0.0),
            _ => self.ints.resize(n, 0),
        }
    }

    fn update(&mut self, u: &Update<'_>) -> Result<()> {
        let Some(values) = u.values else {
            return Ok(());
        };
        match self.mode {
            SumMode::Int => {
                let v = cast(values, &DataType::Int64)?;
                let v = v.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                for ((g, r), w) in u.groups.iter().zip(u.rows).zip(u.weights) {
                    if v.is_valid(*r) {
                        self.ints[*g] += v.value(*r) as i128 * *w as i128;
                        self.counts[*g] += w;
                    }
                }
            }
            SumMode::Float => {
                let v = cast(values, &DataType::Float64)?;
                let v = v.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
                for ((g, r), w) in u.groups.iter().zip(u.rows).zip(u.weights) {
                    if v.is_valid(*r) {
                        self.floats[*g] += v.value(*r) * *w as f64;
                        self.counts[*g] += w;
                    }
                }
            }
            SumMode::Decimal { .. } => {
                let v = values.as_primitive::<datafusion::arrow::datatypes::Decimal128Type>();
                for ((g, r), w) in u.groups.iter().zip(u.rows).zip(u.weights) {
                    if v.is_valid(*r) {
                        self.ints[*g] += v.value(*r) * *w as i128;
                        self.counts[*g] += w;
                    }
                }
            }
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[usize]) -> Result<ArrayRef> {
        let present = |g: usize| self.counts[g] > 0;
        let array: ArrayRef = match (self.mode, self.avg) {
            (SumMode::Int, false) => {
                let mut out = Vec::with_capacity(groups.len());
                for g in groups {
                    if present(*g) {
                        let v = i64::try_from(self.ints[*g])
                            .map_err(|_| ExecError::InvalidInput("sum out of range for a 64-bit integer".into()))?;
                        out.push(Some(v));
                    } else {
                        out.push(None);
                    }
                }
                Arc::new(Int64Array::from(out))
            }
            (SumMode::Float, false) => {
                Arc::new(groups.iter().map(|g| present(*g).then(|| self.floats[*g])).collect::<Float64Array>())
            }
            (SumMode::Decimal { scale }, false) => {
                let (p, s) = match self.return_type {
                    DataType::Decimal128(p, s) => (p, s),
                    _ => (38, scale),
                };
                Arc::new(
                    groups
                        .iter()
                        .map(|g| present(*g).then(|| self.ints[*g]))
                        .collect::<Decimal128Array>()
                        .with_precision_and_scale(p, s)?,
                )
            }
            (SumMode::Int, true) => Arc::new(
                groups
                    .iter()
                    .map(|g| present(*g).then(|| self.ints[*g] as f64 / self.counts[*g] as f64))
                    .collect::<Float64Array>(),
            ),
            (SumMode::Float, true) => Arc::new(
                groups
                    .iter()
                    .map(|g| present(*g).then(|| self.floats[*g] / self.counts[*g] as f64))
                    .collect::<Float64Array>(),
            ),
            (SumMode::Decimal { scale }, true) => {
                let (p, s) = match self.return_type {
                    DataType::Decimal128(p, s) => (p, s),
                    _ => (38, scale),
                };
                let mul = 10i128.pow((s - scale).max(0) as u32);
                let mut out = Vec::with_capacity(groups.len());
                for g in groups {
                    if present(*g) {
                        let scaled = self.ints[*g]
                            .checked_mul(mul)
                            .ok_or_else(|| ExecError::InvalidInput("numeric overflow in avg".into()))?;
                        out.push(Some(scaled / self.counts[*g] as i128));
                    } else {
                        out.push(None);
                    }
                }
                Arc::new(Decimal128Array::from(out).with_precision_and_scale(p, s)?)
            }
        };
        cast_to(array, &self.return_type)
    }

    fn reset(&mut self, group: usize) {
        self.counts[group] = 0;
        match self.mode {
            SumMode::Float => self.floats[group] = 0.0,
            _ => self.ints[group] = 0,
        }
    }

    fn save(&self, group: usize, out: &mut Encoder) {
        out.i64(self.counts[group]);
        match self.mode {
            SumMode::Float => out.f64(self.floats[group]),
            _ => out.i128(self.ints[group]),
        };
    }

    fn load(&mut self, group: usize, input: &mut Decoder<'_>) -> Result<()> {
        self.counts[group] = input.i64()?;
        match self.mode {
            SumMode::Float => self.floats[group] = input.f64()?,
            _ => self.ints[group] = input.i128()?,
        }
        Ok(())
    }
}

/// `min` / `max`. Values are kept row-encoded: byte order equals value order.
struct ExtremeAcc {
    converter: RowConverter,
    is_max: bool,
    append_only: bool,
    /// Append-only: the current extreme. Otherwise unused.
    best: Vec<Option<Vec<u8>>>,
    /// Retracting input: the multiset of values.
    values: Vec<BTreeMap<Vec<u8>, i64>>,
    arg_type: DataType,
    return_type: DataType,
}

impl ExtremeAcc {
    fn new(arg_type: DataType, is_max: bool, append_only: bool, return_type: DataType) -> Result<Self> {
        let converter = RowConverter::new(vec![SortField::new(arg_type.clone())])?;
        Ok(Self { converter, is_max, append_only, best: Vec::new(), values: Vec::new(), arg_type, return_type })
    }

    fn choose(&self, group: usize) -> Option<&[u8]> {
        if self.append_only {
            self.best[group].as_deref()
        } else if self.is_max {
            self.values[group].keys().next_back().map(|k| k.as_slice())
        } else {
            self.values[group].keys().next().map(|k| k.as_slice())
        }
    }
}

impl GroupAccumulator for ExtremeAcc {
    fn resize(&mut self, n: usize) {
        if self.append_only {
            self.best.resize(n, None);
        } else {
            self.values.resize_with(n, BTreeMap::new);
        }
    }

    fn update(&mut self, u: &Update<'_>) -> Result<()> {
        let Some(values) = u.values else {
            return Ok(());
        };
        let rows = self.converter.convert_columns(std::slice::from_ref(values))?;
        for ((g, r), w) in u.groups.iter().zip(u.rows).zip(u.weights) {
            if !values.is_valid(*r) {
                continue;
            }
            let bytes = rows.row(*r);
            if self.append_only && *w > 0 {
                let slot = &mut self.best[*g];
                let better = match slot {
                    None => true,
                    Some(cur) => {
                        if self.is_max {
                            bytes.as_ref() > cur.as_slice()
                        } else {
                            bytes.as_ref() < cur.as_slice()
                        }
                    }
                };
                if better {
                    *slot = Some(bytes.as_ref().to_vec());
                }
            } else if self.append_only {
                return Err(ExecError::Internal("retraction reached an append-only min/max".into()));
            } else {
                let map = &mut self.values[*g];
                let entry = map.entry(bytes.as_ref().to_vec()).or_insert(0);
                *entry += w;
                if *entry == 0 {
                    map.remove(bytes.as_ref());
                }
            }
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[usize]) -> Result<ArrayRef> {
        let parser = self.converter.parser();
        let mut chosen = Vec::with_capacity(groups.len());
        let mut present = Vec::with_capacity(groups.len());
        for g in groups {
            match self.choose(*g) {
                Some(bytes) => {
                    chosen.push(bytes.to_vec());
                    present.push(true);
                }
                None => present.push(false),
            }
        }
        let decoded = if chosen.is_empty() {
            new_empty_array(&self.arg_type)
        } else {
            let mut arrays = self.converter.convert_rows(chosen.iter().map(|b| parser.parse(b)))?;
            arrays.pop().ok_or_else(|| ExecError::Internal("min/max decode".into()))?
        };
        let array = spread_with_nulls(&decoded, &present)?;
        cast_to(array, &self.return_type)
    }

    fn reset(&mut self, group: usize) {
        if self.append_only {
            self.best[group] = None;
        } else {
            self.values[group].clear();
        }
    }

    fn save(&self, group: usize, out: &mut Encoder) {
        if self.append_only {
            out.opt_bytes(self.best[group].as_deref());
        } else {
            save_multiset(out, self.values[group].iter().map(|(v, n)| (v.as_slice(), *n)));
        }
    }

    fn load(&mut self, group: usize, input: &mut Decoder<'_>) -> Result<()> {
        if self.append_only {
            self.best[group] = input.opt_bytes()?.map(<[u8]>::to_vec);
        } else {
            let map = &mut self.values[group];
            load_multiset(input, |v, n| {
                map.insert(v, n);
            })?;
        }
        Ok(())
    }
}

/// Places the values of `dense` at the `true` positions of `present`, nulls elsewhere.
fn spread_with_nulls(dense: &ArrayRef, present: &[bool]) -> Result<ArrayRef> {
    if dense.len() == present.len() {
        return Ok(dense.clone());
    }
    let mut next = 0u32;
    let indices: datafusion::arrow::array::UInt32Array = present
        .iter()
        .map(|p| {
            if *p {
                next += 1;
                Some(next - 1)
            } else {
                None
            }
        })
        .collect();
    Ok(datafusion::arrow::compute::take(dense, &indices, None)?)
}

/// `bool_and` / `bool_or`: counts of true and false values.
struct BoolAcc {
    trues: Vec<i64>,
    falses: Vec<i64>,
    is_and: bool,
}

impl GroupAccumulator for BoolAcc {
    fn resize(&mut self, n: usize) {
        self.trues.resize(n, 0);
        self.falses.resize(n, 0);
    }

    fn update(&mut self, u: &Update<'_>) -> Result<()> {
        let Some(values) = u.values else {
            return Ok(());
        };
        let v = values
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| ExecError::Internal("bool_and/bool_or over a non-boolean".into()))?;
        for ((g, r), w) in u.groups.iter().zip(u.rows).zip(u.weights) {
            if v.is_valid(*r) {
                if v.value(*r) {
                    self.trues[*g] += w;
                } else {
                    self.falses[*g] += w;
                }
            }
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[usize]) -> Result<ArrayRef> {
        Ok(Arc::new(
            groups
                .iter()
                .map(|g| {
                    let (t, f) = (self.trues[*g], self.falses[*g]);
                    if t + f == 0 {
                        None
                    } else if self.is_and {
                        Some(f == 0)
                    } else {
                        Some(t > 0)
                    }
                })
                .collect::<BooleanArray>(),
        ))
    }

    fn reset(&mut self, group: usize) {
        self.trues[group] = 0;
        self.falses[group] = 0;
    }

    fn save(&self, group: usize, out: &mut Encoder) {
        out.i64(self.trues[group]).i64(self.falses[group]);
    }

    fn load(&mut self, group: usize, input: &mut Decoder<'_>) -> Result<()> {
        self.trues[group] = input.i64()?;
        self.falses[group] = input.i64()?;
        Ok(())
    }
}

enum Collect {
    String {
        delimiter: String,
    },
    Array,
    /// The value of the first / last entry in order (ties broken by the value itself).
    First,
    Last,
}

/// (ordering key, value) -> multiplicity, for one group.
type OrderedMultiset = BTreeMap<(Vec<u8>, Vec<u8>), i64>;

/// `string_agg` / `array_agg`: the multiset of (ordering key, value), read in order.
struct CollectAcc {
    converter: RowConverter,
    kind: Collect,
    items: Vec<OrderedMultiset>,
    arg_type: DataType,
    return_type: DataType,
}

impl CollectAcc {
    fn new(arg_type: DataType, kind: Collect, return_type: DataType) -> Result<Self> {
        let converter = RowConverter::new(vec![SortField::new(arg_type.clone())])?;
        Ok(Self { converter, kind, items: Vec::new(), arg_type, return_type })
    }
}

impl GroupAccumulator for CollectAcc {
    fn resize(&mut self, n: usize) {
        self.items.resize_with(n, BTreeMap::new);
    }

    fn update(&mut self, u: &Update<'_>) -> Result<()> {
        let Some(values) = u.values else {
            return Ok(());
        };
        let rows = self.converter.convert_columns(std::slice::from_ref(values))?;
        for (i, ((g, r), w)) in u.groups.iter().zip(u.rows).zip(u.weights).enumerate() {
            // string_agg skips nulls; array_agg keeps them.
            if matches!(self.kind, Collect::String { .. }) && !values.is_valid(*r) {
                continue;
            }
            let order = u.order_keys.map(|k| k[i].clone()).unwrap_or_default();
            let key = (order, rows.row(*r).as_ref().to_vec());
            let map = &mut self.items[*g];
            let entry = map.entry(key.clone()).or_insert(0);
            *entry += w;
            if *entry == 0 {
                map.remove(&key);
            }
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[usize]) -> Result<ArrayRef> {
        let parser = self.converter.parser();
        match &self.kind {
            Collect::String { delimiter } => {
                let mut out: Vec<Option<String>> = Vec::with_capacity(groups.len());
                for g in groups {
                    let map = &self.items[*g];
                    if map.is_empty() {
                        out.push(None);
                        continue;
                    }
                    let rows: Vec<_> =
                        map.iter().flat_map(|((_, v), n)| std::iter::repeat_n(v, (*n).max(0) as usize)).collect();
                    let mut arrays = self.converter.convert_rows(rows.iter().map(|b| parser.parse(b)))?;
                    let values = arrays.pop().ok_or_else(|| ExecError::Internal("string_agg decode".into()))?;
                    let values = cast(&values, &DataType::Utf8)?;
                    let values = values.as_string::<i32>();
                    let parts: Vec<&str> = values.iter().map(|v| v.unwrap_or("")).collect();
                    out.push(Some(parts.join(delimiter)));
                }
                cast_to(Arc::new(StringArray::from(out)), &self.return_type)
            }
            Collect::First | Collect::Last => {
                let picked: Vec<Option<&Vec<u8>>> = groups
                    .iter()
                    .map(|g| {
                        let map = &self.items[*g];
                        let entry = if matches!(self.kind, Collect::First) {
                            map.keys().next()
                        } else {
                            map.keys().next_back()
                        };
                        entry.map(|(_, v)| v)
                    })
                    .collect();
                let present: Vec<&Vec<u8>> = picked.iter().flatten().copied().collect();
                if present.is_empty() {
                    return Ok(new_null_array(&self.return_type, groups.len()));
                }
                let mut arrays = self.converter.convert_rows(present.iter().map(|b| parser.parse(b)))?;
                let values = arrays.pop().ok_or_else(|| ExecError::Internal("first_value decode".into()))?;
                let mut next = 0u32;
                let indices: UInt32Array = picked
                    .iter()
                    .map(|p| {
                        p.map(|_| {
                            next += 1;
                            next - 1
                        })
                    })
                    .collect();
                cast_to(take(&values, &indices, None)?, &self.return_type)
            }
            Collect::Array => {
                let item_field = match &self.return_type {
                    DataType::List(f) => f.clone(),
                    _ => Arc::new(Field::new("item", self.arg_type.clone(), true)),
                };
                let mut lengths = Vec::with_capacity(groups.len());
                let mut nulls = Vec::with_capacity(groups.len());
                let mut parts: Vec<ArrayRef> = Vec::new();
                for g in groups {
                    let map = &self.items[*g];
                    let rows: Vec<_> =
                        map.iter().flat_map(|((_, v), n)| std::iter::repeat_n(v, (*n).max(0) as usize)).collect();
                    nulls.push(!rows.is_empty());
                    lengths.push(rows.len());
                    if !rows.is_empty() {
                        let mut arrays = self.converter.convert_rows(rows.iter().map(|b| parser.parse(b)))?;
                        let a = arrays.pop().ok_or_else(|| ExecError::Internal("array_agg decode".into()))?;
                        parts.push(cast_to(a, item_field.data_type())?);
                    }
                }
                let values = if parts.is_empty() {
                    new_empty_array(item_field.data_type())
                } else {
                    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                    concat(&refs)?
                };
                let list =
                    ListArray::try_new(item_field, OffsetBuffer::from_lengths(lengths), values, Some(nulls.into()))?;
                cast_to(Arc::new(list), &self.return_type)
            }
        }
    }

    fn reset(&mut self, group: usize) {
        self.items[group].clear();
    }

    fn save(&self, group: usize, out: &mut Encoder) {
        let map = &self.items[group];
        out.u64(map.len() as u64);
        for ((order, value), n) in map {
            out.bytes(order).bytes(value).i64(*n);
        }
    }

    fn load(&mut self, group: usize, input: &mut Decoder<'_>) -> Result<()> {
        let n = input.u64()?;
        let map = &mut self.items[group];
        for _ in 0..n {
            let order = input.bytes()?.to_vec();
            let value = input.bytes()?.to_vec();
            map.insert((order, value), input.i64()?);
        }
        Ok(())
    }
}

/// Variance and standard deviation from n, Σx and Σx².
struct VarianceAcc {
    n: Vec<i64>,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    sample: bool,
    sqrt: bool,
    return_type: DataType,
}

impl GroupAccumulator for VarianceAcc {
    fn resize(&mut self, n: usize) {
        self.n.resize(n, 0);
        self.sum.resize(n, 0.0);
        self.sum_sq.resize(n, 0.0);
    }

    fn update(&mut self, u: &Update<'_>) -> Result<()> {
        let Some(values) = u.values else {
            return Ok(());
        };
        let v = cast(values, &DataType::Float64)?;
        let v = v.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        for ((g, r), w) in u.groups.iter().zip(u.rows).zip(u.weights) {
            if v.is_valid(*r) {
                let x = v.value(*r);
                self.n[*g] += w;
                self.sum[*g] += x * *w as f64;
                self.sum_sq[*g] += x * x * *w as f64;
            }
        }
        Ok(())
    }

    fn evaluate(&self, groups: &[usize]) -> Result<ArrayRef> {
        let out: Float64Array = groups
            .iter()
            .map(|g| {
                let n = self.n[*g] as f64;
                let denom = if self.sample { n - 1.0 } else { n };
                if self.n[*g] <= 0 || denom <= 0.0 {
                    return None;
                }
                let var = ((self.sum_sq[*g] - self.sum[*g] * self.sum[*g] / n) / denom).max(0.0);
                Some(if self.sqrt { var.sqrt() } else { var })
            })
            .collect();
        cast_to(Arc::new(out), &self.return_type)
    }

    fn reset(&mut self, group: usize) {
        self.n[group] = 0;
        self.sum[group] = 0.0;
        self.sum_sq[group] = 0.0;
    }

    fn save(&self, group: usize, out: &mut Encoder) {
        out.i64(self.n[group]).f64(self.sum[group]).f64(self.sum_sq[group]);
    }

    fn load(&mut self, group: usize, input: &mut Decoder<'_>) -> Result<()> {
        self.n[group] = input.i64()?;
        self.sum[group] = input.f64()?;
        self.sum_sq[group] = input.f64()?;
        Ok(())
    }
}

/// Wraps an accumulator for `DISTINCT`: it sees a value (+1) when its multiplicity in the
/// group becomes positive and loses it (-1) when the multiplicity returns to zero.
pub struct DistinctAcc {
    inner: Box<dyn GroupAccumulator>,
    converter: RowConverter,
    seen: Vec<hashbrown::HashMap<Vec<u8>, i64>>,
}

impl DistinctAcc {
    /// # Errors
    /// When the argument type has no row encoding.
    pub fn new(inner: Box<dyn GroupAccumulator>, arg_type: &DataType) -> Result<Self> {
        let converter = RowConverter::new(vec![SortField::new(arg_type.clone())])?;
        Ok(Self { inner, converter, seen: Vec::new() })
    }
}

impl GroupAccumulator for DistinctAcc {
    fn resize(&mut self, n: usize) {
        self.seen.resize_with(n, hashbrown::HashMap::new);
        self.inner.resize(n);
    }

    fn update(&mut self, u: &Update<'_>) -> Result<()> {
        let Some(values) = u.values else {
            return Ok(());
        };
        let rows = self.converter.convert_columns(std::slice::from_ref(values))?;
        let mut groups = Vec::new();
        let mut sel_rows = Vec::new();
        let mut weights = Vec::new();
        let mut order = Vec::new();
        for (i, ((g, r), w)) in u.groups.iter().zip(u.rows).zip(u.weights).enumerate() {
            if !values.is_valid(*r) {
                continue;
            }
            let key = rows.row(*r).as_ref().to_vec();
            let map = &mut self.seen[*g];
            let before = map.get(&key).copied().unwrap_or(0);
            let after = before + w;
            if after == 0 {
                map.remove(&key);
            } else {
                map.insert(key, after);
            }
            let delta = i64::from(after > 0) - i64::from(before > 0);
            if delta != 0 {
                groups.push(*g);
                sel_rows.push(*r);
                weights.push(delta);
                if let Some(k) = u.order_keys {
                    order.push(k[i].clone());
                }
            }
        }
        if groups.is_empty() {
            return Ok(());
        }
        self.inner.update(&Update {
            groups: &groups,
            rows: &sel_rows,
            weights: &weights,
            values: u.values,
            order_keys: u.order_keys.map(|_| order.as_slice()),
        })
    }

    fn evaluate(&self, groups: &[usize]) -> Result<ArrayRef> {
        self.inner.evaluate(groups)
    }

    fn reset(&mut self, group: usize) {
        self.seen[group].clear();
        self.inner.reset(group);
    }

    fn save(&self, group: usize, out: &mut Encoder) {
        save_multiset(out, self.seen[group].iter().map(|(v, n)| (v.as_slice(), *n)));
        self.inner.save(group, out);
    }

    fn load(&mut self, group: usize, input: &mut Decoder<'_>) -> Result<()> {
        let map = &mut self.seen[group];
        load_multiset(input, |v, n| {
            map.insert(v, n);
        })?;
        self.inner.load(group, input)
    }
}
