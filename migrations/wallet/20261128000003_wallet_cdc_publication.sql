-- Change data capture of users and wallets (connect/wallet-cdc.json), for the payment
-- view: it joins payments with their owner's name and phone and the wallet's state.
-- Separate from the outbox publication, so the outbox connector keeps reading only events.
CREATE PUBLICATION wallet_cdc FOR TABLE users, wallets;
