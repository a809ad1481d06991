//! `paystream-bench join`: one stateful workload (a keyed join of two input topics through a
//! store, one output per key; `bench/peers/WORKLOAD.md`) run on the same local Kafka, in one run,
//! by four implementations (issue 4):
//!
//! | peer | what | where |
//! |---|---|---|
//! | (a) `raw` | rdkafka consume → produce in transactions, no state: the ceiling | [`raw_peer`] |
//! | (b) `paystream` | this repository's `topology/` runtime, exactly-once v2 | [`paystream_peer`] |
//! | (c) `kafka-streams` | Apache Kafka Streams (Java) | `bench/peers/kafka-streams/` |
//! | (d) `quix` | Quix Streams (Python) | `bench/peers/quix/` |
//!
//! Every peer is a child process of the harness, started with the same environment contract
//! ([`env`]) and stopped with SIGTERM, so that peak RSS is measured the same way for all; (a) and
//! (b) are this binary's hidden `join-peer` subcommand ([`peer`]).
//!
//! # Layout
//! - [`harness`]: the run: topics, backlog, peer child, output reader, latency phase, clean-up.
//! - [`workload`]: records, outputs, verification, throughput and latency arithmetic (pure).
//! - [`report`]: the table, the targets and the result files.
//! - [`env`], [`peer`], [`raw_peer`], [`paystream_peer`]: the Rust peers.

pub mod env;
pub mod harness;
pub mod paystream_peer;
pub mod peer;
pub mod raw_peer;
pub mod report;
pub mod workload;

use serde::Serialize;

use workload::Expect;

/// The four implementations, in the order the issue names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// (a) raw rdkafka, no state: the ceiling.
    Raw,
    /// (b) paystream's topology runtime.
    Paystream,
    /// (c) Apache Kafka Streams.
    KafkaStreams,
    /// (d) Quix Streams.
    Quix,
}

impl PeerKind {
    pub const ALL: [PeerKind; 4] =
        [PeerKind::Raw, PeerKind::Paystream, PeerKind::KafkaStreams, PeerKind::Quix];

    /// The name on the command line, in topic names and application ids.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Raw => "raw",
            PeerKind::Paystream => "paystream",
            PeerKind::KafkaStreams => "kafka-streams",
            PeerKind::Quix => "quix",
        }
    }

    /// The name in the table.
    pub fn label(self) -> &'static str {
        match self {
            PeerKind::Raw => "(a) raw rdkafka, no state",
            PeerKind::Paystream => "(b) paystream topology",
            PeerKind::KafkaStreams => "(c) Kafka Streams",
            PeerKind::Quix => "(d) Quix Streams",
        }
    }

    /// What it emits per pair: the ceiling forwards both inputs, the others join them.
    pub fn expect(self) -> Expect {
        match self {
            PeerKind::Raw => Expect::Forwarded,
            _ => Expect::Joined,
        }
    }
}
