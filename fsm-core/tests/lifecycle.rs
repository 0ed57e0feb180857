//! A machine's lifecycle in a kernel, as the guide's chapter "Lifecycle" states it: when a
//! machine starts to exist, when its initial state's timeout is armed, and what an effect
//! worker's factory is given when it builds a worker again after a crash.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fsm_core::kernel::{EffectCtx, EffectError, EffectWorker, Kernel, KernelBuilder};
use fsm_core::queue::ManualClock;
use fsm_core::store::{MachineId, MemoryStore, SnapshotStore};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = Cmd, effect = Note)]
enum Trial {
    #[fsm(
        initial,
        state_timeout(ms = 1000 => Expire),
        on(Expire => Expired, plain),
        on(Ping => Open),
        on(Pay => Paid, plain)
    )]
    Open,
    #[fsm(terminal)]
    Paid,
    #[fsm(terminal)]
    Expired,
}

#[derive(Event, Debug, Clone, Serialize, Deserialize)]
enum Cmd {
    Expire,
    Ping { note: bool },
    Pay,
    Bogus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Note(u32);

impl Handler<cmd::Ping, trial::Open> for trial::Open {
    fn handle(
        _: trial::Open,
        e: cmd::Ping,
        fx: &mut Effects<Note>,
    ) -> Result<trial::Open, Refusal> {
        if e.note {
            fx.push(Note(7));
        }
        Ok(trial::Open)
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn builder(store: Arc<MemoryStore>, clock: &ManualClock) -> KernelBuilder<Trial> {
    Kernel::builder_shared(store, |_| Trial::Open)
        .shards(1)
        .clock(clock.clock())
}

/// Moves the clock, fires what is due and waits until the firings are decided.
fn advance(kernel: &Kernel<Trial>, clock: &ManualClock, by: u64) -> usize {
    clock.advance(ms(by));
    let fired = kernel.fire_due_timers();
    kernel.wait_idle();
    fired
}

#[test]
fn a_machine_exists_only_once_a_command_it_accepted_is_stored() {
    let clock = ManualClock::at_wall_ms(1_000_000);
    let store = Arc::new(MemoryStore::new());
    let kernel = builder(store.clone(), &clock).start().unwrap();
    let id = MachineId::new("t-1").unwrap();

    // A read answers the initial state and no sequence, and stores nothing.
    assert_eq!(kernel.state(&id).unwrap(), (Trial::Open, None));
    // A rejected command stores nothing either.
    let bogus = kernel.submit(&id, Cmd::Bogus).unwrap().wait();
    assert!(bogus.is_err(), "{bogus:?}");
    assert!(store.ids().unwrap().is_empty());
    // Neither armed the initial state's timeout: nothing fires, however long it waits.
    assert_eq!(advance(&kernel, &clock, 10_000), 0);
    assert_eq!(kernel.state(&id).unwrap(), (Trial::Open, None));
    assert!(store.ids().unwrap().is_empty());

    // The first accepted command stores it, under sequence 1.
    let first = kernel.submit(&id, Cmd::Pay).unwrap().wait().unwrap();
    assert_eq!(first.seq, 1);
    assert_eq!(store.ids().unwrap(), std::slice::from_ref(&id));
}

#[test]
fn the_initial_states_timeout_counts_from_the_first_accepted_command_and_is_stored_with_it() {
    let clock = ManualClock::at_wall_ms(1_000_000);
    let store = Arc::new(MemoryStore::new());
    let kernel = builder(store.clone(), &clock).start().unwrap();
    let id = MachineId::new("t-2").unwrap();
    // Read long before the first command: the timeout does not count from the read.
    kernel.state(&id).unwrap();
    clock.advance(ms(5_000));
    // A self-transition of the initial state: the machine stays in `Open`, entered now.
    kernel
        .submit(&id, Cmd::Ping { note: false })
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(advance(&kernel, &clock, 999), 0, "one millisecond early");

    // The armed timeout is in the stored snapshot: a new kernel over the store fires it.
    drop(kernel);
    let kernel = builder(store, &clock).start().unwrap();
    assert_eq!(
        advance(&kernel, &clock, 1),
        1,
        "due 1,000 ms after the first command"
    );
    assert_eq!(kernel.state(&id).unwrap(), (Trial::Expired, Some(2)));
    assert_eq!(advance(&kernel, &clock, 10_000), 0, "fired once");
}

#[test]
fn a_first_command_that_leaves_the_initial_state_never_arms_its_timeout() {
    let clock = ManualClock::at_wall_ms(1_000_000);
    let kernel = builder(Arc::new(MemoryStore::new()), &clock)
        .start()
        .unwrap();
    let id = MachineId::new("t-3").unwrap();
    kernel.submit(&id, Cmd::Pay).unwrap().wait().unwrap();
    assert_eq!(advance(&kernel, &clock, 5_000), 0);
    assert_eq!(kernel.state(&id).unwrap(), (Trial::Paid, Some(1)));
}

/// A worker that draws from its own seed, and panics on its first effect ever.
struct Seeded {
    seed: u64,
    seen: Arc<Mutex<Vec<(usize, u64)>>>,
    index: usize,
}

impl EffectWorker<Trial> for Seeded {
    fn run(&mut self, _: &EffectCtx, _: &Note) -> Result<Option<Cmd>, EffectError> {
        let mut seen = self.seen.lock().unwrap();
        seen.push((self.index, self.seed));
        if seen.len() == 1 {
            drop(seen);
            panic!("the first worker crashes");
        }
        Ok(None)
    }
}

#[test]
fn a_worker_rebuilt_after_a_crash_gets_its_index_again_and_seeds_from_a_start_counter() {
    let clock = ManualClock::at_wall_ms(1_000_000);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let starts = Arc::new(AtomicU64::new(0));
    let (s, c) = (seen.clone(), starts.clone());
    let kernel = builder(Arc::new(MemoryStore::new()), &clock)
        // The factory is given the worker's index, the same on every restart; a seed that
        // must differ per start comes from a counter of its own.
        .effects(1, move |index| Seeded {
            seed: c.fetch_add(1, Ordering::SeqCst),
            seen: s.clone(),
            index,
        })
        .start()
        .unwrap();
    let id = MachineId::new("t-4").unwrap();
    kernel
        .submit(&id, Cmd::Ping { note: true })
        .unwrap()
        .wait()
        .unwrap();
    // The crash's retry waits for its backoff on the kernel's clock.
    for _ in 0..100 {
        kernel.wait_idle();
        if seen.lock().unwrap().len() >= 2 {
            break;
        }
        advance(&kernel, &clock, 60_000);
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [(0, 0), (0, 1)],
        "same index, next seed"
    );
    assert_eq!(
        starts.load(Ordering::SeqCst),
        2,
        "built once, and again after the crash"
    );
    assert!(kernel.owed(&id).unwrap().is_empty());
}
