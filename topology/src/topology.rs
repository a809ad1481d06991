//! `Topology`: named sources, processors and sinks wired by name, with state stores attached to
//! processors. Built once, validated at build time, shared by every task.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use crate::processor::{BoxError, Processor};
use crate::record::{RawRecord, Record};

/// Turns a raw Kafka record into a typed key and value. An error makes the record poison, unless
/// it is marked [`crate::processor::Retriable`] (a dependency away): then the record is retried.
pub type Deserializer<K, V> = Arc<dyn Fn(&RawRecord) -> Result<(K, V), BoxError> + Send + Sync>;

/// Key and value bytes of a record on its way to Kafka (`None`: null key / tombstone).
pub type Serialized = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Turns a typed record into key and value bytes. An error makes the input record poison, unless
/// it is marked [`crate::processor::Retriable`]: then the input record is retried.
pub type Serializer<K, V> = Arc<dyn Fn(&Record<K, V>) -> Result<Serialized, BoxError> + Send + Sync>;

/// Makes one processor instance per task.
pub type ProcessorSupplier<K, V> = Arc<dyn Fn() -> Box<dyn Processor<K, V>> + Send + Sync>;

/// Why a topology is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// Two nodes share a name.
    #[error("duplicate node name {0:?}")]
    DuplicateNode(String),
    /// Two stores share a name.
    #[error("duplicate store name {0:?}")]
    DuplicateStore(String),
    /// A node names a parent that was not added before it.
    #[error("node {node:?} names unknown parent {parent:?} (parents must be added first)")]
    UnknownParent {
        /// The node.
        node: String,
        /// The parent it names.
        parent: String,
    },
    /// A sink cannot have children.
    #[error("node {node:?} names sink {parent:?} as its parent; sinks have no children")]
    SinkAsParent {
        /// The node.
        node: String,
        /// The sink.
        parent: String,
    },
    /// Processors and sinks need at least one parent.
    #[error("node {0:?} has no parent")]
    NoParent(String),
    /// Two sources read one topic.
    #[error("topic {topic:?} is read by sources {first:?} and {second:?}")]
    TopicReadTwice {
        /// The topic.
        topic: String,
        /// One source.
        first: String,
        /// The other.
        second: String,
    },
    /// A topology needs a source.
    #[error("the topology has no source")]
    NoSource,
    /// A source needs at least one topic.
    #[error("source {0:?} reads no topic")]
    SourceWithoutTopics(String),
    /// A store nobody owns would never be written nor restored.
    #[error("store {0:?} is attached to no processor")]
    StoreWithoutOwner(String),
    /// A store attached to a node that is not a processor.
    #[error("store {store:?} is attached to {node:?}, which is not a processor")]
    StoreOnUnknownProcessor {
        /// The store.
        store: String,
        /// The node named.
        node: String,
    },
    /// Store names become topic names (`<application.id>-<store>-changelog`) and directories.
    #[error("store name {0:?} must be non-empty ASCII letters, digits, '.', '_' or '-'")]
    BadStoreName(String),
}

/// What a node does.
pub(crate) enum NodeKind<K, V> {
    /// Reads topics and deserializes.
    Source {
        /// Topics read.
        topics: Vec<String>,
        /// Bytes → typed record.
        deserializer: Deserializer<K, V>,
    },
    /// Runs user code.
    Processor {
        /// One instance per task.
        supplier: ProcessorSupplier<K, V>,
    },
    /// Serializes and writes to a topic.
    Sink {
        /// Destination topic.
        topic: String,
        /// Typed record → bytes.
        serializer: Serializer<K, V>,
    },
}

/// A node of the graph.
pub(crate) struct Node<K, V> {
    /// Unique name.
    pub name: String,
    /// Source, processor or sink.
    pub kind: NodeKind<K, V>,
    /// Parent names, as declared.
    pub parents: Vec<String>,
    /// Child node indices, filled in at build.
    pub children: Vec<usize>,
    /// Names of the stores attached (processors only).
    pub stores: Vec<String>,
}

/// The graph's nodes in declaration order (parents before children).
pub(crate) struct Nodes<K, V>(Vec<Node<K, V>>);

impl<K, V> Nodes<K, V> {
    /// Node `index`; indices come from the topology itself.
    pub fn get(&self, index: usize) -> &Node<K, V> {
        &self.0[index]
    }

    /// All nodes with their indices.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Node<K, V>)> {
        self.0.iter().enumerate()
    }
}

/// How a store keeps its committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// RocksDB under the state directory; restored from its checkpoint onwards.
    Persistent,
    /// A `BTreeMap`; rebuilt from the whole changelog whenever its task starts.
    InMemory,
}

/// A declared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    /// Name; also part of the changelog topic and the directory.
    pub name: String,
    /// Backend.
    pub kind: StoreKind,
    /// Whether it has a changelog. Without one, a moved or crashed task loses the store: only
    /// for caches that can be rebuilt from inputs.
    pub logged: bool,
}

impl StoreSpec {
    /// A RocksDB store with a changelog: the default for anything that matters.
    pub fn persistent(name: &str) -> Self {
        Self { name: name.to_string(), kind: StoreKind::Persistent, logged: true }
    }

    /// An in-memory store with a changelog.
    pub fn in_memory(name: &str) -> Self {
        Self { name: name.to_string(), kind: StoreKind::InMemory, logged: true }
    }

    /// The same store without a changelog.
    pub fn without_logging(mut self) -> Self {
        self.logged = false;
        self
    }

    /// The changelog topic of this store in application `application_id`.
    pub fn changelog_topic(&self, application_id: &str) -> String {
        changelog_topic(application_id, &self.name)
    }
}

/// Kafka Streams' changelog topic name: `<application.id>-<store>-changelog`.
pub fn changelog_topic(application_id: &str, store: &str) -> String {
    format!("{application_id}-{store}-changelog")
}

/// Builds a [`Topology`]. Methods record what is added; [`TopologyBuilder::build`] validates it all.
pub struct TopologyBuilder<K, V> {
    /// Nodes in the order added.
    nodes: Vec<Node<K, V>>,
    /// Stores with the processors they are attached to.
    stores: Vec<(StoreSpec, Vec<String>)>,
}

impl<K, V> Default for TopologyBuilder<K, V> {
    fn default() -> Self {
        Self { nodes: Vec::new(), stores: Vec::new() }
    }
}

impl<K, V> TopologyBuilder<K, V> {
    /// A source node `name` reading `topics` through `deserializer`.
    ///
    /// The deserializer's error decides the record's fate. A plain error means the bytes are bad:
    /// the record is poison (dead-lettered under [`crate::ErrorPolicy::DeadLetter`]). An error
    /// wrapped in [`crate::Retriable`] (`Err(Retriable::boxed(e))`, e.g. a schema registry that
    /// cannot be reached, answers 5xx or 429, or times out) means the record may be fine: it is
    /// never dead-lettered; the transaction aborts, the consumer rewinds, and the same record is
    /// read again after a capped back-off. The same contract holds for [`Self::add_sink`]'s
    /// serializer.
    pub fn add_source(
        &mut self,
        name: &str,
        topics: &[&str],
        deserializer: impl Fn(&RawRecord) -> Result<(K, V), BoxError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.push(
            name,
            NodeKind::Source {
                topics: topics.iter().map(|t| t.to_string()).collect(),
                deserializer: Arc::new(deserializer),
            },
            &[],
        )
    }

    /// A processor node `name`, one instance per task from `supplier`, fed by `parents`.
    pub fn add_processor<P, F>(&mut self, name: &str, supplier: F, parents: &[&str]) -> &mut Self
    where
        P: Processor<K, V> + 'static,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let supplier: ProcessorSupplier<K, V> = Arc::new(move || Box::new(supplier()));
        self.push(name, NodeKind::Processor { supplier }, parents)
    }

    /// A sink node `name` writing what `parents` forward to `topic` through `serializer`. Its
    /// errors are read as [`Self::add_source`] says: [`crate::Retriable`] retries, anything else
    /// makes the input record poison.
    pub fn add_sink(
        &mut self,
        name: &str,
        topic: &str,
        serializer: impl Fn(&Record<K, V>) -> Result<Serialized, BoxError> + Send + Sync + 'static,
        parents: &[&str],
    ) -> &mut Self {
        self.push(
            name,
            NodeKind::Sink { topic: topic.to_string(), serializer: Arc::new(serializer) },
            parents,
        )
    }

    /// A store attached to `processors` (usually one).
    pub fn add_state_store(&mut self, store: StoreSpec, processors: &[&str]) -> &mut Self {
        self.stores.push((store, processors.iter().map(|p| p.to_string()).collect()));
        self
    }

    fn push(&mut self, name: &str, kind: NodeKind<K, V>, parents: &[&str]) -> &mut Self {
        self.nodes.push(Node {
            name: name.to_string(),
            kind,
            parents: parents.iter().map(|p| p.to_string()).collect(),
            children: Vec::new(),
            stores: Vec::new(),
        });
        self
    }

    /// Validates and freezes the topology.
    pub fn build(self) -> Result<Topology<K, V>, TopologyError> {
        let TopologyBuilder { mut nodes, stores } = self;
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut topic_owner: HashMap<String, String> = HashMap::new();
        for i in 0..nodes.len() {
            let name = nodes[i].name.clone();
            if index.insert(name.clone(), i).is_some() {
                return Err(TopologyError::DuplicateNode(name));
            }
            match &nodes[i].kind {
                NodeKind::Source { topics, .. } => {
                    if topics.is_empty() {
                        return Err(TopologyError::SourceWithoutTopics(name));
                    }
                    for topic in topics {
                        if let Some(first) = topic_owner.insert(topic.clone(), name.clone()) {
                            return Err(TopologyError::TopicReadTwice {
                                topic: topic.clone(),
                                first,
                                second: name,
                            });
                        }
                    }
                }
                _ if nodes[i].parents.is_empty() => return Err(TopologyError::NoParent(name)),
                _ => {}
            }
            for parent in nodes[i].parents.clone() {
                // Parents must exist already: that alone keeps the graph acyclic.
                let Some(&p) = index.get(&parent).filter(|&&p| p < i) else {
                    return Err(TopologyError::UnknownParent { node: name, parent });
                };
                if matches!(nodes[p].kind, NodeKind::Sink { .. }) {
                    return Err(TopologyError::SinkAsParent { node: name, parent });
                }
                nodes[p].children.push(i);
            }
        }
        if topic_owner.is_empty() {
            return Err(TopologyError::NoSource);
        }
        let mut store_names = HashSet::new();
        for (spec, owners) in &stores {
            let valid = !spec.name.is_empty()
                && spec.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(TopologyError::BadStoreName(spec.name.clone()));
            }
            if !store_names.insert(spec.name.clone()) {
                return Err(TopologyError::DuplicateStore(spec.name.clone()));
            }
            if owners.is_empty() {
                return Err(TopologyError::StoreWithoutOwner(spec.name.clone()));
            }
            for owner in owners {
                match index.get(owner) {
                    Some(&i) if matches!(nodes[i].kind, NodeKind::Processor { .. }) => {
                        nodes[i].stores.push(spec.name.clone())
                    }
                    _ => {
                        return Err(TopologyError::StoreOnUnknownProcessor {
                            store: spec.name.clone(),
                            node: owner.clone(),
                        })
                    }
                }
            }
        }
        Ok(Topology {
            inner: Arc::new(TopologyInner {
                nodes: Nodes(nodes),
                stores: stores.into_iter().map(|(spec, _)| spec).collect(),
                source_by_topic: topic_owner
                    .into_iter()
                    .map(|(topic, source)| (topic, index[&source]))
                    .collect(),
            }),
        })
    }
}

/// The frozen graph, shared by every task.
pub(crate) struct TopologyInner<K, V> {
    /// Nodes, parents first.
    pub nodes: Nodes<K, V>,
    /// Declared stores.
    pub stores: Vec<StoreSpec>,
    /// Topic → source node.
    pub source_by_topic: HashMap<String, usize>,
}

/// A validated processing graph. Cheap to clone.
pub struct Topology<K, V> {
    pub(crate) inner: Arc<TopologyInner<K, V>>,
}

impl<K, V> Clone for Topology<K, V> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<K, V> Topology<K, V> {
    /// Starts a builder.
    pub fn builder() -> TopologyBuilder<K, V> {
        TopologyBuilder::default()
    }

    /// Every topic the sources read, sorted.
    pub fn source_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.inner.source_by_topic.keys().cloned().collect();
        topics.sort();
        topics
    }

    /// Every topic the sinks write, sorted and deduplicated.
    pub fn sink_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .inner
            .nodes
            .iter()
            .filter_map(|(_, n)| match &n.kind {
                NodeKind::Sink { topic, .. } => Some(topic.clone()),
                _ => None,
            })
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// The declared stores.
    pub fn stores(&self) -> &[StoreSpec] {
        &self.inner.stores
    }

    /// A text description of the graph, in the spirit of Kafka Streams' `describe()`.
    pub fn describe(&self) -> String {
        let nodes = &self.inner.nodes;
        let mut out = String::from("Topology\n");
        for (_, node) in nodes.iter() {
            let children: Vec<&str> = node.children.iter().map(|c| nodes.get(*c).name.as_str()).collect();
            let _ = match &node.kind {
                NodeKind::Source { topics, .. } => {
                    writeln!(out, "  Source: {} (topics: [{}])", node.name, topics.join(", "))
                }
                NodeKind::Processor { .. } => {
                    writeln!(out, "  Processor: {} (stores: [{}])", node.name, node.stores.join(", "))
                }
                NodeKind::Sink { topic, .. } => writeln!(out, "  Sink: {} (topic: {})", node.name, topic),
            };
            if !children.is_empty() {
                let _ = writeln!(out, "    --> {}", children.join(", "));
            }
            if !node.parents.is_empty() {
                let _ = writeln!(out, "    <-- {}", node.parents.join(", "));
            }
        }
        for store in &self.inner.stores {
            let _ = writeln!(out, "  Store: {} ({:?}, changelog: {})", store.name, store.kind, store.logged);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::{ProcessError, ProcessorContext};

    struct Noop;
    impl Processor<String, String> for Noop {
        fn process(
            &mut self,
            _: Record<String, String>,
            _: &mut ProcessorContext<'_, String, String>,
        ) -> Result<(), ProcessError> {
            Ok(())
        }
    }

    fn de(_: &RawRecord) -> Result<(String, String), BoxError> {
        Ok((String::new(), String::new()))
    }

    fn ser(_: &Record<String, String>) -> Result<Serialized, BoxError> {
        Ok((None, None))
    }

    #[test]
    fn a_valid_topology_describes_itself() {
        let mut b = Topology::<String, String>::builder();
        b.add_source("in", &["a", "b"], de)
            .add_processor("p", || Noop, &["in"])
            .add_sink("out", "c", ser, &["p"])
            .add_state_store(StoreSpec::persistent("s"), &["p"]);
        let t = b.build().unwrap();
        assert_eq!(t.source_topics(), vec!["a", "b"]);
        assert_eq!(t.sink_topics(), vec!["c"]);
        let d = t.describe();
        assert!(
            d.contains("Source: in (topics: [a, b])")
                && d.contains("--> p")
                && d.contains("Processor: p (stores: [s])"),
            "{d}"
        );
        assert_eq!(t.stores()[0].changelog_topic("app"), "app-s-changelog");
    }

    #[test]
    fn invalid_topologies_name_their_fault() {
        let build = |f: &dyn Fn(&mut TopologyBuilder<String, String>)| {
            let mut b = Topology::builder();
            f(&mut b);
            b.build().err()
        };
        assert_eq!(build(&|_| {}), Some(TopologyError::NoSource));
        assert_eq!(
            build(&|b| {
                b.add_source("x", &["a"], de).add_source("x", &["b"], de);
            }),
            Some(TopologyError::DuplicateNode("x".into()))
        );
        assert_eq!(
            build(&|b| {
                b.add_source("in", &["a"], de).add_processor("p", || Noop, &["nope"]);
            }),
            Some(TopologyError::UnknownParent { node: "p".into(), parent: "nope".into() })
        );
        assert_eq!(
            build(&|b| {
                b.add_source("in", &["a"], de).add_sink("s", "t", ser, &["in"]).add_processor(
                    "p",
                    || Noop,
                    &["s"],
                );
            }),
            Some(TopologyError::SinkAsParent { node: "p".into(), parent: "s".into() })
        );
        assert_eq!(
            build(&|b| {
                b.add_source("in", &["a"], de).add_processor("p", || Noop, &[]);
            }),
            Some(TopologyError::NoParent("p".into()))
        );
        assert!(matches!(
            build(&|b| {
                b.add_source("x", &["a"], de).add_source("y", &["a"], de);
            }),
            Some(TopologyError::TopicReadTwice { .. })
        ));
        assert_eq!(
            build(&|b| {
                b.add_source("in", &["a"], de)
                    .add_processor("p", || Noop, &["in"])
                    .add_state_store(StoreSpec::persistent("s"), &[]);
            }),
            Some(TopologyError::StoreWithoutOwner("s".into()))
        );
        assert_eq!(
            build(&|b| {
                b.add_source("in", &["a"], de).add_state_store(StoreSpec::persistent("s"), &["in"]);
            }),
            Some(TopologyError::StoreOnUnknownProcessor { store: "s".into(), node: "in".into() })
        );
        assert_eq!(
            build(&|b| {
                b.add_source("in", &["a"], de)
                    .add_processor("p", || Noop, &["in"])
                    .add_state_store(StoreSpec::persistent("a/b"), &["p"]);
            }),
            Some(TopologyError::BadStoreName("a/b".into()))
        );
    }
}
