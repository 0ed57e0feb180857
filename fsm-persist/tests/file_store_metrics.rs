//! The file store's own figures (log, compactions, commits that waited, time spent compacting)
//! through the `metrics` facade, as Prometheus scrapes them, equal to `FileStore::stats`.
#![allow(missing_docs)]

use fsm_core::store::{Format, MachineId, Put, Snapshot, SnapshotStore};
use fsm_persist::FileStore;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::time::Duration;

#[test]
fn the_file_store_publishes_its_log_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let ids: Vec<MachineId> = (0..10)
        .map(|i| MachineId::new(format!("m{i}")).unwrap())
        .collect();
    let snap = Snapshot::new("T", 1, 1, Format::Postcard, b"x").unwrap();
    let batch: Vec<Put<'_>> = ids.iter().map(|id| Put::new(id, None, &snap)).collect();
    store.put_many(&batch).unwrap();
    store.checkpoint().unwrap();
    let stats = store.stats();
    assert!(stats.compactions >= 1, "{stats:?}");
    assert!(stats.compacting > Duration::ZERO, "{stats:?}");
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || store.publish_metrics());
    let text = handle.render();
    for name in [
        "fsm_file_store_log_bytes",
        "fsm_file_store_log_segments",
        "fsm_file_store_compactions_total",
        "fsm_file_store_compacted_snapshots_total",
        "fsm_file_store_commit_waits_total",
        "fsm_file_store_commit_wait_seconds",
        "fsm_file_store_compacting_seconds",
        "fsm_file_store_poisoned",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("fsm_file_store_compactions_total{"))
        .unwrap();
    assert!(line.ends_with(&format!(" {}", stats.compactions)), "{line}");
    let poisoned = text
        .lines()
        .find(|l| l.starts_with("fsm_file_store_poisoned{"))
        .unwrap();
    assert!(poisoned.ends_with(" 0"), "{poisoned}");
    let compacting = text
        .lines()
        .find(|l| l.starts_with("fsm_file_store_compacting_seconds{"))
        .unwrap();
    let seconds: f64 = compacting.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(seconds, stats.compacting.as_secs_f64(), "{compacting}");
}
