//! Durable operator state: what a checkpoint stores for each operator instance, and how an
//! operator gets it back after a restart.
//!
//! # Model
//! Every job (table, materialized view, sink) has one state table in the store, `state/<job>`.
//! Each operator instance owns the key range that starts with its [`StateScope`]: the fragment
//! it runs in, the actor's index within the fragment, and the operator's position in the
//! actor's chain. A source split keeps its position in the same table, under the scope's
//! [`SOURCE_POSITION`] slot.
//!
//! Operators write *changes*: at a checkpoint barrier an operator puts and deletes the entries
//! that changed since the previous checkpoint ([`StateWriter`]), so a checkpoint costs what
//! changed, not what is held. All entries of all actors go into the same store transaction as
//! the epoch's table and view rows and the sources' positions, so after a crash the store
//! reopens at one consistent cut: every operator's state, every view's rows and every source's
//! position as of the same barrier. On restart an operator reads its range back
//! ([`StateReader`]) before it sees any input.
//!
//! Plans are rebuilt from SQL on every start, so the same statement must produce the same
//! fragments and chains: the runtime stores each job's plan fingerprint with its first
//! checkpoint and restores state only when the fingerprint matches (otherwise the job is
//! rebuilt from its inputs).

use std::sync::Arc;

use eddy_common::ids::ObjectId;

use crate::error::{ExecError, Result};
use crate::store::{Snapshot, Store};

/// The chain position a source split's position is stored under.
pub const SOURCE_POSITION: u16 = u16::MAX;

/// Identifies one operator instance's key range within its job's state table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateScope {
    pub fragment: u16,
    pub actor_index: u16,
    pub position: u16,
}

impl StateScope {
    /// The big-endian prefix of every key in this scope.
    pub fn prefix(&self) -> [u8; 6] {
        let mut p = [0u8; 6];
        p[0..2].copy_from_slice(&self.fragment.to_be_bytes());
        p[2..4].copy_from_slice(&self.actor_index.to_be_bytes());
        p[4..6].copy_from_slice(&self.position.to_be_bytes());
        p
    }

    pub fn at(self, position: u16) -> Self {
        Self { position, ..self }
    }
}

/// One state change: a key (with its scope prefix) and its new value, or `None` to delete it.
pub type StateEntry = (Vec<u8>, Option<Vec<u8>>);

/// Where an operator writes the state changes of one checkpoint.
pub struct StateWriter<'a> {
    prefix: [u8; 6],
    entries: &'a mut Vec<StateEntry>,
}

impl<'a> StateWriter<'a> {
    pub fn new(scope: StateScope, entries: &'a mut Vec<StateEntry>) -> Self {
        Self { prefix: scope.prefix(), entries }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(6 + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        let k = self.key(key);
        self.entries.push((k, Some(value)));
    }

    /// Removes `key` (a no-op when it was never written).
    pub fn delete(&mut self, key: &[u8]) {
        let k = self.key(key);
        self.entries.push((k, None));
    }
}

/// An operator's state as the last checkpoint left it (or, after [`StateReader::refresh`], as
/// the latest commit has it).
#[derive(Clone)]
pub struct StateReader {
    store: Option<Arc<Store>>,
    snapshot: Snapshot,
    job: ObjectId,
    prefix: [u8; 6],
}

impl StateReader {
    pub fn new(snapshot: Snapshot, job: ObjectId, scope: StateScope) -> Self {
        Self { store: None, snapshot, job, prefix: scope.prefix() }
    }

    /// A reader that can follow later commits of `store`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn of_store(store: Arc<Store>, job: ObjectId, scope: StateScope) -> Result<Self> {
        Ok(Self { snapshot: store.snapshot()?, store: Some(store), job, prefix: scope.prefix() })
    }

    /// Reads the latest commit from now on: call it once a checkpoint is durable to see what
    /// it wrote.
    ///
    /// # Errors
    /// On storage failure.
    pub fn refresh(&mut self) -> Result<()> {
        if let Some(store) = &self.store {
            self.snapshot = store.snapshot()?;
        }
        Ok(())
    }

    /// Calls `f` with every entry whose key (without the scope prefix) starts with `prefix`.
    ///
    /// # Errors
    /// On storage failure, or what `f` returns.
    pub fn for_each_with_prefix(&self, prefix: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let mut full = self.prefix.to_vec();
        full.extend_from_slice(prefix);
        self.snapshot.state_scan(self.job, &full, |k, v| f(&k[self.prefix.len()..], v))
    }

    /// The value stored under `key`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut k = self.prefix.to_vec();
        k.extend_from_slice(key);
        self.snapshot.state_get(self.job, &k)
    }

    /// Calls `f` with every entry of the scope, in key order (keys without the prefix).
    ///
    /// # Errors
    /// On storage failure, or what `f` returns.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        self.snapshot.state_scan(self.job, &self.prefix, |k, v| f(&k[self.prefix.len()..], v))
    }
}

/// Appends `part` after its length (u32, big-endian), so keys made of several variable-length
/// parts sort part by part and split back unambiguously.
pub fn push_prefixed(key: &mut Vec<u8>, part: &[u8]) {
    key.extend_from_slice(&(part.len() as u32).to_be_bytes());
    key.extend_from_slice(part);
}

/// Splits what [`push_prefixed`] wrote off the front of `key`: the part and the rest.
///
/// # Errors
/// When `key` is too short for the length it claims.
pub fn split_prefixed(key: &[u8]) -> Result<(&[u8], &[u8])> {
    if key.len() < 4 {
        return Err(corrupt("key part without its length"));
    }
    let (len, rest) = key.split_at(4);
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err(corrupt("key part longer than the key"));
    }
    Ok(rest.split_at(len))
}

/// A small binary encoding for operator state values: fixed-width integers and
/// length-prefixed byte strings, little-endian. Decoding checks every length, so a corrupt
/// value is an error, never a panic.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn i128(&mut self, v: i128) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    pub fn opt_bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            Some(b) => self.u8(1).bytes(b),
            None => self.u8(0),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Reads what an [`Encoder`] wrote.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
}

fn corrupt(what: &str) -> ExecError {
    ExecError::Storage(format!("corrupt operator state: {what}"))
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(corrupt("value ends early"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N)?.try_into().map_err(|_| corrupt("bad width"))
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub fn bool(&mut self) -> Result<bool> {
        Ok(self.u8()? != 0)
    }

    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn i128(&mut self) -> Result<i128> {
        Ok(i128::from_le_bytes(self.array()?))
    }

    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = usize::try_from(self.u64()?).map_err(|_| corrupt("length overflows"))?;
        self.take(n)
    }

    pub fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.bytes().map(Some),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_round_trips_and_rejects_truncation() -> Result<()> {
        let mut e = Encoder::new();
        e.i64(-5).bytes(b"abc").opt_bytes(None).opt_bytes(Some(b"x")).f64(1.5).bool(true).i128(-7);
        let bytes = e.finish();
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.i64()?, -5);
        assert_eq!(d.bytes()?, b"abc");
        assert_eq!(d.opt_bytes()?, None);
        assert_eq!(d.opt_bytes()?, Some(&b"x"[..]));
        assert_eq!(d.f64()?, 1.5);
        assert!(d.bool()?);
        assert_eq!(d.i128()?, -7);
        assert!(d.is_empty());
        let mut short = Decoder::new(&bytes[..10]);
        assert_eq!(short.i64()?, -5);
        assert!(short.bytes().is_err());
        Ok(())
    }

    #[test]
    fn scopes_sort_by_fragment_actor_position() {
        let a = StateScope { fragment: 0, actor_index: 1, position: 2 }.prefix();
        let b = StateScope { fragment: 1, actor_index: 0, position: 0 }.prefix();
        assert!(a < b);
    }
}

/// Checking that an operator restored from its checkpoints behaves exactly like one that never
/// stopped.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use eddy_common::ChangeBatch;

    use super::*;
    use crate::message::Barrier;
    use crate::operator::{Emitted, Operator, Output};
    use crate::store::{EpochCommit, Store};

    /// One input event of a script.
    pub enum Step<'a> {
        /// Changes in `ChangeBatch::from_pretty` form on input `input`.
        Data(usize, &'a str),
        /// A watermark: input, column, value.
        Watermark(usize, usize, i64),
        /// The end of an epoch; a checkpoint follows every barrier.
        Barrier,
        /// Replace the operator under test by a fresh one restored from the checkpoints.
        Restart,
    }

    fn render(items: Vec<Emitted>) -> Vec<String> {
        let mut lines: Vec<String> = items
            .into_iter()
            .flat_map(|e| match e {
                Emitted::Data(b) => b.to_pretty().lines().map(str::to_string).collect::<Vec<_>>(),
                Emitted::Watermark { column, value } => vec![format!("wm {column} {value}")],
            })
            .collect();
        lines.sort();
        lines
    }

    fn feed(op: &mut dyn Operator, step: &Step<'_>, epoch: u64) -> Result<Vec<String>> {
        let mut out = Output::default();
        match step {
            Step::Data(input, text) => op.process(*input, ChangeBatch::from_pretty(text), &mut out)?,
            Step::Watermark(input, column, value) => {
                if op.watermarks_per_input() {
                    op.on_input_watermark(*input, *column, *value, &mut out)?
                } else {
                    op.on_watermark(*column, *value, &mut out)?
                }
            }
            Step::Barrier => {
                op.on_barrier(&Barrier { epoch, checkpoint: true, mutation: None }, &mut out)?;
                let _ = op.take_delta();
            }
            Step::Restart => {}
        }
        Ok(render(out.take()))
    }

    /// Runs `script` through one operator that never stops and one that is checkpointed at
    /// every barrier and restarted at every `Restart`, and asserts that both emit the same
    /// changes (per step, as multisets of rows).
    pub fn assert_restores(make: impl Fn() -> Box<dyn Operator>, script: &[Step<'_>]) -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ExecError::Storage(e.to_string()))?;
        let store: Arc<Store> = Store::open(dir.path(), false)?;
        let job = ObjectId(1);
        let scope = StateScope { fragment: 0, actor_index: 0, position: 0 };
        let mut reference = make();
        let mut restored = make();
        let mut epoch = 1;
        for (i, step) in script.iter().enumerate() {
            if let Step::Restart = step {
                restored = make();
                restored.restore(&StateReader::new(store.snapshot()?, job, scope))?;
                continue;
            }
            let expected = feed(reference.as_mut(), step, epoch)?;
            let actual = feed(restored.as_mut(), step, epoch)?;
            assert_eq!(actual, expected, "step {i} emitted differently after a restart");
            if let Step::Barrier = step {
                let mut entries = Vec::new();
                restored.checkpoint(&mut StateWriter::new(scope, &mut entries))?;
                let mut ignored = Vec::new();
                reference.checkpoint(&mut StateWriter::new(scope, &mut ignored))?;
                store.commit(&EpochCommit { state: vec![(job, entries)], durable: true, ..Default::default() })?;
                epoch += 1;
            }
        }
        Ok(())
    }

    /// Runs `script` through an operator without a memory limit and one with a tiny one
    /// (checkpointed and told of each durable checkpoint after every barrier, so it evicts),
    /// asserts both emit the same changes, and returns how many entries were evicted.
    pub fn assert_spills(
        make: impl Fn(Option<Arc<crate::memory::MemoryBudget>>) -> Box<dyn Operator>,
        script: &[Step<'_>],
    ) -> Result<u64> {
        let dir = tempfile::tempdir().map_err(|e| ExecError::Storage(e.to_string()))?;
        let store: Arc<Store> = Store::open(dir.path(), false)?;
        let job = ObjectId(1);
        let scope = StateScope { fragment: 0, actor_index: 0, position: 0 };
        let budget = Arc::new(crate::memory::MemoryBudget::new(Some(1)));
        let mut reference = make(None);
        let mut limited = make(Some(budget.clone()));
        limited.attach_state(StateReader::of_store(store.clone(), job, scope)?);
        let mut epoch = 1;
        for (i, step) in script.iter().enumerate() {
            let expected = feed(reference.as_mut(), step, epoch)?;
            let actual = feed(limited.as_mut(), step, epoch)?;
            assert_eq!(actual, expected, "step {i} emitted differently under the memory limit");
            if let Step::Barrier = step {
                let mut entries = Vec::new();
                limited.checkpoint(&mut StateWriter::new(scope, &mut entries))?;
                store.commit(&EpochCommit { state: vec![(job, entries)], durable: true, ..Default::default() })?;
                limited.checkpoint_committed(epoch)?;
                epoch += 1;
            }
        }
        Ok(budget.evicted_entries())
    }
}
