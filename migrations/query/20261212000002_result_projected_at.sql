-- When a payment's result first reached the read database: the end of the projection lag that
-- `paystream load` reports ("PaymentResult → read database"), from the saga's decision through
-- `paystream view`, payments.view and the JDBC sink to this row. Set once, by the database's
-- clock, when a row first carries a result id; later upserts of the same view keep it.
ALTER TABLE payment_views ADD COLUMN result_projected_at_us bigint;

CREATE FUNCTION payment_views_result_projected_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.result_id IS NOT NULL THEN
        NEW.result_projected_at_us := OLD.result_projected_at_us;
    ELSIF NEW.result_id IS NOT NULL THEN
        NEW.result_projected_at_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    END IF;
    RETURN NEW;
END
$$;
-- Named after payment_views_never_backwards, so it runs after it (triggers fire by name): a
-- stale upsert that trigger drops never reaches this one.
CREATE TRIGGER payment_views_result_projected_at BEFORE INSERT OR UPDATE ON payment_views
    FOR EACH ROW EXECUTE FUNCTION payment_views_result_projected_at();
