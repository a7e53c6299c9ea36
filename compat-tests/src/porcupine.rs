//! A linearizability checker in the style of porcupine (which etcd's robustness tests use): the
//! Wing–Gong / Lowe search over a history of timed operations, memoising (set of linearized operations,
//! model state) pairs, with optional partitioning (P-compositionality, e.g. by key) and a time budget.
//!
//! Models may be non-deterministic (an operation whose outcome is unknown may or may not have taken
//! effect): a step returns every possible next state and the search runs over *sets* of states, as
//! porcupine's `NondeterministicModel` does. An operation that never returned has return time
//! [`NEVER`], so it may be linearized anywhere after its call, or not need to be placed before others.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Return time of an operation whose response never arrived (timed out, connection lost).
pub const NEVER: u64 = u64::MAX;

/// One completed (or abandoned) call: what was asked, what came back, and when (any monotonic unit).
#[derive(Debug, Clone)]
pub struct Operation<I, O> {
    pub client: usize,
    pub input: I,
    pub output: O,
    pub call: u64,
    pub ret: u64,
}

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Ord + std::fmt::Debug;
    type Input: std::fmt::Debug;
    type Output: std::fmt::Debug;

    fn init(&self) -> Self::State;

    /// Every state the system may be in after applying `input` in `state` and answering `output`;
    /// empty when that answer is impossible in that state.
    fn step(&self, state: &Self::State, input: &Self::Input, output: &Self::Output) -> Vec<Self::State>;

    /// Groups of operation indices that can be checked independently (each from `init`). The
    /// default is one group: no partitioning.
    fn partition(&self, ops: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..ops.len()).collect()]
    }
}

/// The verdict.
#[derive(Debug)]
pub enum CheckResult {
    Ok,
    /// Not linearizable. `partition` lists the failing group's operations (history indices);
    /// `linearized` the longest prefix order found; `stuck` the operations that could come next
    /// but none of which fits the state reached (`states`).
    Illegal {
        partition: usize,
        linearized: Vec<usize>,
        stuck: Vec<usize>,
        states: String,
    },
    /// The time budget ran out before a verdict.
    Unknown,
}

impl CheckResult {
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }
}

/// Checks `ops` against `model` within `budget`.
pub fn check<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>], budget: Duration) -> CheckResult {
    let deadline = Instant::now() + budget;
    for (p, group) in model.partition(ops).into_iter().enumerate() {
        match check_partition(model, ops, &group, deadline) {
            Search::Ok => {}
            Search::Timeout => return CheckResult::Unknown,
            Search::Illegal { linearized, stuck, states } => {
                return CheckResult::Illegal {
                    partition: p,
                    linearized: linearized.into_iter().map(|i| group[i]).collect(),
                    stuck: stuck.into_iter().map(|i| group[i]).collect(),
                    states,
                }
            }
        }
    }
    CheckResult::Ok
}

enum Search {
    Ok,
    Timeout,
    Illegal { linearized: Vec<usize>, stuck: Vec<usize>, states: String },
}

const NONE: usize = usize::MAX;

/// A sorted, deduplicated set of states (canonical, so equal sets hash equally).
fn canonical<S: Ord>(mut states: Vec<S>) -> Vec<S> {
    states.sort();
    states.dedup();
    states
}

fn check_partition<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    group: &[usize],
    deadline: Instant,
) -> Search {
    let n = group.len();
    if n == 0 {
        return Search::Ok;
    }
    // Events: node 0 is the list head; call of op k is node 1 + 2k, its return node 2 + 2k.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (k, &i) in group.iter().enumerate() {
        let op = &ops[i];
        events.push((op.call, false, k));
        events.push((op.ret.max(op.call), true, k));
    }
    // At equal times calls sort before returns: such operations count as concurrent (the lenient
    // reading, so clock granularity can never produce a false violation).
    events.sort_by_key(|&(t, is_ret, k)| (t, is_ret, k));
    let node = |is_ret: bool, k: usize| 1 + 2 * k + usize::from(is_ret);
    let total = 1 + 2 * n;
    let mut next = vec![NONE; total];
    let mut prev = vec![NONE; total];
    let mut last = 0;
    for &(_, is_ret, k) in &events {
        let id = node(is_ret, k);
        next[last] = id;
        prev[id] = last;
        last = id;
    }
    let is_call = |id: usize| id % 2 == 1;
    let op_of = |id: usize| (id - 1) / 2;

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(u64, u64)> = HashSet::new();
    let mut states: Vec<M::State> = vec![model.init()];
    // Stack of (call node, states before it).
    let mut calls: Vec<(usize, Vec<M::State>)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut entry = next[0];
    let mut steps: u64 = 0;

    while next[0] != NONE {
        steps += 1;
        if steps.is_multiple_of(4096) && Instant::now() > deadline {
            return Search::Timeout;
        }
        if entry != NONE && is_call(entry) {
            let k = op_of(entry);
            let op = &ops[group[k]];
            let mut after = Vec::new();
            for s in &states {
                after.extend(model.step(s, &op.input, &op.output));
            }
            let mut advanced = false;
            if !after.is_empty() {
                let after = canonical(after);
                linearized[k / 64] |= 1 << (k % 64);
                if cache.insert(fingerprint(&linearized, &after)) {
                    calls.push((entry, std::mem::replace(&mut states, after)));
                    // Lift the call and its return out of the list.
                    let ret = entry + 1;
                    for id in [entry, ret] {
                        next[prev[id]] = next[id];
                        if next[id] != NONE {
                            prev[next[id]] = prev[id];
                        }
                    }
                    if calls.len() > longest.len() {
                        longest = calls.iter().map(|(c, _)| op_of(*c)).collect();
                    }
                    entry = next[0];
                    advanced = true;
                } else {
                    linearized[k / 64] &= !(1 << (k % 64));
                }
            }
            if !advanced {
                entry = next[entry];
            }
        } else {
            // A return (or the end) reached: some operation that had to be linearized by now was not.
            let Some((call, before)) = calls.pop() else {
                return illegal(model, ops, group, &longest);
            };
            let k = op_of(call);
            linearized[k / 64] &= !(1 << (k % 64));
            states = before;
            // Unlift in reverse order: the return first, then the call.
            for id in [call + 1, call] {
                next[prev[id]] = id;
                if next[id] != NONE {
                    prev[next[id]] = id;
                }
            }
            entry = next[call];
        }
    }
    Search::Ok
}

/// A 128-bit fingerprint of a (linearized set, states) pair for the memo. Storing full pairs would
/// cost a bitset of the whole history per entry (hundreds of MB on a soak); a collision could only
/// skip an unexplored branch, with a probability far below any run's chance of hardware error.
fn fingerprint<S: Hash>(linearized: &[u64], states: &[S]) -> (u64, u64) {
    use std::hash::{BuildHasher, Hasher};
    let mut halves = [0u64; 2];
    for (salt, half) in halves.iter_mut().enumerate() {
        // Two differently salted SipHash instances with fixed keys (runs stay reproducible).
        let mut h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15 ^ salt as u64);
        linearized.hash(&mut h);
        states.hash(&mut h);
        *half = h.finish();
    }
    (halves[0], halves[1])
}

/// Builds the report for a failed search: replays the longest linearization found and lists the
/// calls that were pending at its end.
fn illegal<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>], group: &[usize], longest: &[usize]) -> Search {
    let mut states = vec![model.init()];
    for &k in longest {
        let op = &ops[group[k]];
        states = canonical(states.iter().flat_map(|s| model.step(s, &op.input, &op.output)).collect());
    }
    let done: HashSet<usize> = longest.iter().copied().collect();
    // The pending calls at that point: not linearized, called before the earliest return among them.
    let remaining: Vec<usize> = (0..group.len()).filter(|k| !done.contains(k)).collect();
    let first_ret = remaining.iter().map(|&k| ops[group[k]].ret).min().unwrap_or(NEVER);
    let stuck = remaining.into_iter().filter(|&k| ops[group[k]].call <= first_ret).take(8).collect();
    Search::Illegal { linearized: longest.to_vec(), stuck, states: format!("{states:?}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A single register: write(v) / read() -> v. Unknown writes may or may not apply.
    struct Register;

    #[derive(Debug, Clone)]
    enum RegIn {
        Write(u32),
        Read,
    }

    #[derive(Debug, Clone)]
    enum RegOut {
        Ack,
        Value(u32),
        Unknown,
    }

    impl Model for Register {
        type State = u32;
        type Input = RegIn;
        type Output = RegOut;
        fn init(&self) -> u32 {
            0
        }
        fn step(&self, s: &u32, i: &RegIn, o: &RegOut) -> Vec<u32> {
            match (i, o) {
                (RegIn::Write(v), RegOut::Ack) => vec![*v],
                (RegIn::Write(v), RegOut::Unknown) => vec![*s, *v],
                (RegIn::Read, RegOut::Value(v)) if v == s => vec![*s],
                _ => vec![],
            }
        }
    }

    fn op(client: usize, input: RegIn, output: RegOut, call: u64, ret: u64) -> Operation<RegIn, RegOut> {
        Operation { client, input, output, call, ret }
    }

    #[test]
    fn concurrent_ops_may_reorder() {
        // Write 1 overlaps a read that sees 0 and one that sees 1: linearizable.
        let h = vec![
            op(0, RegIn::Write(1), RegOut::Ack, 0, 10),
            op(1, RegIn::Read, RegOut::Value(0), 1, 5),
            op(2, RegIn::Read, RegOut::Value(1), 2, 11),
        ];
        assert!(check(&Register, &h, Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn stale_read_after_ack_is_rejected() {
        let h = vec![op(0, RegIn::Write(1), RegOut::Ack, 0, 10), op(1, RegIn::Read, RegOut::Value(0), 11, 12)];
        match check(&Register, &h, Duration::from_secs(5)) {
            CheckResult::Illegal { linearized, stuck, .. } => {
                assert_eq!(linearized, vec![0]);
                assert_eq!(stuck, vec![1]);
            }
            other => panic!("stale read accepted: {other:?}"),
        }
    }

    #[test]
    fn unknown_write_may_or_may_not_apply_but_not_flip_flop() {
        let both = vec![
            op(0, RegIn::Write(1), RegOut::Unknown, 0, NEVER),
            op(1, RegIn::Read, RegOut::Value(0), 1, 2),
            op(1, RegIn::Read, RegOut::Value(1), 3, 4),
        ];
        assert!(check(&Register, &both, Duration::from_secs(5)).is_ok());
        let flip = vec![
            op(0, RegIn::Write(1), RegOut::Unknown, 0, NEVER),
            op(1, RegIn::Read, RegOut::Value(1), 1, 2),
            op(1, RegIn::Read, RegOut::Value(0), 3, 4),
        ];
        assert!(!check(&Register, &flip, Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn equal_timestamps_count_as_concurrent() {
        let h = vec![op(0, RegIn::Write(1), RegOut::Ack, 0, 5), op(1, RegIn::Read, RegOut::Value(0), 5, 6)];
        assert!(check(&Register, &h, Duration::from_secs(5)).is_ok());
    }
}
