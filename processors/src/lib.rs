//! The payment flow's processors, one folder each: saga, timers, dispatcher,
//! settlement, payment view.
//!
//! Not built yet: reserved by the foundation; the saga and wallet issues fill it.
