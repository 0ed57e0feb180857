//! Export of queue counts through the `metrics` facade (feature `metrics`).
//!
//! Counters are set to their absolute values once per batch, so the facade sees exactly what
//! [`Metrics`](super::Metrics) shows; latency histograms stay in the queue (read them with
//! [`Sender::latencies`](super::Sender::latencies)) because recording every command twice would
//! double the consumer's bookkeeping.

use super::metrics::Counts;

/// Publishes one consistent cut of the counts, the depth and the high-water mark.
pub(crate) fn publish(machine: &'static str, counts: &Counts, depth: usize, high_water: usize) {
    let set = |name: &'static str, value: u64| {
        metrics::counter!(name, "machine" => machine).absolute(value);
    };
    set("fsm_queue_submitted_total", counts.submitted);
    set("fsm_queue_applied_total", counts.applied);
    set("fsm_queue_rejected_total", counts.rejected);
    set("fsm_queue_dumped_total", counts.dumped);
    set("fsm_queue_delegated_total", counts.delegated);
    set("fsm_queue_expired_total", counts.expired);
    set("fsm_queue_closed_total", counts.closed);
    set("fsm_queue_full_total", counts.full);
    metrics::gauge!("fsm_queue_queued", "machine" => machine).set(counts.queued as f64);
    metrics::gauge!("fsm_queue_deferred", "machine" => machine).set(counts.deferred as f64);
    metrics::gauge!("fsm_queue_depth", "machine" => machine).set(depth as f64);
    metrics::gauge!("fsm_queue_high_water", "machine" => machine).set(high_water as f64);
}
