//! The HTTP edge (axum): accounts, payment ingest, provider callbacks, queries.
//!
//! Not built yet: reserved by the foundation; the wallet and saga issues fill it.
