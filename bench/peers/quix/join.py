"""Quix Streams peer of the `join` workload (spec: ../WORKLOAD.md).

LEFT and RIGHT are read as two StreamingDataFrames and merged with
`StreamingDataFrame.concat`; the merged dataframe has its own stream id
("<left>--<right>", sorted), so the stateful `apply` after it uses ONE RocksDB
store (changelog-backed) that both topics' records of a key share. Quix scopes
state to the message key, and the two topics are co-partitioned, so a key's LEFT
and RIGHT records land in the same store partition.

Per record: the store's `pending` entry for the key is empty -> put `L<value>` /
`R<value>`, emit nothing; it holds the other side -> delete it and emit
`<ts_us_left>:<ts_us_right>` to OUT with the same key; it holds the same side
-> overwrite.
"""

import logging
import os
import sys
import warnings

# authlib (pulled in by confluent-kafka's schema-registry extra, unused here) warns at import
# and forces its warning to "always", so swallow warnings raised while importing.
with warnings.catch_warnings(record=True):
    from confluent_kafka.admin import AdminClient
    from quixstreams import Application, State, message_context


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"quix peer: environment variable {name} is required")
    return value


BOOTSTRAP = env("BENCH_BOOTSTRAP")
APP_ID = env("BENCH_APP_ID")
LEFT = env("BENCH_LEFT")
RIGHT = env("BENCH_RIGHT")
OUT = env("BENCH_OUT")
STATE_DIR = env("BENCH_STATE_DIR")
COMMIT_INTERVAL_MS = int(os.environ.get("BENCH_COMMIT_INTERVAL_MS", "100"))
# Max time one consumer fetch blocks. Quix's default is 1.0 s, and because concat() of two
# topics switches Quix to buffered, timestamp-aligned polling (consume a batch of up to
# 10,000 messages or wait out this timeout), the default adds ~1.5 s of latency at low rates
# and keeps the 100 ms commit interval from being honoured. See README "Latency".
POLL_TIMEOUT_S = float(os.environ.get("QUIX_CONSUMER_POLL_TIMEOUT_S", "0.01"))

# State key inside the per-message-key state scope (Quix prefixes it with the key).
PENDING = "pending"


class _RunningLine(logging.Filter):
    """Print `quix peer RUNNING` once, when Quix enters its processing loop."""

    def __init__(self) -> None:
        super().__init__()
        self.done = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.done and record.getMessage().startswith("The application started"):
            self.done = True
            print("quix peer RUNNING", file=sys.stderr, flush=True)
        return True


def check_topics_exist() -> None:
    # auto_create_topics must stay on so Quix can create its changelog topic, but the
    # harness owns LEFT/RIGHT/OUT: refuse to run (and to create them) if one is missing.
    md = AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=30)
    missing = [t for t in (LEFT, RIGHT, OUT) if t not in md.topics]
    if missing:
        sys.exit(f"quix peer: topics missing on {BOOTSTRAP}: {', '.join(missing)}")


def join(value: str, key, timestamp: int, headers, state: State):
    side = "L" if message_context().topic == LEFT else "R"
    pending = state.get(PENDING)
    if pending is None or pending[0] == side:
        state.set(PENDING, side + value)
        return ()
    state.delete(PENDING)
    ts_this = value.split(":", 1)[0]
    ts_other = pending[1:].split(":", 1)[0]
    if side == "L":
        return (f"{ts_this}:{ts_other}",)
    return (f"{ts_other}:{ts_this}",)


def main() -> None:
    check_topics_exist()
    app = Application(
        broker_address=BOOTSTRAP,
        consumer_group=APP_ID,
        state_dir=STATE_DIR,
        processing_guarantee="exactly-once",
        commit_interval=COMMIT_INTERVAL_MS / 1000,
        auto_offset_reset="earliest",
        # Needed for the changelog topic (LEFT/RIGHT/OUT are checked above to exist).
        auto_create_topics=True,
        # librdkafka's default already, stated for the record.
        consumer_extra_config={"isolation.level": "read_committed"},
        consumer_poll_timeout=POLL_TIMEOUT_S,
        loglevel="INFO",
    )
    logging.getLogger("quixstreams.app").addFilter(_RunningLine())

    left = app.topic(LEFT, key_deserializer="str", value_deserializer="str")
    right = app.topic(RIGHT, key_deserializer="str", value_deserializer="str")
    out = app.topic(OUT, key_serializer="str", value_serializer="str")

    sdf = app.dataframe(left).concat(app.dataframe(right))
    sdf = sdf.apply(join, stateful=True, metadata=True, expand=True)
    sdf.to_topic(out)

    app.run()  # returns after SIGTERM/SIGINT: Quix commits the last checkpoint first
    print("quix peer stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
