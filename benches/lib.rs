//! Benchmarks only; see `benches/`. The library holds the drivers that both the criterion
//! benches and the stand-alone measuring binaries run.

pub mod dispatch {
    //! The dispatch bench's driver, shared with the instruction-counting binary.

    use std::hint::black_box;

    use fsm_core::{Effects, StateMachine};
    use fsm_examples::registrar::{OrderCmd, OrderEffect};

    /// Feeds every event to the machine through the runtime dispatch, reusing one effects
    /// buffer; returns how many were accepted.
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
