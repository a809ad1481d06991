-- Seed 004's transactional inbox: one row per order commanded over Kafka (`pay.order`,
-- issue 15). The inbox consumer writes it in the transaction that handles the command: with
-- the reservation, the wallet_transactions row and the PaymentInitiated outbox row (RESERVED),
-- or with the OrderPaymentFailed outbox row (REFUSED). The keys make a command count once: a
-- redelivered command (same command_id) or a second command for the order (same order_id)
-- inserts nothing and changes nothing; the order's answer is the one its first command got.
CREATE TABLE order_inbox (
    -- The orders service's id of the order (the pay.order record key).
    order_id       text        PRIMARY KEY CHECK (length(order_id) BETWEEN 1 AND 200),
    -- The command that was handled; a redelivery carries the same id.
    command_id     uuid        NOT NULL CONSTRAINT order_inbox_command_id_key UNIQUE,
    -- UUIDv5 of order_id (PayOrder::payment_id_for): the order's payment, when one was opened.
    payment_id     uuid        NOT NULL CONSTRAINT order_inbox_payment_id_key UNIQUE,
    user_id        uuid        NOT NULL,
    -- The wallet paid from; NULL when the command named none that could be used.
    wallet_id      uuid        REFERENCES wallets (wallet_id),
    -- The amount asked; NULL when it was not a valid amount.
    amount         numeric(14,2) CHECK (amount > 0),
    -- RESERVED: the payment was opened and goes through the saga; settlement answers.
    -- REFUSED: answered with OrderPaymentFailed at once, nothing reserved.
    outcome        text        NOT NULL CHECK (outcome IN ('RESERVED', 'REFUSED')),
    -- The OrderFailureReason of a refusal, in words too.
    failure_reason text,
    failure_detail text,
    -- Where the answer goes (the outbox row's aggregatetype): order.paid and
    -- order.payment_failed, or a test's own topics. Kept with the command so settlement,
    -- which answers later, sends it where the command's consumer was told to.
    paid_topic     text        NOT NULL,
    failed_topic   text        NOT NULL,
    -- PAID or FAILED once the answer is in the outbox (at once for REFUSED, by settlement for
    -- RESERVED); set in the transaction that wrote it, and only while NULL, so an order is
    -- answered once.
    answer         text        CHECK (answer IN ('PAID', 'FAILED')),
    answered_at    timestamptz,
    ordered_at     timestamptz NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT order_inbox_refusal_has_reason CHECK ((outcome = 'REFUSED') = (failure_reason IS NOT NULL)),
    CONSTRAINT order_inbox_reserved_has_wallet_and_amount
        CHECK (outcome = 'REFUSED' OR (wallet_id IS NOT NULL AND amount IS NOT NULL)),
    CONSTRAINT order_inbox_answered_consistently CHECK ((answer IS NULL) = (answered_at IS NULL))
);
-- Orders still waiting for their answer (paystream orders).
CREATE INDEX order_inbox_unanswered ON order_inbox (received_at) WHERE answer IS NULL;
