-- Where money lives. A wallet's balance is split into what the owner may spend
-- (available) and what pending payments hold (reserved); a payment moves its amount from
-- available to reserved when it is accepted, and settlement either consumes the
-- reservation (COMPLETED) or returns it (FAILED, FAILED_TIMEOUT).
--
-- Invariant (DESIGN.md #1), checkable at any quiescent point:
--   available + reserved = sum(deposits) - sum(amount of COMPLETED payments)
-- Money is numeric(14,2): never a float. Amounts are bounded by 999999999.99 per operation.

CREATE TABLE users (
    -- The subject of the caller's JWT.
    user_id    uuid        PRIMARY KEY,
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    phone      text        CHECK (length(phone) <= 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE wallets (
    -- The wallet's id is also its number (seeds: "wallet_number": UUID).
    wallet_id  uuid          PRIMARY KEY,
    user_id    uuid          NOT NULL REFERENCES users (user_id),
    currency   char(3)       NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    available  numeric(14,2) NOT NULL DEFAULT 0 CHECK (available >= 0),
    reserved   numeric(14,2) NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    -- Bumped by every balance change: optimistic readers and the CDC stream can tell
    -- versions apart.
    version    bigint        NOT NULL DEFAULT 0,
    created_at timestamptz   NOT NULL DEFAULT now(),
    updated_at timestamptz   NOT NULL DEFAULT now(),
    -- One wallet per user and currency (seed 004: no second account for a user).
    CONSTRAINT wallets_one_per_user_and_currency UNIQUE (user_id, currency)
);

-- Deposits are idempotent on the client's Idempotency-Key: the same key again is the same
-- deposit, never a second one.
CREATE TABLE deposits (
    idempotency_key text          PRIMARY KEY CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    wallet_id       uuid          NOT NULL REFERENCES wallets (wallet_id),
    amount          numeric(14,2) NOT NULL CHECK (amount > 0),
    created_at      timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX deposits_by_wallet ON deposits (wallet_id);

-- One row per accepted payment; payment_id is the client's idempotency key.
CREATE TABLE wallet_transactions (
    payment_id        uuid          PRIMARY KEY,
    wallet_id         uuid          NOT NULL REFERENCES wallets (wallet_id),
    amount            numeric(14,2) NOT NULL CHECK (amount > 0),
    kind              text          NOT NULL,
    description       text          NOT NULL,
    status            text          NOT NULL DEFAULT 'PENDING'
                                    CHECK (status IN ('PENDING', 'COMPLETED', 'CANCELLED')),
    -- The client's timestamp, and when we accepted it (the response's timestamp, repeated
    -- verbatim to an idempotent replay).
    requested_at      timestamptz   NOT NULL,
    accepted_at       timestamptz   NOT NULL,
    -- Set once, by settlement, in the transaction that applies the result: a second
    -- delivery of the same PaymentResult finds it set and changes nothing.
    payment_result_id uuid          UNIQUE,
    result_status     text          CHECK (result_status IN ('COMPLETED', 'FAILED', 'FAILED_TIMEOUT')),
    result_reason     text,
    settled_at        timestamptz,
    created_at        timestamptz   NOT NULL DEFAULT now(),
    updated_at        timestamptz   NOT NULL DEFAULT now(),
    -- A settled row has all of its result columns, a pending one none.
    CONSTRAINT wallet_transactions_settled_consistently CHECK (
        (status = 'PENDING') = (payment_result_id IS NULL)
        AND (payment_result_id IS NULL) = (result_status IS NULL)
        AND (payment_result_id IS NULL) = (settled_at IS NULL)
    )
);
CREATE INDEX wallet_transactions_by_wallet ON wallet_transactions (wallet_id, created_at);
