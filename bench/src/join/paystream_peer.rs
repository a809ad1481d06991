//! Peer (b): the `join` workload on paystream's own `topology/` runtime, exactly-once v2, with a
//! RocksDB store and its changelog. Same contract as every peer: `bench/peers/WORKLOAD.md`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use paystream_topology::{
    BoxError, ErrorPolicy, ProcessError, Processor, ProcessorContext, RawRecord, Record, StoreSpec, Streams,
    StreamsConfig, Topology,
};

use paystream_topology::topology::Serialized;

use super::env::PeerEnv;

/// The store holding the first side seen of each key.
pub const STORE: &str = "pending";

/// Which input a record came from is in its value's first byte inside the store.
const LEFT_TAG: u8 = b'L';
const RIGHT_TAG: u8 = b'R';

/// Keys and values stay bytes: the workload's parsing is the timestamp prefix only.
type Bytes = Vec<u8>;

fn identity(raw: &RawRecord) -> Result<(Bytes, Bytes), BoxError> {
    Ok((raw.key.clone().unwrap_or_default(), raw.value.clone().unwrap_or_default()))
}

fn to_kafka(record: &Record<Bytes, Bytes>) -> Result<Serialized, BoxError> {
    Ok((Some(record.key.clone()), Some(record.value.clone())))
}

/// The `<ts_us>` prefix of a workload value.
fn timestamp_prefix(value: &[u8]) -> &[u8] {
    value.split(|b| *b == b':').next().unwrap_or_default()
}

/// Joins the LEFT and RIGHT record of a key: stores the first, emits `<ts_left>:<ts_right>` and
/// deletes it on the second.
struct Join {
    left_topic: String,
}

impl Processor<Bytes, Bytes> for Join {
    fn process(
        &mut self,
        record: Record<Bytes, Bytes>,
        ctx: &mut ProcessorContext<'_, Bytes, Bytes>,
    ) -> Result<(), ProcessError> {
        let from_left = ctx.record_metadata().is_some_and(|m| m.topic == self.left_topic);
        let (tag, other) = if from_left { (LEFT_TAG, RIGHT_TAG) } else { (RIGHT_TAG, LEFT_TAG) };
        let store = ctx.store(STORE)?;
        match store.get(&record.key)? {
            Some(stored) if stored.first() == Some(&other) => {
                store.delete(&record.key)?;
                let theirs = timestamp_prefix(&stored[1..]);
                let ours = timestamp_prefix(&record.value);
                let (left, right) = if from_left { (ours, theirs) } else { (theirs, ours) };
                let mut joined = Vec::with_capacity(left.len() + right.len() + 1);
                joined.extend_from_slice(left);
                joined.push(b':');
                joined.extend_from_slice(right);
                ctx.forward(record.with_value(joined));
            }
            _ => {
                let mut tagged = Vec::with_capacity(record.value.len() + 1);
                tagged.push(tag);
                tagged.extend_from_slice(&record.value);
                store.put(&record.key, &tagged)?;
            }
        }
        Ok(())
    }
}

/// The workload's topology.
pub fn topology(left: &str, right: &str, out: &str) -> Topology<Bytes, Bytes> {
    let left_topic = left.to_string();
    let mut builder = Topology::builder();
    builder
        .add_source("left", &[left], identity)
        .add_source("right", &[right], identity)
        .add_processor("join", move || Join { left_topic: left_topic.clone() }, &["left", "right"])
        .add_state_store(StoreSpec::persistent(STORE), &["join"])
        .add_sink("out", out, to_kafka, &["join"]);
    builder.build().expect("the join topology is valid")
}

/// Runs the peer until SIGTERM (handled by the caller setting the flag) or an error.
pub fn run(env: &PeerEnv, stop: &std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    let mut config = StreamsConfig::new(&env.app_id, &env.bootstrap, &PathBuf::from(&env.state_dir));
    config.commit_interval = Duration::from_millis(env.commit_interval_ms);
    config.error_policy = ErrorPolicy::Fail;
    let streams = Streams::start(topology(&env.left, &env.right, &env.out), config)?;
    eprintln!("paystream peer RUNNING");
    while !streams.is_finished() && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    streams.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_topology::TopologyTestDriver;

    #[test]
    fn joins_each_key_once_in_either_order() {
        let mut driver =
            TopologyTestDriver::new(topology("l", "r", "o"), "bench", ErrorPolicy::Fail, 0).unwrap();
        driver.pipe("l", Some(b"k1"), Some(b"100:xx"), 1).unwrap();
        driver.pipe("r", Some(b"k2"), Some(b"200:yy"), 1).unwrap();
        driver.pipe("r", Some(b"k1"), Some(b"300:zz"), 1).unwrap();
        driver.pipe("l", Some(b"k2"), Some(b"400:ww"), 1).unwrap();
        let out: Vec<(Vec<u8>, Vec<u8>)> =
            driver.read_all("o").into_iter().map(|r| (r.key.unwrap(), r.value.unwrap())).collect();
        assert_eq!(out, vec![(b"k1".to_vec(), b"100:300".to_vec()), (b"k2".to_vec(), b"400:200".to_vec())]);
        assert_eq!(driver.store(STORE).unwrap().approximate_len().unwrap(), 0, "joined keys are deleted");
    }
}
