//! A task's buffered input: one queue per source partition, and the rule that picks the next
//! record across them. Kafka Streams' `PartitionGroup` (with its `RecordQueue`s).
//!
//! # The rule
//! The next record of a task is the head with the **lowest timestamp** among its input
//! partitions' buffers (ties go to the first source topic by name), so that a task reading
//! several topics sees their records in timestamp order whatever order the fetches came back in.
//! A choice is only sound when every partition has something buffered; for a partition whose
//! buffer is empty the task waits, bounded, as Kafka Streams' `max.task.idle.ms` does:
//! - if the partition is known to be **caught up** (its consumer position has reached the high
//!   watermark of its last fetch: nothing is there to fetch), the task waits at most
//!   `max_task_idle` (`StreamsConfig::max_task_idle`; 0 by default, Kafka Streams' default: a
//!   caught-up partition never holds the others back);
//! - if it is **behind** (a fetch has told its end, and records are on the broker beyond its
//!   position) it waits for them, at most the larger of `max_task_idle` and [`FETCH_WAIT`]: one
//!   fetch round trip, a few milliseconds;
//! - if its end is **unknown** (no fetch has told yet, as right after an assignment or a rewind)
//!   it waits, at most the larger of `max_task_idle` and [`UNFETCHED_DATA_WAIT`].
//!
//! The wait is counted from the first time the task had a record to process while the partition
//! was empty; once it has passed, that partition does not hold the task back again until a
//! record of it is buffered (Kafka Streams' enforced processing). A task whose buffers are all
//! empty waits for nothing, so a quiet period does not count as waiting.
//!
//! The pure choice lives here so that it is unit-tested without a broker; whether a partition is
//! caught up is asked of the consumer by the caller.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::record::RawRecord;

/// Records one input partition may buffer before it is paused on the consumer. With librdkafka's
/// own pre-fetch queue bounded by `queued.max.messages.kbytes`, this keeps a task that waits on
/// another partition from holding an unbounded backlog in memory. Ten times Kafka Streams'
/// `buffered.records.per.partition` (1,000): pausing a partition makes librdkafka drop what it had
/// pre-fetched of it, and resuming fetches it again, so at 1,000 a backlog was paused and resumed
/// every few hundred records and its task waited on the refetch each time (the join benchmark at
/// 12k pairs/s; at 10,000, 73k). Small records, so about a megabyte per partition.
pub const MAX_BUFFERED_RECORDS_PER_PARTITION: usize = 10_000;
/// A paused partition is resumed once its buffer has drained to this many records: half the
/// bound, so that a partition at the limit is not paused and resumed on every record.
pub const RESUME_BUFFERED_RECORDS: usize = MAX_BUFFERED_RECORDS_PER_PARTITION / 2;
/// Longest wait for a partition whose end is not known yet (nothing fetched since an assignment
/// or a rewind) before the task processes its other partitions anyway: the first fetch brings
/// it (`fetch.wait.max.ms`, 500 ms, when the broker has nothing for the other partitions).
pub const UNFETCHED_DATA_WAIT: Duration = Duration::from_millis(500);
/// Longest wait for a partition whose end is known and which has records on the broker beyond
/// its position: one fetch round trip on a broker that has the data takes a few milliseconds.
/// When the fetch takes longer (librdkafka resuming a paused partition, or backing off with its
/// queue full) the task goes on in arrival order rather than stall: with this bound at 500 ms,
/// as for an unknown end, the join benchmark ran at 8k pairs/s instead of 80k (README).
pub const FETCH_WAIT: Duration = Duration::from_millis(10);

/// One input partition's buffer.
#[derive(Debug)]
struct InputPartition {
    /// Source topic.
    topic: String,
    /// Records polled, not yet processed, in offset order.
    buffer: VecDeque<RawRecord>,
    /// Since when the task has had something to process while this buffer was empty: the start
    /// of its bounded wait. Cleared when a record of it is buffered.
    empty_since: Option<Instant>,
}

/// What a partition's consumer says of its end, for the idle rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caught {
    /// The position has reached the last fetch's high watermark: nothing to fetch now.
    Up,
    /// A fetch has told the end, and records are on the broker beyond the position.
    Behind,
    /// No fetch has told the end yet, or nothing was polled since the assignment.
    Unknown,
}

/// Why a task has no record to process now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Nothing is buffered.
    Empty,
    /// Records are buffered, but an empty partition is still waited for.
    Waiting,
}

/// A task's input buffers.
#[derive(Debug)]
pub(super) struct PartitionGroup {
    /// One per source topic, in the topology's (sorted) order: the index is the tie-break.
    partitions: Vec<InputPartition>,
    /// Records buffered across all partitions.
    buffered: usize,
}

impl PartitionGroup {
    /// Empty buffers for the task's source topics.
    pub fn new(topics: &[String]) -> Self {
        let partitions = topics
            .iter()
            .map(|topic| InputPartition { topic: topic.clone(), buffer: VecDeque::new(), empty_since: None })
            .collect();
        Self { partitions, buffered: 0 }
    }

    /// Buffers a polled record; returns whether its partition has now reached
    /// [`MAX_BUFFERED_RECORDS_PER_PARTITION`] and should be paused. A record of a topic the task
    /// does not read is dropped (`None`).
    pub fn push(&mut self, record: RawRecord) -> Option<bool> {
        let input = self.partitions.iter_mut().find(|p| p.topic == record.topic)?;
        input.buffer.push_back(record);
        input.empty_since = None;
        self.buffered += 1;
        Some(input.buffer.len() >= MAX_BUFFERED_RECORDS_PER_PARTITION)
    }

    /// Records buffered across all partitions.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Records buffered for `topic`.
    pub fn buffered_of(&self, topic: &str) -> usize {
        self.partitions.iter().find(|p| p.topic == topic).map_or(0, |p| p.buffer.len())
    }

    /// The offset of the first unprocessed record buffered for `topic`.
    #[cfg(test)]
    fn next_offset(&self, topic: &str) -> Option<i64> {
        self.partitions.iter().find(|p| p.topic == topic)?.buffer.front().map(|r| r.offset)
    }

    /// Drops every buffered record (a rewind or a revoke: the consumer fetches them again from
    /// the committed offsets).
    pub fn clear(&mut self) {
        for input in &mut self.partitions {
            input.buffer.clear();
            input.empty_since = None;
        }
        self.buffered = 0;
    }

    /// The index of the partition whose head is next by the rule of the module's doc, or why
    /// none is. `caught` is asked only about empty partitions, and only while another has data.
    pub fn choose(
        &mut self,
        now: Instant,
        max_task_idle: Duration,
        mut caught: impl FnMut(&str) -> Caught,
    ) -> Result<usize, Idle> {
        if self.partitions.len() == 1 {
            // One source topic: nothing to order against, nothing to wait for.
            return if self.buffered > 0 { Ok(0) } else { Err(Idle::Empty) };
        }
        let mut best: Option<(i64, usize)> = None;
        for (index, input) in self.partitions.iter().enumerate() {
            if let Some(head) = input.buffer.front() {
                if best.is_none_or(|(timestamp, _)| head.timestamp_ms < timestamp) {
                    best = Some((head.timestamp_ms, index));
                }
            }
        }
        let Some((_, index)) = best else {
            // No clock runs while there is nothing to process.
            for input in &mut self.partitions {
                input.empty_since = None;
            }
            return Err(Idle::Empty);
        };
        let mut waiting = false;
        for input in self.partitions.iter_mut().filter(|p| p.buffer.is_empty()) {
            let since = *input.empty_since.get_or_insert(now);
            let bound = match caught(&input.topic) {
                Caught::Up => max_task_idle,
                Caught::Behind => max_task_idle.max(FETCH_WAIT),
                Caught::Unknown => max_task_idle.max(UNFETCHED_DATA_WAIT),
            };
            if now.saturating_duration_since(since) < bound {
                waiting = true;
            }
        }
        if waiting {
            Err(Idle::Waiting)
        } else {
            Ok(index)
        }
    }

    /// Takes the head of partition `index` (as returned by [`PartitionGroup::choose`]), and the
    /// number of records left in that partition's buffer.
    pub fn pop(&mut self, index: usize) -> Option<(RawRecord, usize)> {
        let input = self.partitions.get_mut(index)?;
        let record = input.buffer.pop_front()?;
        self.buffered -= 1;
        Some((record, input.buffer.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, offset: i64, timestamp_ms: i64) -> RawRecord {
        RawRecord {
            topic: topic.to_string(),
            partition: 0,
            offset,
            key: None,
            value: None,
            timestamp_ms,
            headers: Vec::new(),
        }
    }

    fn group() -> PartitionGroup {
        PartitionGroup::new(&["a".to_string(), "b".to_string()])
    }

    /// Drains the group as the loop would, every partition caught up and no idle wait.
    fn drain(group: &mut PartitionGroup) -> Vec<(String, i64)> {
        let now = Instant::now();
        let mut order = Vec::new();
        while let Ok(index) = group.choose(now, Duration::ZERO, |_| Caught::Up) {
            let (r, _) = group.pop(index).expect("chosen partition has a head");
            order.push((r.topic, r.timestamp_ms));
        }
        order
    }

    #[test]
    fn the_lowest_timestamp_across_partitions_goes_first_and_ties_go_to_the_first_topic() {
        let mut g = group();
        for (offset, ts) in [(0, 20), (1, 40), (2, 50)] {
            g.push(record("a", offset, ts));
        }
        for (offset, ts) in [(0, 10), (1, 40), (2, 60)] {
            g.push(record("b", offset, ts));
        }
        let order = drain(&mut g);
        let expected: Vec<(String, i64)> = [("b", 10), ("a", 20), ("a", 40), ("b", 40), ("a", 50), ("b", 60)]
            .iter()
            .map(|(t, ts)| (t.to_string(), *ts))
            .collect();
        assert_eq!(order, expected);
        assert_eq!(g.buffered(), 0);
    }

    #[test]
    fn an_empty_partition_whose_end_is_unknown_is_waited_for_up_to_the_unfetched_bound() {
        let mut g = group();
        g.push(record("a", 0, 5));
        let t0 = Instant::now();
        assert_eq!(g.choose(t0, Duration::ZERO, |_| Caught::Unknown), Err(Idle::Waiting));
        let before = t0 + UNFETCHED_DATA_WAIT - Duration::from_millis(1);
        assert_eq!(g.choose(before, Duration::ZERO, |_| Caught::Unknown), Err(Idle::Waiting));
        assert_eq!(g.choose(t0 + UNFETCHED_DATA_WAIT, Duration::ZERO, |_| Caught::Unknown), Ok(0));
        // Past its bound, the partition does not hold the task back again until it has data.
        g.pop(0);
        g.push(record("a", 1, 6));
        assert_eq!(g.choose(t0 + UNFETCHED_DATA_WAIT, Duration::ZERO, |_| Caught::Unknown), Ok(0));
    }

    #[test]
    fn an_empty_partition_behind_its_known_end_is_waited_for_one_fetch_round_trip() {
        let mut g = group();
        g.push(record("a", 0, 5));
        let t0 = Instant::now();
        assert_eq!(g.choose(t0, Duration::ZERO, |_| Caught::Behind), Err(Idle::Waiting));
        let before = t0 + FETCH_WAIT - Duration::from_millis(1);
        assert_eq!(g.choose(before, Duration::ZERO, |_| Caught::Behind), Err(Idle::Waiting));
        assert_eq!(g.choose(t0 + FETCH_WAIT, Duration::ZERO, |_| Caught::Behind), Ok(0));
        // A larger max_task_idle is the bound then.
        let mut g = group();
        g.push(record("a", 0, 5));
        let idle = Duration::from_millis(200);
        assert_eq!(g.choose(t0, idle, |_| Caught::Behind), Err(Idle::Waiting));
        assert_eq!(g.choose(t0 + FETCH_WAIT, idle, |_| Caught::Behind), Err(Idle::Waiting));
        assert_eq!(g.choose(t0 + idle, idle, |_| Caught::Behind), Ok(0));
    }

    #[test]
    fn a_caught_up_empty_partition_holds_the_task_back_at_most_max_task_idle() {
        let idle = Duration::from_millis(200);
        let mut g = group();
        g.push(record("b", 0, 5));
        let t0 = Instant::now();
        assert_eq!(g.choose(t0, Duration::ZERO, |_| Caught::Up), Ok(1), "default 0: no wait");
        let mut g = group();
        g.push(record("b", 0, 5));
        assert_eq!(g.choose(t0, idle, |_| Caught::Up), Err(Idle::Waiting));
        assert_eq!(g.choose(t0 + idle, idle, |_| Caught::Up), Ok(1));
    }

    #[test]
    fn a_record_arriving_in_the_empty_partition_ends_the_wait_and_restarts_its_clock() {
        let mut g = group();
        g.push(record("a", 0, 30));
        let t0 = Instant::now();
        assert_eq!(g.choose(t0, Duration::ZERO, |_| Caught::Unknown), Err(Idle::Waiting));
        g.push(record("b", 0, 10));
        assert_eq!(g.choose(t0, Duration::ZERO, |_| Caught::Unknown), Ok(1), "b's earlier record first");
        g.pop(1);
        let t1 = t0 + UNFETCHED_DATA_WAIT;
        assert_eq!(g.choose(t1, Duration::ZERO, |_| Caught::Unknown), Err(Idle::Waiting), "a new wait for b");
    }

    #[test]
    fn no_clock_runs_while_every_buffer_is_empty() {
        let mut g = group();
        let t0 = Instant::now();
        assert_eq!(g.choose(t0, Duration::ZERO, |_| Caught::Unknown), Err(Idle::Empty));
        g.push(record("a", 0, 1));
        let later = t0 + 10 * UNFETCHED_DATA_WAIT;
        assert_eq!(g.choose(later, Duration::ZERO, |_| Caught::Unknown), Err(Idle::Waiting));
    }

    #[test]
    fn the_bound_says_when_to_pause_and_the_next_offset_is_the_first_unprocessed() {
        let mut g = group();
        for offset in 0..MAX_BUFFERED_RECORDS_PER_PARTITION as i64 - 1 {
            assert_eq!(g.push(record("a", offset, offset)), Some(false));
        }
        let last = MAX_BUFFERED_RECORDS_PER_PARTITION as i64 - 1;
        assert_eq!(g.push(record("a", last, last)), Some(true));
        assert_eq!(g.push(record("elsewhere", 0, 0)), None);
        assert_eq!(g.next_offset("a"), Some(0));
        assert_eq!(g.next_offset("b"), None);
        let (_, left) = g.pop(0).unwrap();
        assert_eq!(left, MAX_BUFFERED_RECORDS_PER_PARTITION - 1);
        assert_eq!(g.next_offset("a"), Some(1));
        g.clear();
        assert_eq!((g.buffered(), g.buffered_of("a"), g.next_offset("a")), (0, 0, None));
    }
}
