-- Issue 11, scenario 4: deduplicate callbacks on what their signature covers, per payment, and
-- forward only a payment's first verdict (api/src/callbacks.rs).
--
-- provider_event_id now comes from the signed body (its eventId, else 'sha256:' + the SHA-256
-- of the raw body), never from the unsigned X-Provider-Event-Id header, and it is unique per
-- payment rather than globally: an id used by one payment can no longer make another payment's
-- authentic callback a 4xx.
ALTER TABLE provider_callbacks DROP CONSTRAINT provider_callbacks_pkey;
ALTER TABLE provider_callbacks ADD PRIMARY KEY (payment_id, provider_event_id);

-- What became of each callback: 'forwarded' (the payment's first verdict, sent to
-- payments.callbacks as event_id), 'duplicate' (a later event with the same status) or
-- 'conflict' (a later event with the opposite status). Only forwarded rows have an event.
ALTER TABLE provider_callbacks
    ADD COLUMN disposition text NOT NULL DEFAULT 'forwarded'
        CHECK (disposition IN ('forwarded', 'duplicate', 'conflict'));
ALTER TABLE provider_callbacks ALTER COLUMN event_id DROP NOT NULL;

-- Rows recorded before this migration were all forwarded; where a payment has several, the
-- earliest is taken as its verdict and the others are labelled after it (they keep their
-- event_id, which did reach payments.callbacks), so that the index below can exist.
UPDATE provider_callbacks AS later
SET disposition = CASE WHEN later.status = first.status THEN 'duplicate' ELSE 'conflict' END
FROM (
    SELECT DISTINCT ON (payment_id) payment_id, provider_event_id, status
    FROM provider_callbacks
    ORDER BY payment_id, received_at, provider_event_id
) AS first
WHERE later.payment_id = first.payment_id AND later.provider_event_id <> first.provider_event_id;

ALTER TABLE provider_callbacks ALTER COLUMN disposition DROP DEFAULT;
ALTER TABLE provider_callbacks
    ADD CONSTRAINT provider_callbacks_forwarded_has_event
        CHECK (disposition <> 'forwarded' OR event_id IS NOT NULL);

-- At most one verdict per payment reaches the saga, whatever the order or concurrency of
-- deliveries: a second concurrent "first" insert waits on this index and then conflicts.
CREATE UNIQUE INDEX provider_callbacks_one_verdict_per_payment
    ON provider_callbacks (payment_id) WHERE disposition = 'forwarded';
