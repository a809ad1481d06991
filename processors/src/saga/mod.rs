//! The payment saga (issue 6, in progress): the state machine every payment follows.
//!
//! Built so far: [`state`], the transitions, validated in one place and tested exhaustively.
//! Still to come (see the README's status table): the processor on `topology/` that keeps a
//! payment's state in a RocksDB store and emits commands, timers and exactly one result, the
//! timer processor, and the `paystream saga` binary.

pub mod state;
