-- The read database `query`: fed only from Kafka, by Debezium's JDBC sink connectors
-- (connect/query-views.json, connect/query-timeline.json, connect/query-cdc.json), read by the
-- API's query endpoints (api/src/views.rs). Nothing here is the source of truth: every row can
-- be rebuilt by replaying the topics, so the tables carry what the topics carry, in their
-- units (the view's times are microseconds since the epoch, as in the Avro contract: Connect's
-- AvroConverter hands `timestamp-micros` over as a long).
--
-- At-least-once delivery is made harmless here, in the one place every writer goes through:
-- a row never moves backwards. A payment view with a lower `version`, or a CDC row with a lower
-- LSN than the stored one, is skipped by a BEFORE UPDATE trigger (the sink's upsert is
-- INSERT ... ON CONFLICT DO UPDATE, whose update part fires these triggers; returning NULL skips
-- the row). Timeline events never change: a replay upserts the same (payment_id, seq).

-- Fragment search (ILIKE '%…%') through trigram indexes. pg_trgm is a trusted extension, so
-- the database's owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Text search configuration: 'simple' (lower-cased words, no stemming), because descriptions
-- and names are in any language (the seeds' are Russian) and a stemmer of one language
-- mangles the others.

-- Replicated from wallet.public.users (Debezium CDC, ExtractNewRecordState already applied by
-- connect/wallet-cdc.json). cdc_* are the unwrap's __op, __source_ts_ms, __source_lsn.
CREATE TABLE users (
    user_id          uuid PRIMARY KEY,
    name             text,
    phone            text,
    created_at       timestamptz,
    updated_at       timestamptz,
    cdc_op           text,
    cdc_source_ts_ms bigint,
    -- The WAL position of the change: grows with every change of a row, so it orders them.
    cdc_lsn          bigint,
    name_tsv         tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(name, ''))) STORED
);
CREATE INDEX users_name_tsv ON users USING gin (name_tsv);
CREATE INDEX users_name_trgm ON users USING gin (name gin_trgm_ops);

-- Replicated from wallet.public.wallets. The balances come along (the change events carry
-- them) but the API does not serve them from here: balances are read from the wallet database.
CREATE TABLE wallets (
    wallet_id        uuid PRIMARY KEY,
    user_id          uuid,
    currency         text,
    available        numeric(14, 2),
    reserved         numeric(14, 2),
    version          bigint,
    created_at       timestamptz,
    updated_at       timestamptz,
    cdc_op           text,
    cdc_source_ts_ms bigint,
    cdc_lsn          bigint
);
-- A caller's payments are found through their wallets.
CREATE INDEX wallets_by_user ON wallets (user_id);

-- payments.view (compacted, PaymentView.avsc), field names in snake_case
-- (FieldNameTransformation) and the times renamed to say their unit.
CREATE TABLE payment_views (
    payment_id    uuid PRIMARY KEY,
    wallet_id     uuid,
    amount        numeric(18, 2),
    currency      text,
    kind          text,
    description   text,
    status        text   NOT NULL,
    reason        text,
    created_at_us bigint,
    updated_at_us bigint NOT NULL,
    version       bigint NOT NULL,
    result_id     uuid,
    trace_id      text,
    search_tsv    tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(description, ''))) STORED
);
-- History: a wallet's payments newest first, the cursor being (created_at_us, payment_id).
-- Only views that know their wallet and creation time are in a history.
CREATE INDEX payment_views_history ON payment_views (wallet_id, created_at_us DESC, payment_id DESC)
    WHERE wallet_id IS NOT NULL AND created_at_us IS NOT NULL;
-- Search by word (tsvector) and by fragment (trigrams).
CREATE INDEX payment_views_search_tsv ON payment_views USING gin (search_tsv);
CREATE INDEX payment_views_description_trgm ON payment_views USING gin (description gin_trgm_ops);

-- payments.timeline (PaymentTimelineEvent.avsc): one row per event of a payment.
CREATE TABLE payment_timeline (
    payment_id uuid    NOT NULL,
    seq        integer NOT NULL,
    kind       text    NOT NULL,
    detail     text    NOT NULL,
    at_us      bigint  NOT NULL,
    trace_id   text,
    PRIMARY KEY (payment_id, seq)
);

-- The guards. A NULL on either side lets the row through: a row written before the column
-- existed, or a record that lacks it, has nothing to be compared by.
CREATE FUNCTION payment_views_never_backwards() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version < OLD.version THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER payment_views_never_backwards BEFORE UPDATE ON payment_views
    FOR EACH ROW EXECUTE FUNCTION payment_views_never_backwards();

CREATE FUNCTION cdc_never_backwards() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.cdc_lsn < OLD.cdc_lsn THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER users_never_backwards BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION cdc_never_backwards();
CREATE TRIGGER wallets_never_backwards BEFORE UPDATE ON wallets
    FOR EACH ROW EXECUTE FUNCTION cdc_never_backwards();
