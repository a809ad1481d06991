-- The ledger (transaction) database's outbox: provider callbacks are recorded here in the
-- same transaction as their dedup row, and Debezium streams them to payments.callbacks
-- (connect/ledger-outbox.json). Same shape as wallet_outbox; see its comments.
CREATE TABLE ledger_outbox (
    id            uuid        PRIMARY KEY,
    aggregatetype text        NOT NULL,
    aggregateid   text        NOT NULL,
    type          text        NOT NULL,
    payload       bytea       NOT NULL,
    traceparent   text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE PUBLICATION ledger_outbox FOR TABLE ledger_outbox;
