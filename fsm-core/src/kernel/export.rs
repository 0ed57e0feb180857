//! The kernel's metrics through the `metrics` facade (feature `metrics`), for a Prometheus (or
//! any other) exporter to scrape. Labels name the machine type, the shard, the outcome, the
//! stage or the worker: never a machine id or any machine data, so the series stay few and
//! nothing a machine holds reaches a dashboard.

use metrics::{counter, gauge};

use super::stats::ShardMetrics;
use super::{Durable, KernelHandle};
use crate::queue::LatencySummary;

impl<M: Durable> KernelHandle<M> {
    /// Publishes one consistent reading of [`KernelHandle::metrics`] through the `metrics` facade:
    /// counters set to their absolute values, gauges set, latency percentiles as gauges with a
    /// `quantile` label. Call it periodically (each call costs one [`KernelHandle::metrics`]); the
    /// exporter installed as the recorder decides where the numbers go.
    ///
    /// | name | kind | labels |
    /// | --- | --- | --- |
    /// | `fsm_kernel_submitted_total` | counter | machine, shard |
    /// | `fsm_kernel_commands_total` | counter | machine, shard, outcome |
    /// | `fsm_kernel_fed_back_total`, `fsm_kernel_timers_fired_total`, `fsm_kernel_raised_total` | counter | machine, shard |
    /// | `fsm_kernel_commits_total`, `fsm_kernel_snapshots_written_total` | counter | machine, shard |
    /// | `fsm_kernel_queued`, `fsm_kernel_deferred`, `fsm_kernel_effects_owed`, `fsm_kernel_effects_oldest_owed_seconds` (0 when none), `fsm_kernel_inbox_high_water` | gauge | machine, shard |
    /// | `fsm_kernel_resident_machines`, `fsm_kernel_quarantined_machines`, `fsm_kernel_timer_entries` | gauge | machine, shard |
    /// | `fsm_kernel_latency_seconds` | gauge | machine, shard, stage (wait, apply, persist, end_to_end), quantile (0.5, 0.95, 0.99, 1) |
    /// | `fsm_kernel_worker_effects_total`, `..._errors_total`, `..._panics_total`, `..._restarts_total`, `..._retries_total`, `..._given_up_total` | counter | machine, worker |
    /// | `fsm_kernel_worker_escalated` | gauge (0 or 1) | machine, worker |
    /// | `fsm_kernel_worker_waiting` (effects waiting for an escalated worker's restart) | gauge | machine, worker |
    /// | `fsm_kernel_transitions_total` (committed, per declared transition, over all shards) | counter | machine, from, event, to |
    /// | `fsm_kernel_store_reopens_total` | counter | machine |
    /// | `fsm_kernel_uptime_seconds` | gauge | machine |
    pub fn publish_metrics(&self) {
        let m = self.metrics();
        let machine = m.machine;
        for (i, shard) in m.shards.iter().enumerate() {
            publish_shard(machine, &i.to_string(), shard);
        }
        for (i, w) in m.workers.iter().enumerate() {
            let worker = i.to_string();
            let labels = [("machine", machine.to_owned()), ("worker", worker)];
            counter!("fsm_kernel_worker_effects_total", &labels).absolute(w.effects);
            counter!("fsm_kernel_worker_errors_total", &labels).absolute(w.errors);
            counter!("fsm_kernel_worker_panics_total", &labels).absolute(w.panics);
            counter!("fsm_kernel_worker_restarts_total", &labels).absolute(w.restarts);
            counter!("fsm_kernel_worker_retries_total", &labels).absolute(w.retries);
            counter!("fsm_kernel_worker_given_up_total", &labels).absolute(w.given_up);
            gauge!("fsm_kernel_worker_waiting", &labels).set(w.parked as f64);
            gauge!("fsm_kernel_worker_escalated", &labels).set(f64::from(u8::from(w.escalated)));
        }
        let table = M::TABLE;
        for (t, n) in table.transitions().iter().zip(&m.total.transitions) {
            let labels = [
                ("machine", machine.to_owned()),
                ("from", table.state_name(t.from).to_owned()),
                ("event", table.event_name(t.event).to_owned()),
                ("to", table.state_name(t.to).to_owned()),
            ];
            counter!("fsm_kernel_transitions_total", &labels).absolute(*n);
        }
        counter!("fsm_kernel_store_reopens_total", "machine" => machine).absolute(m.store_reopens);
        gauge!("fsm_kernel_uptime_seconds", "machine" => machine).set(m.uptime.as_secs_f64());
    }
}

fn publish_shard(machine: &'static str, shard: &str, s: &ShardMetrics) {
    let labels = [("machine", machine.to_owned()), ("shard", shard.to_owned())];
    let c = &s.counts;
    counter!("fsm_kernel_submitted_total", &labels).absolute(c.submitted);
    for (outcome, count) in c.by_outcome() {
        let labels = [
            ("machine", machine.to_owned()),
            ("shard", shard.to_owned()),
            ("outcome", outcome.to_owned()),
        ];
        counter!("fsm_kernel_commands_total", &labels).absolute(count);
    }
    counter!("fsm_kernel_fed_back_total", &labels).absolute(c.fed_back);
    counter!("fsm_kernel_timers_fired_total", &labels).absolute(c.timers_fired);
    counter!("fsm_kernel_raised_total", &labels).absolute(c.raised);
    counter!("fsm_kernel_commits_total", &labels).absolute(s.commits);
    counter!("fsm_kernel_snapshots_written_total", &labels).absolute(s.snapshots);
    gauge!("fsm_kernel_queued", &labels).set(c.queued as f64);
    gauge!("fsm_kernel_deferred", &labels).set(c.deferred as f64);
    gauge!("fsm_kernel_effects_owed", &labels).set(c.owed as f64);
    gauge!("fsm_kernel_effects_oldest_owed_seconds", &labels)
        .set(s.oldest_owed.map_or(0.0, |d| d.as_secs_f64()));
    gauge!("fsm_kernel_inbox_high_water", &labels).set(s.high_water as f64);
    gauge!("fsm_kernel_resident_machines", &labels).set(s.resident as f64);
    gauge!("fsm_kernel_quarantined_machines", &labels).set(s.quarantined as f64);
    gauge!("fsm_kernel_timer_entries", &labels).set(s.timer_entries as f64);
    for (stage, l) in [
        ("wait", &s.wait),
        ("apply", &s.apply),
        ("persist", &s.persist),
        ("end_to_end", &s.end_to_end),
    ] {
        publish_latency(machine, shard, stage, l);
    }
}

fn publish_latency(machine: &'static str, shard: &str, stage: &'static str, l: &LatencySummary) {
    for (quantile, value) in [
        ("0.5", l.p50),
        ("0.95", l.p95),
        ("0.99", l.p99),
        ("1", l.max),
    ] {
        let labels = [
            ("machine", machine.to_owned()),
            ("shard", shard.to_owned()),
            ("stage", stage.to_owned()),
            ("quantile", quantile.to_owned()),
        ];
        gauge!("fsm_kernel_latency_seconds", &labels).set(value.as_secs_f64());
    }
}
