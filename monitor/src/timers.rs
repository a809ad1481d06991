//! The durable timers' lag behind their due time, seen from `payments.timers`.
//!
//! The timers app keeps its due index in a RocksDB store no one else can read, but every timer
//! passes the topic twice: `Scheduled` (by the saga, with its due time) and `Fired` (by the timers
//! app, with the time it fired). A [`TimerWatch`] follows the topic from the moment it starts and
//! keeps the scheduled timers not yet fired: the oldest one past its due time is how far behind
//! the timers are, whether the app is slow, stopped or stuck; each firing's delay after its due
//! time goes into a histogram.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use paystream_schemas::events::{topics, TimerChange, TimerEvent};
use paystream_schemas::EventCodec;
use paystream_stack::kafka;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::lag::{READER_GROUP, REQUEST_TIMEOUT};

/// How long one catch-up may read before the next collection goes on from there.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read waits for the next record before it counts the topic as caught up.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Scheduled timers kept at most; past it the newest are not tracked (the gauge then
/// undercounts, and says so in the log), so that a flood cannot exhaust memory.
pub const TRACKED_MAX: usize = 1_000_000;

/// What a catch-up saw.
#[derive(Debug, Default)]
pub struct Caught {
    /// Delays of the timers fired meanwhile, in seconds after their due time (negative: early).
    pub fire_delays_s: Vec<f64>,
    /// Records that did not decode (another contract, a registry away): not counted.
    pub undecoded: u64,
}

/// Follows `payments.timers`.
pub struct TimerWatch {
    consumer: StreamConsumer,
    codec: EventCodec,
    /// Scheduled, not yet fired: timer id → due time (ms since the epoch).
    pending: HashMap<Uuid, i64>,
}

impl TimerWatch {
    /// A watch of `topic` (normally [`topics::PAYMENTS_TIMERS`]) from its current end.
    pub fn new(bootstrap: &str, registry_url: &str, topic: &str) -> Result<Self, KafkaError> {
        let mut config = kafka::base_config(bootstrap);
        config
            .set("group.id", READER_GROUP)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let consumer: StreamConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        let mut assignment = TopicPartitionList::new();
        // The end as of now, resolved here: records produced after `new` returns are seen.
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (_, end) = consumer.fetch_watermarks(topic, partition.id(), REQUEST_TIMEOUT)?;
            assignment.add_partition_offset(topic, partition.id(), Offset::Offset(end))?;
        }
        consumer.assign(&assignment)?;
        let codec = EventCodec::new(registry_url).map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        Ok(Self { consumer, codec, pending: HashMap::new() })
    }

    /// The default topic's watch.
    pub fn payments(bootstrap: &str, registry_url: &str) -> Result<Self, KafkaError> {
        Self::new(bootstrap, registry_url, topics::PAYMENTS_TIMERS)
    }

    /// Reads what was added since the last call, for at most [`CATCH_UP_TIMEOUT`].
    pub async fn catch_up(&mut self) -> Result<Caught, KafkaError> {
        let mut caught = Caught::default();
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        while Instant::now() < deadline {
            let Ok(received) = tokio::time::timeout(IDLE_WAIT, self.consumer.recv()).await else { break };
            let message = received?;
            let Some(payload) = message.payload() else { continue };
            let timer: TimerEvent = match self.codec.decode(payload).await {
                Ok(timer) => timer,
                Err(error) => {
                    tracing::debug!(%error, "a timer record did not decode");
                    caught.undecoded += 1;
                    continue;
                }
            };
            let due_ms = timer.due_at.timestamp_millis();
            match timer.change {
                TimerChange::Scheduled { .. } => {
                    if self.pending.len() < TRACKED_MAX {
                        self.pending.insert(timer.timer_id, due_ms);
                    } else {
                        tracing::warn!(tracked = TRACKED_MAX, "too many pending timers; not tracking more");
                    }
                }
                TimerChange::Fired { fired_at } => {
                    self.pending.remove(&timer.timer_id);
                    // Milliseconds to seconds: lossless for any realistic delay.
                    #[allow(clippy::cast_precision_loss)]
                    caught.fire_delays_s.push((fired_at.timestamp_millis() - due_ms) as f64 / 1000.0);
                }
            }
        }
        Ok(caught)
    }

    /// Timers scheduled (since the watch started), due at `now_ms` or before, not fired: how many,
    /// and how far the oldest is behind its due time in seconds (0 when none).
    pub fn overdue(&self, now_ms: i64) -> (usize, f64) {
        let overdue = self.pending.values().filter(|due| **due <= now_ms);
        let (count, oldest) = overdue.fold((0, now_ms), |(n, oldest), due| (n + 1, oldest.min(*due)));
        // Milliseconds to seconds: lossless for any realistic lag.
        #[allow(clippy::cast_precision_loss)]
        let behind = (now_ms - oldest) as f64 / 1000.0;
        (count, behind)
    }

    /// Scheduled timers not yet fired, due or not.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}
