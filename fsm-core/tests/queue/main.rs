//! The command queue: outcomes, per-state policies (defer, dump, delegate), overload, deadlines,
//! close, async submit, metrics, and concurrent properties.

mod accounting;
mod close;
mod deadline;
mod defer;
#[cfg(feature = "metrics")]
mod export;
mod light;
mod outcomes;
mod overload;
mod props;
