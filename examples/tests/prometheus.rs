//! The kernel's metrics as Prometheus scrapes them: every documented name is in the text, the
//! counts equal the kernel's own, and no label carries a machine id or machine data.

use fsm_core::kernel::Kernel;
use fsm_core::store::MachineId;
use fsm_examples::registrar::{Order, OrderCmd};
use metrics_exporter_prometheus::PrometheusBuilder;

#[test]
fn the_exposition_has_every_documented_series_and_no_machine_data() {
    let dir = tempfile::tempdir().unwrap();
    let kernel: Kernel<Order> = fsm_persist::file_kernel(dir.path(), |_| Order::Draft)
        .shards(2)
        .start()
        .unwrap();
    for i in 0..20 {
        let id = MachineId::new(format!("order-{i}")).unwrap();
        for cmd in [
            OrderCmd::Submit {
                domain: format!("secret-shop{i}.example"),
            },
            OrderCmd::Pay {
                cents: 1200,
                card_token: "tok_SECRET".into(),
            },
            OrderCmd::Submit {
                domain: "again.example".into(),
            },
        ] {
            let _ = kernel.submit(&id, cmd).unwrap().wait();
        }
    }
    kernel.wait_idle();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || kernel.publish_metrics());
    let text = handle.render();

    for name in [
        "fsm_kernel_submitted_total",
        "fsm_kernel_commands_total",
        "fsm_kernel_fed_back_total",
        "fsm_kernel_timers_fired_total",
        "fsm_kernel_raised_total",
        "fsm_kernel_commits_total",
        "fsm_kernel_snapshots_written_total",
        "fsm_kernel_queued",
        "fsm_kernel_deferred",
        "fsm_kernel_inbox_high_water",
        "fsm_kernel_resident_machines",
        "fsm_kernel_quarantined_machines",
        "fsm_kernel_timer_entries",
        "fsm_kernel_latency_seconds",
        "fsm_kernel_store_reopens_total",
        "fsm_kernel_uptime_seconds",
        "fsm_kernel_transitions_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    let value = |series: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(series))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let counts = kernel.metrics().total.counts;
    assert_eq!(
        value("fsm_kernel_commands_total{machine=\"Order\",shard=\"0\",outcome=\"committed\"}")
            + value(
                "fsm_kernel_commands_total{machine=\"Order\",shard=\"1\",outcome=\"committed\"}"
            ),
        counts.committed as f64
    );
    assert_eq!(counts.committed, 40);
    assert_eq!(
        value("fsm_kernel_commands_total{machine=\"Order\",shard=\"0\",outcome=\"rejected\"}")
            + value(
                "fsm_kernel_commands_total{machine=\"Order\",shard=\"1\",outcome=\"rejected\"}"
            ),
        20.0
    );
    // Per declared transition, over both shards: the two that were taken, 20 times each.
    for (from, event, to) in [
        ("Draft", "Submit", "Submitted"),
        ("Submitted", "Pay", "Paid"),
    ] {
        assert_eq!(
            value(&format!(
                "fsm_kernel_transitions_total{{machine=\"Order\",from=\"{from}\",event=\"{event}\",to=\"{to}\"}}"
            )),
            20.0,
            "{from} --{event}--> {to}"
        );
    }
    assert_eq!(value("fsm_kernel_transitions_total"), 40.0);
    // Labels: only these keys, and nothing a machine holds or is called.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let labels = line
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map_or("", |(labels, _)| labels);
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let key = pair.split('=').next().unwrap();
            assert!(
                [
                    "machine", "shard", "outcome", "stage", "quantile", "worker", "from", "event",
                    "to"
                ]
                .contains(&key),
                "unexpected label {key} in {line}"
            );
        }
    }
    for secret in ["order-", "secret-shop", "tok_SECRET", "example"] {
        assert!(!text.contains(secret), "{secret} reached the metrics");
    }
}
