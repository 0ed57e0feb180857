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
