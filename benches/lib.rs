//! Benchmarks only; see `benches/`. The library holds the drivers that both the criterion
//! benches and the stand-alone measuring binaries run.

#[path = "alloc.rs"]
pub mod alloc;

/// Processor time read from Linux's `/proc`, for the tools that report CPU per command. The
/// kernel's clock ticks (`USER_HZ`) are 100 a second on every Linux this runs on.
pub mod cpu {
    /// This process's processor time so far (user + system), from `/proc/self/stat`, in
    /// seconds; zero where there is no such file.
    pub fn process_seconds() -> f64 {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return 0.0;
        };
        // Fields after the command name (which is in parentheses and may hold spaces).
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return 0.0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
        let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
            f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
        });
        ticks / 100.0
    }

    /// Seconds every core of the machine spent busy so far (user, nice, system, irq,
    /// softirq), from `/proc/stat`: this process and any other, a database server on the
    /// same cores included; `None` where the file cannot be read.
    pub fn machine_busy_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<f64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        Some(
            [0, 1, 2, 5, 6]
                .iter()
                .filter_map(|&i| ticks.get(i))
                .sum::<f64>()
                / 100.0,
        )
    }
}

/// Runs `other` then `timed`, `iters` times, and returns the time `timed` took in all: for
/// criterion's `iter_custom`, so a function and its baseline meet the same moments of a disk
/// whose speed drifts.
pub fn alternate(
    iters: u64,
    timed: &mut dyn FnMut(),
    other: &mut dyn FnMut(),
) -> std::time::Duration {
    let mut total = std::time::Duration::ZERO;
    for _ in 0..iters {
        other();
        let start = std::time::Instant::now();
        timed();
        total += start.elapsed();
    }
    total
}

pub mod dispatch {
    //! The dispatch bench's driver, shared with the instruction-counting binary.

    use std::hint::black_box;

    use fsm_core::{Effects, StateMachine};
    use fsm_examples::registrar::{OrderCmd, OrderEffect};

    /// Feeds every event to the machine through the runtime dispatch, reusing one effects
    /// buffer; returns how many were accepted. Never inlined, so that what the compiler
    /// inlines into the loop does not depend on the binary that calls it.
    #[inline(never)]
    pub fn drive<M: StateMachine<Event = OrderCmd, Effect = OrderEffect>>(
        mut machine: M,
        events: Vec<OrderCmd>,
    ) -> usize {
        let mut effects = Effects::new();
        let mut accepted = 0;
        for event in events {
            if machine.apply_into(event, &mut effects).is_ok() {
                accepted += 1;
            }
            effects.drain();
        }
        black_box(machine);
        accepted
    }
}

pub mod queue {
    //! The queue bench's two sides: a crossbeam channel feeding the hand-written match, and
    //! the fsm queue feeding the derived machine.

    use std::hint::black_box;
    use std::thread;

    use fsm_core::queue::{self, Overload};
    use fsm_core::{Effects, StateMachine};
    use fsm_examples::registrar::{Order, OrderCmd};
    use fsm_examples::registrar_by_hand::HandOrder;

    /// Commands per run.
    pub const LEN: usize = 1_000_000;
    /// Capacity of both the channel and the queue.
    pub const CAPACITY: usize = 1024;

    /// One producer thread sends every event through a crossbeam bounded channel; this thread
    /// applies them to the hand-written machine.
    pub fn crossbeam_hand_match(events: Vec<OrderCmd>) -> usize {
        let (tx, rx) = crossbeam_channel::bounded::<OrderCmd>(CAPACITY);
        let producer = thread::spawn(move || {
            for event in events {
                tx.send(event).expect("the consumer outlives the producer");
            }
        });
        let mut machine = HandOrder::Draft;
        let mut effects = Effects::new();
        let mut applied = 0;
        for event in rx {
            if machine.apply_into(event, &mut effects).is_ok() {
                applied += 1;
            }
            effects.drain();
        }
        producer.join().expect("producer");
        black_box(machine);
        applied
    }

    /// `producers` threads submit their share of the events (in order within each share); this
    /// thread runs the derived machine's consumer until every producer is done.
    pub fn fsm_queue(streams: Vec<Vec<OrderCmd>>) -> u64 {
        fsm_queue_with(streams, true)
    }
    /// Like [`fsm_queue`], with latency measurement on or off.
    pub fn fsm_queue_with(streams: Vec<Vec<OrderCmd>>, lat: bool) -> u64 {
        let (tx, mut rx) = queue::bounded::<Order>(CAPACITY)
            .latency(lat)
            .overload(Overload::Backpressure)
            .build()
            .expect("valid configuration");
        let producers: Vec<_> = streams
            .into_iter()
            .map(|events| {
                let tx = tx.clone();
                thread::spawn(move || {
                    for event in events {
                        tx.submit(event).expect("back-pressure never drops");
                    }
                })
            })
            .collect();
        drop(tx);
        let mut machine = Order::Draft;
        let leftovers = rx.run(&mut machine, |effects| drop(effects));
        for p in producers {
            p.join().expect("producer");
        }
        assert!(leftovers.is_empty());
        black_box(machine);
        rx.metrics().counts.applied
    }

    /// W1 cut into `n` interleaved shares; with several producers the machine sees an
    /// interleaving, so some commands are rejected: the work per command stays comparable.
    pub fn shares(events: &[OrderCmd], n: usize) -> Vec<Vec<OrderCmd>> {
        let mut out = vec![Vec::with_capacity(events.len() / n + 1); n];
        for (i, e) in events.iter().enumerate() {
            out[i % n].push(e.clone());
        }
        out
    }
}

pub mod raw {
    //! The raw storage limits the stores and the kernel are compared with.

    use std::fs::{File, OpenOptions};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    use fsm_core::store::{Format, Snapshot};

    /// Bytes of each benchmark payload.
    pub const KIB: usize = 1024;

    /// A 1 KiB payload that differs per sequence.
    pub fn payload(seq: u64) -> Vec<u8> {
        (0..KIB)
            .map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8)
            .collect()
    }

    /// A 1 KiB payload in an envelope.
    pub fn envelope(seq: u64) -> Snapshot {
        Snapshot::new("Bench", 1, seq, Format::Postcard, &payload(seq)).unwrap()
    }

    /// [`envelope`] recording the state name `state`, as every codec-written snapshot does.
    pub fn stated_envelope(seq: u64, state: &str) -> Snapshot {
        let sections = fsm_core::store::Sections {
            state: Some(state),
            ..Default::default()
        };
        Snapshot::framed("Bench", 1, seq, Format::Postcard, sections, &payload(seq)).unwrap()
    }

    /// The raw batched-append limit: `n` envelopes appended to one file, one fdatasync.
    pub struct AppendLog {
        file: File,
        seq: u64,
    }

    impl AppendLog {
        /// A log file in `dir`.
        pub fn create(dir: &Path) -> Self {
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(dir.join("raw.log"))
                .unwrap();
            AppendLog { file, seq: 0 }
        }

        /// Appends `n` 1 KiB records and waits for them to be durable.
        pub fn append(&mut self, n: usize) {
            self.seq += 1;
            let mut records = Vec::with_capacity(n * (KIB + 64));
            for _ in 0..n {
                records.extend_from_slice(envelope(self.seq).as_bytes());
            }
            self.file.write_all(&records).unwrap();
            self.file.sync_data().unwrap();
        }
    }
}

pub mod kernel {
    //! The kernel bench's machine: a counter carrying 1 KiB of state, so each snapshot is the
    //! size of the raw baseline's records.

    use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
    use serde::{Deserialize, Serialize};

    /// A machine with 1 KiB of state.
    #[derive(StateMachine, Debug, Clone, Serialize, Deserialize)]
    #[fsm(event = BlobCmd)]
    pub enum Blob {
        /// Not yet touched.
        #[fsm(initial, on(Bump => Live))]
        New,
        /// Bumped at least once.
        #[fsm(on(Bump => Live))]
        Live {
            /// Bumps so far.
            n: u64,
            /// The state's bulk.
            data: Vec<u8>,
        },
    }

    /// The one command.
    #[derive(Event, Debug, Clone)]
    pub enum BlobCmd {
        /// Count one more.
        Bump,
    }

    impl Handler<blob_cmd::Bump, blob::Live> for blob::New {
        fn handle(
            _: blob::New,
            _: blob_cmd::Bump,
            _: &mut Effects<()>,
        ) -> Result<blob::Live, Refusal> {
            Ok(blob::Live {
                n: 1,
                data: super::raw::payload(1),
            })
        }
    }

    impl Handler<blob_cmd::Bump, blob::Live> for blob::Live {
        fn handle(
            s: blob::LiveRef<'_>,
            _: blob_cmd::Bump,
            _: &mut Effects<()>,
        ) -> Result<blob::Live, Refusal> {
            Ok(blob::Live {
                n: s.n + 1,
                data: s.data.clone(),
            })
        }
    }

    /// One command to each machine of `ids`, submitted together (one group commit per
    /// shard), waiting for every answer.
    pub fn round(kernel: &fsm_core::kernel::Kernel<Blob>, ids: &[fsm_core::store::MachineId]) {
        let tickets = kernel.submit_batch(
            ids.iter()
                .map(|id| (id.clone(), fsm_core::kernel::Request::new(BlobCmd::Bump))),
        );
        for t in tickets {
            t.unwrap().wait().unwrap();
        }
    }
}

/// The machine of the timers bench: one command with and one without a timer, otherwise the
/// same work, and the firing that records how late it came.
pub mod timers {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use fsm_core::kernel::{EffectCtx, EffectError, EffectWorker};
    use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
    use hdrhistogram::Histogram;
    use serde::{Deserialize, Serialize};

    /// Where bench time starts: deadlines and firing times are microseconds since it.
    pub fn micros() -> u64 {
        static BASE: OnceLock<Instant> = OnceLock::new();
        let base = *BASE.get_or_init(Instant::now);
        u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// A counter with a timer.
    #[derive(StateMachine, Debug, Clone, Serialize, Deserialize)]
    #[fsm(event = BeatCmd, effect = Fired)]
    pub enum Beat {
        /// Not yet touched.
        #[fsm(initial, on(Bump => Live), on(Arm => Live), on(Fire => Live))]
        New,
        /// Touched at least once.
        #[fsm(on(Bump => Live), on(Arm => Live), on(Fire => Live))]
        Live {
            /// Commands so far.
            n: u64,
        },
    }

    /// The commands.
    #[derive(Event, Debug, Clone, Serialize, Deserialize)]
    pub enum BeatCmd {
        /// Count one more.
        Bump,
        /// Count one more and (re-)arm the timer `t` to fire at `due` (bench microseconds),
        /// or `after_ms` from now when `due` is 0.
        Arm {
            /// Microseconds since the bench's base.
            due: u64,
            /// Used when `due` is 0.
            after_ms: u64,
        },
        /// What the timer fires.
        Fire {
            /// The deadline it was armed for.
            due: u64,
        },
    }

    /// A firing, for the effect worker to time.
    #[derive(Debug, Clone, Copy)]
    pub struct Fired {
        /// The deadline, in bench microseconds.
        pub due: u64,
    }

    fn arm(e: &beat_cmd::Arm, fx: &mut Effects<Fired>) {
        let (after, due) = if e.due == 0 {
            let after = Duration::from_millis(e.after_ms);
            (after, micros() + e.after_ms * 1000)
        } else {
            let now = micros();
            (
                Duration::from_micros(e.due.saturating_sub(now).max(1000)),
                e.due,
            )
        };
        fx.start_timer("t", after, BeatCmd::Fire { due });
    }

    impl Handler<beat_cmd::Bump, beat::Live> for beat::New {
        fn handle(
            _: beat::New,
            _: beat_cmd::Bump,
            _: &mut Effects<Fired>,
        ) -> Result<beat::Live, Refusal> {
            Ok(beat::Live { n: 1 })
        }
    }
    impl Handler<beat_cmd::Arm, beat::Live> for beat::New {
        fn handle(
            _: beat::New,
            e: beat_cmd::Arm,
            fx: &mut Effects<Fired>,
        ) -> Result<beat::Live, Refusal> {
            arm(&e, fx);
            Ok(beat::Live { n: 1 })
        }
    }
    impl Handler<beat_cmd::Fire, beat::Live> for beat::New {
        fn handle(
            _: beat::New,
            e: beat_cmd::Fire,
            fx: &mut Effects<Fired>,
        ) -> Result<beat::Live, Refusal> {
            fx.push(Fired { due: e.due });
            Ok(beat::Live { n: 1 })
        }
    }

    impl Handler<beat_cmd::Bump, beat::Live> for beat::Live {
        fn handle(
            s: beat::LiveRef<'_>,
            _: beat_cmd::Bump,
            _: &mut Effects<Fired>,
        ) -> Result<beat::Live, Refusal> {
            Ok(beat::Live { n: s.n + 1 })
        }
    }
    impl Handler<beat_cmd::Arm, beat::Live> for beat::Live {
        fn handle(
            s: beat::LiveRef<'_>,
            e: beat_cmd::Arm,
            fx: &mut Effects<Fired>,
        ) -> Result<beat::Live, Refusal> {
            arm(&e, fx);
            Ok(beat::Live { n: s.n + 1 })
        }
    }
    impl Handler<beat_cmd::Fire, beat::Live> for beat::Live {
        fn handle(
            s: beat::LiveRef<'_>,
            e: beat_cmd::Fire,
            fx: &mut Effects<Fired>,
        ) -> Result<beat::Live, Refusal> {
            fx.push(Fired { due: e.due });
            Ok(beat::Live { n: s.n + 1 })
        }
    }

    /// Lateness of firings (microseconds from deadline to the effect running, after the
    /// firing is durable), and how many came.
    #[derive(Clone)]
    pub struct Lateness {
        /// The histogram.
        pub hist: Arc<Mutex<Histogram<u64>>>,
        /// Firings seen.
        pub seen: Arc<AtomicU64>,
        /// When the last one ran, in bench microseconds.
        pub last: Arc<AtomicU64>,
    }

    impl Default for Lateness {
        fn default() -> Self {
            Lateness {
                hist: Arc::new(Mutex::new(
                    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
                )),
                seen: Arc::new(AtomicU64::new(0)),
                last: Arc::new(AtomicU64::new(0)),
            }
        }
    }

    impl EffectWorker<Beat> for Lateness {
        fn run(&mut self, _: &EffectCtx, f: &Fired) -> Result<Option<BeatCmd>, EffectError> {
            let now = micros();
            let _ = self
                .hist
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(now.saturating_sub(f.due).max(1));
            self.last.fetch_max(now, Ordering::Relaxed);
            self.seen.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
    }
}

pub mod effects {
    //! The effects bench's machine: a ledger whose every entry owes a receipt.

    use std::time::Duration;

    use fsm_core::kernel::{
        EffectCtx, EffectError, EffectWorker, Kernel, KernelBuilder, RetryPolicy,
    };
    use fsm_core::store::MachineId;
    use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
    use serde::{Deserialize, Serialize};

    /// A ledger: the entries posted so far.
    #[derive(StateMachine, Debug, Clone, Serialize, Deserialize)]
    #[fsm(event = Post, effect = Receipt)]
    pub enum Ledger {
        /// Its one state.
        #[fsm(initial, on(Entry => Ledger), on(Sent => Ledger))]
        Ledger {
            /// Entries posted.
            n: u64,
            /// Receipts the mailer confirmed.
            sent: u64,
        },
    }

    /// The one command.
    #[derive(Event, Debug, Clone)]
    pub enum Post {
        /// Post an entry (owes a receipt).
        Entry,
        /// The mailer sent a receipt.
        Sent,
    }

    /// What a posted entry asks for: a receipt sent out (a few bytes, as most effects).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Receipt {
        /// The entry.
        pub entry: u64,
        /// Where it goes.
        pub to: String,
    }

    impl Handler<post::Entry, ledger::Ledger> for ledger::Ledger {
        fn handle(
            s: ledger::LedgerRef<'_>,
            _: post::Entry,
            fx: &mut Effects<Receipt>,
        ) -> Result<ledger::Ledger, Refusal> {
            fx.push(Receipt {
                entry: *s.n + 1,
                to: "billing@example.org".into(),
            });
            Ok(ledger::Ledger {
                n: *s.n + 1,
                sent: *s.sent,
            })
        }
    }

    impl Handler<post::Sent, ledger::Ledger> for ledger::Ledger {
        fn handle(
            s: ledger::LedgerRef<'_>,
            _: post::Sent,
            _: &mut Effects<Receipt>,
        ) -> Result<ledger::Ledger, Refusal> {
            Ok(ledger::Ledger {
                n: *s.n,
                sent: *s.sent + 1,
            })
        }
    }

    /// Sends the receipt (does nothing) and answers without an event, or with `Sent` when
    /// `reply`; with `crash`, panics instead (so an intensity of 0 escalates it and what is
    /// owed waits).
    #[derive(Clone, Copy)]
    pub struct Mailer {
        /// Panic instead of sending.
        pub crash: bool,
        /// Answer with `Sent`.
        pub reply: bool,
    }

    impl EffectWorker<Ledger> for Mailer {
        fn run(&mut self, _: &EffectCtx, r: &Receipt) -> Result<Option<Post>, EffectError> {
            assert!(!self.crash, "the mail server is gone");
            std::hint::black_box(r);
            Ok(self.reply.then_some(Post::Sent))
        }
    }

    /// `n` machine ids.
    pub fn ids(n: usize) -> Vec<MachineId> {
        (0..n)
            .map(|i| MachineId::new(format!("ledger-{i}")).unwrap())
            .collect()
    }

    /// Starts `b` with one `mailer` worker, effects durable or at most once; a crashed effect
    /// waits an hour for its retry.
    pub fn with_effects(b: KernelBuilder<Ledger>, durable: bool, mailer: Mailer) -> Kernel<Ledger> {
        let hour = Duration::from_secs(3600);
        let b = b
            .trace_capacity(0)
            .retry(RetryPolicy::new(hour, 1, hour, 10).unwrap());
        if durable {
            b.effects(1, move |_| mailer).start().unwrap()
        } else {
            b.effects_at_most_once(1, move |_| mailer).start().unwrap()
        }
    }
}
