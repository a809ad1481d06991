-- An owner's request to cancel a payment (POST /api/v1/payments/{paymentId}/cancel, issue 16).
-- Written in one transaction with its PaymentCancelRequested outbox row, at most once per
-- payment: the same cancel again finds the row and writes nothing (idempotent). The saga
-- decides; settlement records the outcome on the payment's wallet_transactions row
-- (result_status CANCELED if the cancel took effect), which is where the API reads it.
CREATE TABLE payment_cancel_requests (
    payment_id   uuid        PRIMARY KEY REFERENCES wallet_transactions (payment_id),
    -- The PaymentCancelRequested's eventId (the outbox row's id).
    event_id     uuid        NOT NULL UNIQUE,
    -- The owner who asked (the JWT's subject).
    requested_by uuid        NOT NULL REFERENCES users (user_id),
    reason       text        NOT NULL CHECK (length(reason) <= 500),
    requested_at timestamptz NOT NULL DEFAULT now()
);

-- A cancelled payment settles like a failed one (its reservation returns to available), with
-- its own result status, so that the API and the audit can tell the two apart.
ALTER TABLE wallet_transactions DROP CONSTRAINT wallet_transactions_result_status_check;
ALTER TABLE wallet_transactions ADD CONSTRAINT wallet_transactions_result_status_check
    CHECK (result_status IN ('COMPLETED', 'FAILED', 'FAILED_TIMEOUT', 'CANCELED'));
