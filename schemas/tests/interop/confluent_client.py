"""Confluent's Python client as an independent party to paystream's wire format.

Used by schemas/tests/python_interop.rs. Two commands:

  read   consume COUNT records of TOPIC from the beginning and print each, decoded by
         confluent-kafka's AvroDeserializer with the writer schema the registry holds,
         as one JSON line with normalised values (uuids and decimals as strings,
         timestamps as integer microseconds, enums as their symbol).
  write  encode one JSON record (the same normalised form) with AvroSerializer under the
         contract in SCHEMA_FILE, registered under SUBJECT, and produce it to TOPIC.

Exits non-zero with a message on any failure; never waits longer than --timeout-s.
"""

import argparse
import datetime
import decimal
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
TIMESTAMP_FIELDS = {"requestedAt", "initiatedAt", "decidedAt", "providerTimestamp", "receivedAt", "issuedAt"}
DECIMAL_FIELDS = {"amount"}


def to_plain(value):
    """A decoded Avro value as JSON-friendly data."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(microseconds=1)
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    return value


def from_plain(record):
    """The JSON form back into what fastavro expects for logical types."""
    out = dict(record)
    for name in TIMESTAMP_FIELDS & out.keys():
        out[name] = EPOCH + datetime.timedelta(microseconds=int(out[name]))
    for name in DECIMAL_FIELDS & out.keys():
        out[name] = decimal.Decimal(out[name])
    return out


def read(args, registry):
    deserializer = AvroDeserializer(registry)
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": f"it-python-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    consumer.subscribe([args.topic])
    deadline = time.monotonic() + args.timeout_s
    seen = 0
    try:
        while seen < args.count:
            if time.monotonic() > deadline:
                sys.exit(f"read {seen} of {args.count} records of {args.topic} in {args.timeout_s} s")
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                sys.exit(f"consume error: {message.error()}")
            value = deserializer(message.value(), SerializationContext(args.topic, MessageField.VALUE))
            schema_id = int.from_bytes(message.value()[1:5], "big")
            print(json.dumps({"key": message.key().decode(), "schema_id": schema_id, "value": to_plain(value)}))
            seen += 1
    finally:
        consumer.close()


def write(args, registry):
    with open(args.schema_file, encoding="utf-8") as f:
        schema = f.read()
    serializer = AvroSerializer(
        registry,
        schema,
        conf={"auto.register.schemas": True, "subject.name.strategy": lambda ctx, name: args.subject},
    )
    record = from_plain(json.loads(args.record))
    payload = serializer(record, SerializationContext(args.topic, MessageField.VALUE))
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all"})
    producer.produce(args.topic, key=args.key.encode(), value=payload)
    if producer.flush(args.timeout_s) != 0:
        sys.exit(f"could not deliver to {args.topic} within {args.timeout_s} s")
    print(json.dumps({"schema_id": int.from_bytes(payload[1:5], "big"), "bytes": len(payload)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["read", "write"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True, help="Confluent API base URL, no trailing slash")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--timeout-s", type=float, default=30)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--schema-file")
    parser.add_argument("--subject")
    parser.add_argument("--key")
    parser.add_argument("--record", help="the record as JSON, in the normalised form")
    args = parser.parse_args()
    registry = SchemaRegistryClient({"url": args.registry})
    if args.command == "read":
        read(args, registry)
    else:
        if not (args.schema_file and args.subject and args.key and args.record):
            sys.exit("write needs --schema-file, --subject, --key and --record")
        write(args, registry)


if __name__ == "__main__":
    main()
