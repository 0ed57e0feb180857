//! Durable snapshot storage for `fsm-core` machines (work in progress).
