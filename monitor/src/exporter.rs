//! The gauges of `paystream lag-exporter`, refreshed by a background loop so that a scrape only
//! reads memory (a scrape that waited on Kafka would time out exactly when Kafka is slow).
//!
//! Every source is collected on its own: Kafka away leaves the Connect and database gauges
//! current, and `paystream_lag_exporter_collections_total{source, outcome}` says which failed.

use std::time::{Duration, Instant};

use paystream_stack::connect::ConnectClient;
use paystream_stack::StackSettings;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tracing::Instrument;

use crate::dlq::DlqCounter;
use crate::timers::TimerWatch;
use crate::{lag, payments};

/// Pause between two collections. Prometheus scrapes every 5 s locally; lag moves slower than
/// that matters.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The states Kafka Connect reports for a connector or a task; each gets a series (0 or 1), so
/// "FAILED" is a value an alert can compare, not a series that appears.
pub const CONNECT_STATES: &[&str] = &["RUNNING", "PAUSED", "FAILED", "UNASSIGNED", "RESTARTING", "STOPPED"];
/// Lateness of a settled row's commit after its settled_at that the latency histogram still sees.
pub const SETTLED_GRACE: Duration = Duration::from_secs(5);
/// Buckets of POST→settled, in seconds: a healthy payment settles in under a second or two, a
/// timed-out one after its 60 s timeout plus verification.
const SETTLE_BUCKETS_S: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Connections the exporter's database pool may hold: its queries run one after another.
const DB_CONNECTIONS_MAX: u32 = 2;
/// How long a query waits for a connection (the database away fails the collection, not the loop).
const DB_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporter's metrics.
#[derive(Clone)]
pub struct ExporterMetrics {
    registry: Registry,
    lag_records: IntGaugeVec,
    lag_seconds: GaugeVec,
    members: IntGaugeVec,
    connect_up: IntGauge,
    connector_state: IntGaugeVec,
    task_state: IntGaugeVec,
    slot_lag: IntGaugeVec,
    slot_active: IntGaugeVec,
    dlq_records: IntGaugeVec,
    payments_recent: IntGaugeVec,
    stuck: IntGauge,
    stuck_oldest: Gauge,
    settle_latency: HistogramVec,
    collections: IntCounterVec,
    collect_seconds: GaugeVec,
    timers_pending: IntGauge,
    timers_overdue: IntGauge,
    timers_behind: Gauge,
    timer_fire_delay: Histogram,
}

/// The sources one collection reads, the `source` label.
pub const SOURCES: &[&str] = &["kafka", "dlq", "connect", "postgres", "timers"];
/// Buckets of a timer's firing after its due time, in seconds: the timers app punctuates every
/// second and commits every few; minutes mean it was away.
const FIRE_DELAY_BUCKETS_S: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0];

impl ExporterMetrics {
    /// The metrics in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let fgauge = |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, prometheus::Error> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let part = &["group", "topic", "partition"];
        let metrics = Self {
            lag_records: gauge(
                "paystream_consumer_group_lag",
                "Records between a group's committed offset and the partition's last stable offset",
                part,
            )?,
            lag_seconds: fgauge(
                "paystream_consumer_group_lag_seconds",
                "Age of the first record a group has not consumed (now minus its timestamp); 0 when caught up",
                part,
            )?,
            members: gauge(
                "paystream_consumer_group_members",
                "Members of each consumer group (Kafka Connect's worker group included), by state",
                &["group", "state", "protocol_type"],
            )?,
            connect_up: IntGauge::new("paystream_connect_up", "Kafka Connect's REST API answers (1) or not (0)")?,
            connector_state: gauge(
                "paystream_connect_connector_state",
                "1 for the state each connector is in, 0 for the others",
                &["connector", "state"],
            )?,
            task_state: gauge(
                "paystream_connect_task_state",
                "1 for the state each connector task is in, 0 for the others",
                &["connector", "task", "state"],
            )?,
            slot_lag: gauge(
                "paystream_connect_replication_slot_lag_bytes",
                "WAL bytes not yet confirmed by each logical replication slot (a Debezium source's lag)",
                &["slot"],
            )?,
            slot_active: gauge(
                "paystream_connect_replication_slot_active",
                "Whether a connector is reading the slot (1) or not (0)",
                &["slot"],
            )?,
            dlq_records: gauge(
                "paystream_dlq_records",
                "Dead letters in the DLQ topic, by source topic, reason and the processor that wrote them",
                &["source_topic", "reason", "processor"],
            )?,
            payments_recent: gauge(
                "paystream_payments_recent",
                "Payments accepted in the last 15 minutes, by state (PENDING or the result's status) and reason",
                &["state", "reason"],
            )?,
            stuck: IntGauge::new(
                "paystream_payments_stuck",
                "Payments still PENDING past their timeout, verification margin and slack",
            )?,
            stuck_oldest: Gauge::new(
                "paystream_payments_stuck_oldest_age_seconds",
                "Age of the oldest stuck payment since its acceptance; 0 when none",
            )?,
            settle_latency: HistogramVec::new(
                HistogramOpts::new(
                    "paystream_payment_settle_latency_seconds",
                    "POST accepted to result applied in the wallet (accepted_at to settled_at), by status",
                )
                .buckets(SETTLE_BUCKETS_S.to_vec()),
                &["status"],
            )?,
            collections: IntCounterVec::new(
                Opts::new("paystream_lag_exporter_collections_total", "Collections by source and outcome"),
                &["source", "outcome"],
            )?,
            collect_seconds: fgauge(
                "paystream_lag_exporter_collect_duration_seconds",
                "Duration of the last collection of each source",
                &["source"],
            )?,
            timers_pending: IntGauge::new(
                "paystream_timers_pending",
                "Timers scheduled on payments.timers since the exporter started and not fired yet",
            )?,
            timers_overdue: IntGauge::new(
                "paystream_timers_overdue",
                "Of those, the ones whose due time has passed",
            )?,
            timers_behind: Gauge::new(
                "paystream_timers_behind_seconds",
                "How far the oldest unfired timer is past its due time; 0 when none is due",
            )?,
            timer_fire_delay: Histogram::with_opts(
                HistogramOpts::new(
                    "paystream_timer_fire_delay_seconds",
                    "Fired timers' delay after their due time (fired_at - due_at)",
                )
                .buckets(FIRE_DELAY_BUCKETS_S.to_vec()),
            )?,
            registry: registry.clone(),
        };
        registry.register(Box::new(metrics.timers_pending.clone()))?;
        registry.register(Box::new(metrics.timers_overdue.clone()))?;
        registry.register(Box::new(metrics.timers_behind.clone()))?;
        registry.register(Box::new(metrics.timer_fire_delay.clone()))?;
        registry.register(Box::new(metrics.connect_up.clone()))?;
        registry.register(Box::new(metrics.stuck.clone()))?;
        registry.register(Box::new(metrics.stuck_oldest.clone()))?;
        registry.register(Box::new(metrics.settle_latency.clone()))?;
        registry.register(Box::new(metrics.collections.clone()))?;
        for source in SOURCES {
            for outcome in ["ok", "error"] {
                metrics.collections.with_label_values(&[source, outcome]);
            }
        }
        for status in ["COMPLETED", "FAILED", "FAILED_TIMEOUT"] {
            metrics.settle_latency.with_label_values(&[status]);
        }
        Ok(metrics)
    }

    /// The registry `/metrics` serves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn outcome<T, E: std::fmt::Display>(
        &self,
        source: &str,
        started: Instant,
        result: Result<T, E>,
    ) -> Option<T> {
        self.collect_seconds.with_label_values(&[source]).set(started.elapsed().as_secs_f64());
        match result {
            Ok(value) => {
                self.collections.with_label_values(&[source, "ok"]).inc();
                Some(value)
            }
            Err(error) => {
                tracing::warn!(source, %error, "collection failed");
                self.collections.with_label_values(&[source, "error"]).inc();
                None
            }
        }
    }

    fn set_groups(&self, groups: &[lag::GroupLag]) {
        self.lag_records.reset();
        self.lag_seconds.reset();
        self.members.reset();
        for group in groups {
            self.members
                .with_label_values(&[&group.group, &group.state, &group.protocol_type])
                .set(i64::try_from(group.members).unwrap_or(i64::MAX));
            for p in &group.partitions {
                let partition = p.partition.to_string();
                let labels = [group.group.as_str(), p.topic.as_str(), partition.as_str()];
                self.lag_records.with_label_values(&labels).set(p.records);
                if let Some(seconds) = p.seconds {
                    self.lag_seconds.with_label_values(&labels).set(seconds);
                }
            }
        }
    }
}

/// What the loop keeps between collections.
struct State {
    settings: StackSettings,
    connect: Option<ConnectClient>,
    db: Option<PgPool>,
    dlq: Option<DlqCounter>,
    timers: Option<TimerWatch>,
    settled_after: Option<chrono::DateTime<chrono::Utc>>,
}

/// Collects every source every `interval` into `metrics`, until the task is dropped.
pub async fn run(settings: StackSettings, dlq_topic: String, metrics: ExporterMetrics, interval: Duration) {
    let mut state = State {
        connect: ConnectClient::new(&settings.connect_url).ok(),
        db: PgPoolOptions::new()
            .max_connections(DB_CONNECTIONS_MAX)
            .acquire_timeout(DB_ACQUIRE_TIMEOUT)
            .connect_lazy(&settings.wallet_db_url)
            .ok(),
        settings,
        dlq: None,
        timers: None,
        settled_after: None,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // One trace per collection (`lag-exporter collect`), a child span per source: an operator
        // sees in Jaeger which source is slow or failing, as the collection metrics tell.
        let span = tracing::info_span!("collect", otel.name = "lag-exporter collect");
        collect_once(&mut state, &dlq_topic, &metrics).instrument(span).await;
    }
}

/// The span of one source's collection within a collection's trace.
fn source_span(source: &'static str) -> tracing::Span {
    tracing::info_span!("collect source", otel.name = %format_args!("lag-exporter {source}"), source)
}

async fn collect_once(state: &mut State, dlq_topic: &str, metrics: &ExporterMetrics) {
    // Kafka: lag of every group (blocking librdkafka calls, off the async workers).
    let started = Instant::now();
    let bootstrap = state.settings.kafka_bootstrap.clone();
    let groups = tokio::task::spawn_blocking(move || lag::collect(&bootstrap))
        .instrument(source_span("kafka"))
        .await
        .unwrap_or_else(|join| Err(lag::LagError::Task(join.to_string())));
    if let Some(groups) = metrics.outcome("kafka", started, groups) {
        metrics.set_groups(&groups);
    }

    // The DLQ, incrementally; a counter that failed is made again (from the beginning).
    let started = Instant::now();
    let bootstrap = state.settings.kafka_bootstrap.clone();
    let topic = dlq_topic.to_owned();
    let counter = state.dlq.take();
    let (counter, result) = tokio::task::spawn_blocking(move || {
        let mut counter = match counter {
            Some(counter) => counter,
            None => match DlqCounter::new(&bootstrap, &topic) {
                Ok(counter) => counter,
                Err(error) => return (None, Err(lag::LagError::from(error))),
            },
        };
        let result = counter.catch_up().map(|()| counter.counts().clone()).map_err(lag::LagError::from);
        (result.is_ok().then_some(counter), result)
    })
    .instrument(source_span("dlq"))
    .await
    .unwrap_or_else(|join| (None, Err(lag::LagError::Task(join.to_string()))));
    state.dlq = counter;
    if let Some(counts) = metrics.outcome("dlq", started, result) {
        for (key, count) in counts {
            metrics
                .dlq_records
                .with_label_values(&[&key.source_topic, &key.reason, &key.processor])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    // The timers: a watch that failed is made again (from the topic's end).
    let started = Instant::now();
    if state.timers.is_none() {
        state.timers =
            TimerWatch::payments(&state.settings.kafka_bootstrap, &state.settings.schema_registry_url)
                .inspect_err(|error| tracing::warn!(%error, "timer watch not started"))
                .ok();
    }
    if let Some(watch) = &mut state.timers {
        let result = watch.catch_up().instrument(source_span("timers")).await;
        if result.is_err() {
            state.timers = None;
        }
        if let (Some(caught), Some(watch)) = (metrics.outcome("timers", started, result), &state.timers) {
            for delay in caught.fire_delays_s {
                metrics.timer_fire_delay.observe(delay.max(0.0));
            }
            let (overdue, behind) = watch.overdue(now_ms());
            metrics.timers_pending.set(i64::try_from(watch.pending()).unwrap_or(i64::MAX));
            metrics.timers_overdue.set(i64::try_from(overdue).unwrap_or(i64::MAX));
            metrics.timers_behind.set(behind);
        }
    }

    // Kafka Connect: every connector's and task's state.
    let started = Instant::now();
    if let Some(connect) = &state.connect {
        let statuses = async {
            let mut statuses = Vec::new();
            for name in connect.list().await? {
                statuses.push(connect.status(&name).await?);
            }
            Ok::<_, paystream_stack::connect::ConnectError>(statuses)
        }
        .instrument(source_span("connect"))
        .await;
        metrics.connect_up.set(i64::from(statuses.is_ok()));
        if let Some(statuses) = metrics.outcome("connect", started, statuses) {
            metrics.connector_state.reset();
            metrics.task_state.reset();
            for status in statuses {
                for state in CONNECT_STATES {
                    let on = i64::from(status.connector.state == *state);
                    metrics.connector_state.with_label_values(&[status.name.as_str(), state]).set(on);
                    for task in &status.tasks {
                        let on = i64::from(task.state == *state);
                        metrics
                            .task_state
                            .with_label_values(&[status.name.as_str(), &task.id.to_string(), state])
                            .set(on);
                    }
                }
            }
        }
    }

    // The wallet database: payments by state, the stuck ones, settle latency; replication slots.
    let started = Instant::now();
    if let Some(db) = &state.db {
        let result = async {
            let recent = payments::recent(db, payments::RECENT_WINDOW).await?;
            let stuck = payments::stuck(db).await?;
            let slots = payments::slots(db).await?;
            let settled = payments::settled_between(db, state.settled_after, SETTLED_GRACE).await?;
            Ok::<_, sqlx::Error>((recent, stuck, slots, settled))
        }
        .instrument(source_span("postgres"))
        .await;
        if let Some((recent, stuck, slots, (settled, until))) = metrics.outcome("postgres", started, result) {
            metrics.payments_recent.reset();
            for ((state, reason), count) in recent {
                metrics
                    .payments_recent
                    .with_label_values(&[&state, &reason])
                    .set(i64::try_from(count).unwrap_or(0));
            }
            metrics.stuck.set(i64::try_from(stuck.count).unwrap_or(i64::MAX));
            metrics.stuck_oldest.set(stuck.oldest_age.map_or(0.0, |age| age.as_secs_f64()));
            metrics.slot_lag.reset();
            metrics.slot_active.reset();
            for slot in slots {
                metrics.slot_lag.with_label_values(&[&slot.name]).set(slot.lag_bytes);
                metrics.slot_active.with_label_values(&[&slot.name]).set(i64::from(slot.active));
            }
            for (status, seconds) in settled {
                metrics.settle_latency.with_label_values(&[&status]).observe(seconds.max(0.0));
            }
            state.settled_after = until.or(state.settled_after);
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connect_state_and_source_has_a_series_from_the_start() {
        let metrics = ExporterMetrics::new().unwrap();
        let families = metrics.registry().gather();
        let series =
            |name: &str| families.iter().find(|f| f.name() == name).map_or(0, |f| f.get_metric().len());
        assert_eq!(series("paystream_lag_exporter_collections_total"), SOURCES.len() * 2);
        assert_eq!(series("paystream_payment_settle_latency_seconds"), 3);
        metrics.set_groups(&[lag::GroupLag {
            group: "g".into(),
            state: "Stable".into(),
            protocol_type: "consumer".into(),
            members: 2,
            partitions: vec![lag::PartitionLag {
                topic: "t".into(),
                partition: 1,
                committed: 5,
                end: 9,
                records: 4,
                seconds: None,
            }],
        }]);
        assert_eq!(metrics.lag_records.with_label_values(&["g", "t", "1"]).get(), 4);
        let families = metrics.registry().gather();
        let series =
            |name: &str| families.iter().find(|f| f.name() == name).map_or(0, |f| f.get_metric().len());
        assert_eq!(series("paystream_consumer_group_lag_seconds"), 0, "an unknown age is no sample, not 0");
    }
}
