-- The wallet service's transactional outbox, in the shape Debezium's Outbox Event Router
-- reads (connect/wallet-outbox.json). A service writes its domain change and the event
-- describing it in one transaction; Debezium streams the event from the WAL to Kafka.
-- Nothing polls this table, and rows may be deleted in the transaction that inserted
-- them: the WAL still carries the insert.
CREATE TABLE wallet_outbox (
    -- Event id: becomes the Kafka header `id`; consumers deduplicate by it, because
    -- Debezium delivers at least once.
    id            uuid        PRIMARY KEY,
    -- Routes the event: the router sends it to the topic named by this value
    -- (e.g. 'payments.initiated').
    aggregatetype text        NOT NULL,
    -- The Kafka record key (the paymentId), so every event of a payment lands on the
    -- same partition in order.
    aggregateid   text        NOT NULL,
    -- The event type (e.g. 'PaymentInitiated'), carried as header `eventType`.
    type          text        NOT NULL,
    -- The event, already encoded in the Confluent Avro wire format (magic byte, schema
    -- id, body); passed through to Kafka byte for byte by BinaryDataConverter.
    payload       bytea       NOT NULL,
    -- W3C trace context of the request that caused the event, carried as a header.
    traceparent   text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- pgoutput streams only the tables of a publication. Created here, by the table's owner,
-- so the connector needs no ownership and runs with publication.autocreate.mode=disabled.
CREATE PUBLICATION wallet_outbox FOR TABLE wallet_outbox;
