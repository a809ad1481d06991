package dev.paystream.bench;

import java.time.Duration;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.StoreBuilder;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams peer of {@code paystream-bench join}; the workload is specified in
 * bench/peers/WORKLOAD.md. LEFT and RIGHT feed one processor that keeps the first side of each
 * key in the persistent, changelog-backed store {@code pending} and, when the other side
 * arrives, deletes it and emits {@code <ts_us_left>:<ts_us_right>} to OUT.
 */
public final class JoinApp {
    static final String STORE = "pending";
    static final String SOURCE_LEFT = "left-source";
    static final String SOURCE_RIGHT = "right-source";
    static final String PROCESSOR = "join";
    static final String SINK = "out-sink";

    private JoinApp() {}

    public static void main(String[] args) throws InterruptedException {
        String bootstrap = env("BENCH_BOOTSTRAP", "127.0.0.1:9092");
        String appId = required("BENCH_APP_ID");
        String left = required("BENCH_LEFT");
        String right = required("BENCH_RIGHT");
        String out = required("BENCH_OUT");
        String stateDir = required("BENCH_STATE_DIR");
        String commitIntervalMs = env("BENCH_COMMIT_INTERVAL_MS", "100");

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(commitIntervalMs));
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        // Internal topics (the `pending` changelog): a single-broker cluster.
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        // No global stores here; set only to silence Kafka 4.x's startup warning about it.
        props.put("processing.exception.handler.global.enabled", true);
        // exactly_once_v2 already makes Streams' consumers read_committed; stated for clarity.
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.ISOLATION_LEVEL_CONFIG), "read_committed");

        Topology topology = topology(left, right, out);
        KafkaStreams streams = new KafkaStreams(topology, props);

        CountDownLatch done = new CountDownLatch(1);
        AtomicBoolean announced = new AtomicBoolean(false);
        AtomicBoolean failed = new AtomicBoolean(false);
        streams.setStateListener((newState, oldState) -> {
            if (newState == KafkaStreams.State.RUNNING && announced.compareAndSet(false, true)) {
                System.err.println("kafka-streams peer RUNNING");
                System.err.flush();
            } else if (newState == KafkaStreams.State.ERROR) {
                failed.set(true);
                done.countDown();
            } else if (newState == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
        });

        // SIGTERM (the harness's stop) and SIGINT: commit what is in flight and leave the group.
        // A clean close exits 0 (not the JVM's 143 for SIGTERM), one that timed out exits 1.
        Thread hook = new Thread(() -> {
            boolean clean = streams.close(Duration.ofSeconds(10));
            done.countDown();
            if (!failed.get()) {
                System.err.println("kafka-streams peer closed" + (clean ? "" : " (close timed out)"));
                System.err.flush();
                Runtime.getRuntime().halt(clean ? 0 : 1);
            }
        }, "bench-shutdown");
        Runtime.getRuntime().addShutdownHook(hook);

        streams.start();
        done.await();
        if (failed.get()) {
            System.err.println("kafka-streams peer: stream thread failed (state ERROR), exiting");
            streams.close(Duration.ofSeconds(10));
            System.exit(1);
        }
    }

    static Topology topology(String left, String right, String out) {
        Serde<String> strings = Serdes.String();
        StoreBuilder<KeyValueStore<String, String>> pending = Stores
                .keyValueStoreBuilder(Stores.persistentKeyValueStore(STORE), strings, strings)
                .withLoggingEnabled(Map.of()) // changelog topic <app-id>-pending-changelog
                .withCachingDisabled();       // every put/delete reaches RocksDB and the changelog

        Topology topology = new Topology();
        topology.addSource(SOURCE_LEFT, strings.deserializer(), strings.deserializer(), left);
        topology.addSource(SOURCE_RIGHT, strings.deserializer(), strings.deserializer(), right);
        topology.addProcessor(PROCESSOR, () -> new JoinProcessor(left), SOURCE_LEFT, SOURCE_RIGHT);
        topology.addStateStore(pending, PROCESSOR);
        topology.addSink(SINK, out, strings.serializer(), strings.serializer(), PROCESSOR);
        return topology;
    }

    /** Steps 1-4 of WORKLOAD.md, per record. */
    static final class JoinProcessor implements Processor<String, String, String, String> {
        private final String leftTopic;
        private ProcessorContext<String, String> context;
        private KeyValueStore<String, String> store;

        JoinProcessor(String leftTopic) {
            this.leftTopic = leftTopic;
        }

        @Override
        public void init(ProcessorContext<String, String> context) {
            this.context = context;
            this.store = context.getStateStore(STORE);
        }

        @Override
        public void process(Record<String, String> record) {
            String key = record.key();
            String value = record.value();
            if (key == null || value == null) {
                return; // not produced by the harness
            }
            boolean fromLeft = leftTopic.equals(
                    context.recordMetadata().map(RecordMetadata::topic).orElseThrow());
            char side = fromLeft ? 'L' : 'R';

            String held = store.get(key);
            if (held == null || held.isEmpty() || held.charAt(0) == side) {
                store.put(key, side + value); // first side (or the same side again: overwrite)
                return;
            }
            store.delete(key);
            String heldTs = tsPrefix(held, 1);
            String thisTs = tsPrefix(value, 0);
            String joined = fromLeft ? thisTs + ":" + heldTs : heldTs + ":" + thisTs;
            context.forward(record.withValue(joined));
        }
    }

    /** The {@code <ts_us>} of {@code <ts_us>:<payload>}, starting at {@code from}. */
    static String tsPrefix(String s, int from) {
        int colon = s.indexOf(':', from);
        return colon < 0 ? s.substring(from) : s.substring(from, colon);
    }

    private static String env(String name, String fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : v;
    }

    private static String required(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            System.err.println("kafka-streams peer: " + name + " is not set");
            System.exit(2);
        }
        return v;
    }
}
