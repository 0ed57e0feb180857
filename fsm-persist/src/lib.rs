//! Durable snapshot storage for `fsm-core` machines: the error kernel's backends.
//!
//! This crate is the home of the `SnapshotStore` backends described in the project's design
//! (file store, mirrored store, SQLite, PostgreSQL) and of the envelope codec and conformance
//! suite they share. None of them is written yet; the crate exists so that the workspace
//! layout, and `fsm-core`'s independence from any database crate, are fixed from the start.
