//! Feature `metrics`: the queue's counts reach a `metrics` recorder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

use crate::light::{self, drain, step, Cmd, Light};

type Values = Arc<Mutex<HashMap<String, f64>>>;

/// One metric's handle: writes its value under `name{labels}`.
struct Cell {
    name: String,
    values: Values,
}

impl Cell {
    fn set(&self, v: f64) {
        self.values.lock().unwrap().insert(self.name.clone(), v);
    }
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        *self
            .values
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default() += value as f64;
    }
    fn absolute(&self, value: u64) {
        self.set(value as f64);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        *self
            .values
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self
            .values
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default() -= value;
    }
    fn set(&self, value: f64) {
        Cell::set(self, value);
    }
}

#[derive(Default)]
struct Capture(Values);

impl Capture {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        Arc::new(Cell {
            name: format!("{}{{{}}}", key.name(), labels.join(",")),
            values: self.0.clone(),
        })
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn counts_reach_the_metrics_facade() {
    let capture = Capture::default();
    let values = capture.0.clone();
    let (tx, mut rx) = light::queue(8);
    tx.try_submit(step(0, 0)).unwrap();
    tx.try_submit(Cmd::Bad).unwrap();
    tx.try_submit(light::walk(1)).unwrap(); // postponed in Amber
    metrics::with_local_recorder(&capture, || {
        drain(&mut rx, &mut Light::Red);
    });
    let v = values.lock().unwrap();
    let get = |name: &str| v.get(&format!("{name}{{machine=Light}}")).copied();
    assert_eq!(get("fsm_queue_submitted_total"), Some(3.0));
    assert_eq!(get("fsm_queue_applied_total"), Some(1.0));
    assert_eq!(get("fsm_queue_rejected_total"), Some(1.0));
    assert_eq!(get("fsm_queue_deferred"), Some(1.0));
    assert_eq!(get("fsm_queue_queued"), Some(0.0));
    assert_eq!(get("fsm_queue_high_water"), Some(3.0));
}
