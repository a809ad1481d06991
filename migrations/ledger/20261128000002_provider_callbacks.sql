-- Every provider callback the callback service accepted, once. The row and the
-- ProviderCallbackReceived event in ledger_outbox are written in one transaction; a
-- redelivered callback finds its row and gets the first answer again, writing nothing.
CREATE TABLE provider_callbacks (
    -- The provider's id of the callback: its X-Provider-Event-Id header, or else
    -- 'sha256:' + the SHA-256 of the raw signed body (a byte-identical redelivery is the
    -- same callback, whatever its signature timestamp).
    provider_event_id  text        PRIMARY KEY CHECK (length(provider_event_id) BETWEEN 1 AND 200),
    payment_id         uuid        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('SUCCEEDED', 'FAILED')),
    description        text        NOT NULL,
    provider_timestamp timestamptz NOT NULL,
    received_at        timestamptz NOT NULL,
    -- The id of the ProviderCallbackReceived event written for it.
    event_id           uuid        NOT NULL UNIQUE
);
CREATE INDEX provider_callbacks_by_payment ON provider_callbacks (payment_id, received_at);
