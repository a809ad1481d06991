-- A wallet's whole balance (available + reserved) is capped at the largest numeric(14,2),
-- 999999999999.99 (MAX_BALANCE in processors/src/settlement/apply.rs).
--
-- Why: a deposit is up to 999999999.99 per call, with no limit on the number of calls.
-- Without a cap, `available` can be filled to the column's maximum while `reserved` holds
-- pending payments; a refund (FAILED, FAILED_TIMEOUT: reserved -> available) then
-- overflows numeric(14,2) (SQLSTATE 22003) and that result can never be applied. With the
-- sum capped, every movement settlement makes is covered:
--   * a refund moves money from reserved to available: the sum does not change, and
--     available <= sum <= MAX_BALANCE, so it cannot overflow;
--   * a completion lowers reserved: the sum only shrinks;
--   * a reservation (the API) moves available -> reserved: the sum does not change;
--   * a deposit raises the sum: this constraint refuses it (SQLSTATE 23514, constraint
--     wallets_balance_max) before any later refund could overflow.
-- The sum in the expression is computed in unconstrained numeric, so the check itself
-- cannot overflow.
ALTER TABLE wallets
    ADD CONSTRAINT wallets_balance_max CHECK (available + reserved <= 999999999999.99) NOT VALID;
-- Validated separately: NOT VALID already enforces the cap on every new or updated row;
-- validating proves no existing wallet is over it (a wallet that is would fail this
-- migration, naming the constraint, rather than fail its next settlement).
ALTER TABLE wallets VALIDATE CONSTRAINT wallets_balance_max;
