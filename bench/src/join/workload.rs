//! The `join` workload's records and what a peer must make of them (`bench/peers/WORKLOAD.md`):
//! keys `k<i>`, values `<ts_us>:<64-byte payload>`, outputs `<ts_us_left>:<ts_us_right>` (or, for
//! the stateless ceiling, the inputs forwarded unchanged). Everything here is pure, so the
//! harness's arithmetic is unit-tested without a broker.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::latency::Tally;

/// Bytes of payload after the timestamp in every input value.
pub const PAYLOAD_BYTES: usize = 64;
/// The characters payloads are made of: ASCII, as the workload requires.
const PAYLOAD_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// At most this many examples of wrong outputs are kept for the report.
pub const EXAMPLES_MAX: usize = 5;

/// Which input topic a record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

/// Microseconds since the Unix epoch: the clock of every `ts_us` and arrival time, so that
/// producer and output reader (one process, one clock) agree.
pub fn now_us() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

/// The key of pair `index`.
pub fn key(index: u64) -> String {
    format!("k{index}")
}

/// The pair index of a key `k<i>`.
pub fn parse_key(key: &[u8]) -> Option<u64> {
    let digits = key.strip_prefix(b"k")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The payload of the `side` record of pair `index`: a deterministic function of both, so the
/// verification can recompute a forwarded value instead of keeping every one sent, and varied
/// (not one constant string) so compression does not make the records unrealistically cheap.
pub fn payload(index: u64, side: Side) -> [u8; PAYLOAD_BYTES] {
    // splitmix64: a fast, well-mixed stream from a 64-bit seed.
    let mut state = index.wrapping_mul(2).wrapping_add(u64::from(side == Side::Right));
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out = [0u8; PAYLOAD_BYTES];
    for chunk in out.chunks_mut(8) {
        let mut bits = next();
        for byte in chunk {
            *byte = PAYLOAD_ALPHABET[(bits % PAYLOAD_ALPHABET.len() as u64) as usize];
            bits /= PAYLOAD_ALPHABET.len() as u64;
        }
    }
    out
}

/// The input value `<ts_us>:<payload>` of the `side` record of pair `index`.
pub fn value(ts_us: u64, index: u64, side: Side) -> Vec<u8> {
    let mut value = format!("{ts_us}:").into_bytes();
    value.extend_from_slice(&payload(index, side));
    value
}

/// A decimal `u64` with no sign, spaces or leading `+`.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A joined output `<ts_us_left>:<ts_us_right>`.
pub fn parse_joined(value: &[u8]) -> Option<(u64, u64)> {
    let colon = value.iter().position(|b| *b == b':')?;
    Some((parse_u64(&value[..colon])?, parse_u64(&value[colon + 1..])?))
}

/// The `<ts_us>` prefix of an input value (forwarded unchanged by the stateless peer).
pub fn parse_forwarded(value: &[u8]) -> Option<u64> {
    let colon = value.iter().position(|b| *b == b':')?;
    parse_u64(&value[..colon])
}

/// What a peer emits per pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// One output per key, `<ts_us_left>:<ts_us_right>`: the join (peers b, c, d).
    Joined,
    /// Both inputs of a key, unchanged: the stateless ceiling (peer a).
    Forwarded,
}

impl Expect {
    /// Outputs per pair.
    pub fn outputs_per_pair(self) -> u64 {
        match self {
            Expect::Joined => 1,
            Expect::Forwarded => 2,
        }
    }

    /// End-to-end latency of an output that arrived at `arrived_us`: from the moment the later
    /// of its inputs was produced (a join cannot emit before both exist) to its arrival. For a
    /// forwarded record that is its own input's timestamp. `None` for an unreadable value.
    pub fn latency_us(self, value: &[u8], arrived_us: u64) -> Option<u64> {
        let produced = match self {
            Expect::Joined => {
                let (left, right) = parse_joined(value)?;
                left.max(right)
            }
            Expect::Forwarded => parse_forwarded(value)?,
        };
        Some(arrived_us.saturating_sub(produced))
    }
}

/// When the two inputs of a pair were produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub ts_left: u64,
    pub ts_right: u64,
}

/// One record read from OUT, and when the reader got it.
#[derive(Clone, Debug)]
pub struct Output {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub arrived_us: u64,
}

/// Whether a peer's outputs are exactly what the inputs call for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Outputs expected (pairs × outputs per pair).
    pub expected: u64,
    /// Outputs read.
    pub received: u64,
    /// Expected outputs that never came.
    pub missing: u64,
    /// Outputs that came more than once (each extra copy counts once).
    pub duplicates: u64,
    /// Outputs of a known key with a value that matches no input of it.
    pub wrong_value: u64,
    /// Outputs whose key is not one the harness produced.
    pub unexpected_key: u64,
    /// A few of the wrong outputs, for the report.
    pub examples: Vec<String>,
}

impl Verification {
    pub fn correct(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.wrong_value == 0 && self.unexpected_key == 0
    }

    /// `yes`, or what is wrong, for the table.
    pub fn describe(&self) -> String {
        if self.correct() {
            return "yes".to_owned();
        }
        let parts: Vec<String> = [
            (self.missing, "missing"),
            (self.duplicates, "duplicate"),
            (self.wrong_value, "wrong value"),
            (self.unexpected_key, "unexpected key"),
        ]
        .into_iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, what)| format!("{count} {what}"))
        .collect();
        format!("NO ({})", parts.join(", "))
    }

    fn example(&mut self, what: &str, output: &Output) {
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(format!(
                "{what}: key {:?} value {:?}",
                String::from_utf8_lossy(&output.key),
                String::from_utf8_lossy(&output.value)
            ));
        }
    }
}

/// Checks `outputs` against the pairs in `sent` (pair `i` has key `k<i>`).
pub fn verify(expect: Expect, sent: &[Sent], outputs: &[Output]) -> Verification {
    let mut check = Verification {
        expected: sent.len() as u64 * expect.outputs_per_pair(),
        received: outputs.len() as u64,
        ..Verification::default()
    };
    // Times each expected output was seen: one slot per pair (joined) or per input (forwarded).
    let slots = expect.outputs_per_pair() as usize;
    let mut seen = vec![0u32; sent.len() * slots];
    for output in outputs {
        let index = parse_key(&output.key).filter(|i| *i < sent.len() as u64);
        let Some(index) = index else {
            check.unexpected_key += 1;
            check.example("unexpected key", output);
            continue;
        };
        let pair = sent[index as usize];
        let slot = match expect {
            Expect::Joined => {
                (parse_joined(&output.value) == Some((pair.ts_left, pair.ts_right))).then_some(0)
            }
            Expect::Forwarded => {
                if output.value == value(pair.ts_left, index, Side::Left) {
                    Some(0)
                } else if output.value == value(pair.ts_right, index, Side::Right) {
                    Some(1)
                } else {
                    None
                }
            }
        };
        let Some(slot) = slot else {
            check.wrong_value += 1;
            check.example("wrong value", output);
            continue;
        };
        let count = &mut seen[index as usize * slots + slot];
        *count += 1;
        if *count > 1 {
            check.duplicates += 1;
            check.example("duplicate", output);
        }
    }
    check.missing = seen.iter().filter(|count| **count == 0).count() as u64;
    check
}

/// The rate at which a backlog of pairs came out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Throughput {
    /// Pairs of the backlog.
    pub pairs: u64,
    /// Outputs counted (pairs × outputs per pair, when all came).
    pub outputs: u64,
    /// Seconds from the first output of the backlog to the last.
    pub window_s: f64,
    /// Pairs per second over the window.
    pub pairs_per_s: f64,
}

/// The throughput over the backlog, pairs `0..pairs`: `pairs / (last arrival − first arrival)`,
/// counting pairs, not outputs, so a peer with two outputs per pair is compared fairly. `None`
/// when fewer than two outputs of the backlog came.
pub fn throughput(pairs: u64, outputs: &[Output]) -> Option<Throughput> {
    let arrivals =
        outputs.iter().filter(|o| parse_key(&o.key).is_some_and(|i| i < pairs)).map(|o| o.arrived_us);
    let (count, first, last) =
        arrivals.fold((0u64, u64::MAX, 0u64), |(n, first, last), at| (n + 1, first.min(at), last.max(at)));
    if count < 2 || last <= first {
        return None;
    }
    let window_s = (last - first) as f64 / 1e6;
    Some(Throughput { pairs, outputs: count, window_s, pairs_per_s: pairs as f64 / window_s })
}

/// The end-to-end latencies of the outputs of pairs `from..` (the latency phase's keys).
pub fn latencies(expect: Expect, from: u64, outputs: &[Output]) -> Tally {
    let mut tally = Tally::new();
    for output in outputs.iter().filter(|o| parse_key(&o.key).is_some_and(|i| i >= from)) {
        match expect.latency_us(&output.value, output.arrived_us) {
            Some(us) => tally.success(std::time::Duration::from_micros(us)),
            None => tally.error("unreadable value", &String::from_utf8_lossy(&output.value)),
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(key: &str, value: &[u8], arrived_us: u64) -> Output {
        Output { key: key.as_bytes().to_vec(), value: value.to_vec(), arrived_us }
    }

    #[test]
    fn keys_and_values_round_trip() {
        assert_eq!(key(42), "k42");
        assert_eq!(parse_key(b"k42"), Some(42));
        for bad in [&b"k"[..], b"42", b"k-1", b"k4 2", b"x42"] {
            assert_eq!(parse_key(bad), None, "{bad:?}");
        }
        let v = value(1_700_000_000_000_000, 7, Side::Left);
        assert_eq!(v.len(), "1700000000000000:".len() + PAYLOAD_BYTES);
        assert!(v.is_ascii());
        assert_eq!(parse_forwarded(&v), Some(1_700_000_000_000_000));
        assert_ne!(payload(7, Side::Left), payload(7, Side::Right));
        assert_ne!(payload(7, Side::Left), payload(8, Side::Left));
        assert_eq!(payload(7, Side::Left), payload(7, Side::Left));
        assert_eq!(parse_joined(b"100:300"), Some((100, 300)));
        for bad in [&b"100"[..], b"100:", b":1", b"1:2:3", b"a:1", b"+1:2"] {
            assert_eq!(parse_joined(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn latency_is_from_the_later_input() {
        assert_eq!(Expect::Joined.latency_us(b"100:300", 1_300), Some(1_000));
        assert_eq!(Expect::Joined.latency_us(b"300:100", 1_300), Some(1_000));
        assert_eq!(Expect::Forwarded.latency_us(&value(250, 1, Side::Right), 1_000), Some(750));
        assert_eq!(Expect::Joined.latency_us(b"garbage", 1), None);
        assert_eq!(Expect::Joined.latency_us(b"500:500", 400), Some(0), "clock skew saturates");
        let outputs = [output("k0", b"1:2", 10), output("k5", b"1000:1500", 3_500), output("k6", b"x", 9)];
        let tally = latencies(Expect::Joined, 5, &outputs);
        assert_eq!(tally.successes(), 1);
        assert_eq!(tally.error_count(), 1);
        assert_eq!(tally.latency_us.max(), 2_000);
    }

    #[test]
    fn throughput_counts_pairs_over_the_backlog_window() {
        let outputs = [
            output("k0", b"", 1_000_000),
            output("k1", b"", 1_500_000),
            output("k2", b"", 3_000_000),
            output("k9", b"", 9_000_000), // a latency-phase key: not in the window
        ];
        let t = throughput(3, &outputs).unwrap();
        assert_eq!((t.pairs, t.outputs), (3, 3));
        assert!((t.window_s - 2.0).abs() < 1e-9);
        assert!((t.pairs_per_s - 1.5).abs() < 1e-9);
        assert_eq!(throughput(3, &outputs[..1]), None);
    }

    #[test]
    fn verification_finds_every_kind_of_fault() {
        let sent = [
            Sent { ts_left: 1, ts_right: 2 },
            Sent { ts_left: 3, ts_right: 4 },
            Sent { ts_left: 5, ts_right: 6 },
        ];
        let good = [output("k0", b"1:2", 0), output("k1", b"3:4", 0), output("k2", b"5:6", 0)];
        let check = verify(Expect::Joined, &sent, &good);
        assert!(check.correct(), "{check:?}");
        assert_eq!(check.describe(), "yes");
        let bad = [
            output("k0", b"1:2", 0),
            output("k0", b"1:2", 0),
            output("k1", b"4:3", 0),
            output("k7", b"1:2", 0),
            output("zz", b"1:2", 0),
        ];
        let check = verify(Expect::Joined, &sent, &bad);
        assert_eq!((check.missing, check.duplicates, check.wrong_value, check.unexpected_key), (2, 1, 1, 2));
        assert_eq!(check.describe(), "NO (2 missing, 1 duplicate, 1 wrong value, 2 unexpected key)");
        assert_eq!(check.examples.len(), 4, "one per wrong output, at most EXAMPLES_MAX");
    }

    #[test]
    fn forwarded_outputs_are_the_inputs_unchanged() {
        let sent = [Sent { ts_left: 10, ts_right: 20 }];
        let left = value(10, 0, Side::Left);
        let right = value(20, 0, Side::Right);
        let check = verify(Expect::Forwarded, &sent, &[output("k0", &right, 0), output("k0", &left, 0)]);
        assert!(check.correct(), "{check:?}");
        assert_eq!(check.expected, 2);
        let check = verify(Expect::Forwarded, &sent, &[output("k0", &left, 0), output("k0", &left, 0)]);
        assert_eq!((check.missing, check.duplicates), (1, 1));
        let check = verify(Expect::Forwarded, &sent, &[output("k0", &value(10, 0, Side::Right), 0)]);
        assert_eq!((check.missing, check.wrong_value), (2, 1));
    }
}
