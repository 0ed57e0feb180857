//! Example machines from the field, shared by the runnable examples, the tests and the
//! benchmarks.
//!
//! - [`registrar`]: a domain-registration order, derived with `#[derive(StateMachine)]`.

#[path = "machines/registrar.rs"]
pub mod registrar;
