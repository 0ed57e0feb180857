//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/` (files named
//! `seed-*`): `cargo run -p fsm-fuzz-harness --bin seeds`. Deterministic, so rerunning it
//! changes nothing. Seeds give the fuzzers valid structure to mutate (whole envelopes of every
//! registrar state, with and without a journal) and the corpus tests a first set of inputs.

use std::fs;
use std::path::PathBuf;

use fsm_core::store::Codec;
use fsm_examples::registrar::Order;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut bytes = xorshift(0x00f5_eed5);
    for (target, _) in fsm_fuzz_harness::TARGETS {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("the corpus directory");
        let mut seeds: Vec<Vec<u8>> = (0..12usize).map(|i| bytes(8 + i * 24)).collect();
        if *target == "envelope_decode" {
            seeds.extend(envelopes());
        }
        if *target == "derive_input" {
            seeds.extend(
                DECLARATIONS
                    .iter()
                    .map(|d| [&[0u8][..], d.as_bytes()].concat()),
            );
        }
        for (i, seed) in seeds.iter().enumerate() {
            fs::write(dir.join(format!("seed-{i:02}")), seed).expect("a seed file");
        }
        println!("{target}: {} seeds", seeds.len());
    }
}

fn envelopes() -> Vec<Vec<u8>> {
    let codec = Codec::<Order>::new(1);
    let states = [
        Order::Draft,
        Order::Submitted {
            domain: "example.org".into(),
        },
        Order::Paid {
            domain: "example.org".into(),
            cents: 1200,
        },
        Order::Registered {
            domain: "example.org".into(),
        },
        Order::Failed {
            domain: "example.org".into(),
            reason: "taken".into(),
        },
        Order::Cancelled,
    ];
    let mut out = Vec::new();
    for (i, s) in states.iter().enumerate() {
        let plain = codec.encode(s, i as u64 + 1).expect("encodes").into_bytes();
        let journal = [1u8, 0, 0, 0, 7, b'k', b'e', b'y', b'-', b'0', b'1', 9];
        let journaled = codec
            .encode_with_journal(s, i as u64 + 1, &journal)
            .expect("encodes")
            .into_bytes();
        // The first byte is the target's mode: 0 as is, 1 resealed.
        for mode in [0u8, 1] {
            out.push([&[mode][..], &plain].concat());
            out.push([&[mode][..], &journaled].concat());
        }
    }
    // With a timers section: a named timer and an event timeout, as a kernel writes them
    // (postcard's layout of `(version, next instance, [(kind, name, instance, deadline,
    // duration, event)])`).
    let mut timers = vec![1u8];
    varint(&mut timers, 9);
    varint(&mut timers, 2);
    timers.extend_from_slice(&[2, 1, 5]);
    timers.extend_from_slice(b"retry");
    for v in [3, 1_800_000_000_000, 30_000] {
        varint(&mut timers, v);
    }
    timers.extend_from_slice(&[1, 3, 0, 1, 2]);
    timers.extend_from_slice(&[1, 0]);
    for v in [8, 1_800_000_005_000, 5_000] {
        varint(&mut timers, v);
    }
    timers.extend_from_slice(&[1, 1, 4]);
    let journal = [1u8, 0];
    for (i, s) in states.iter().enumerate() {
        let timed = codec
            .encode_with_sections(s, i as u64 + 1, &journal, Some(&timers))
            .expect("encodes")
            .into_bytes();
        for mode in [0u8, 1] {
            out.push([&[mode][..], &timed].concat());
        }
    }
    // With an outbox section too: two owed effects, as a kernel writes them (postcard's
    // layout of `(version, [(seq, index, attempts, not before, since, effect bytes)])`).
    let mut outbox = vec![1u8, 2];
    for (seq, index, attempts) in [(4u64, 0u64, 2u64), (4, 1, 0)] {
        for v in [seq, index, attempts, 1_800_000_009_000, 1_800_000_000_000] {
            varint(&mut outbox, v);
        }
        outbox.extend_from_slice(&[3, 0, 1, 2]);
    }
    for (i, s) in states.iter().enumerate() {
        let sections = fsm_core::store::Sections {
            journal: Some(&journal),
            timers: Some(&timers),
            outbox: Some(&outbox),
            state: None,
            sealed: None,
        };
        let owing = codec
            .encode_framed(s, i as u64 + 1, sections)
            .expect("encodes")
            .into_bytes();
        for mode in [0u8, 1] {
            out.push([&[mode][..], &owing].concat());
        }
    }
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Well-formed declarations, for the raw-text mode of `derive_input`.
const DECLARATIONS: &[&str] = &[
    "#[fsm(event = Cmd)] enum M { #[fsm(initial, on(Go => B))] A, #[fsm(terminal)] B }",
    "#[fsm(event = Cmd, effect = u8)] pub enum Door { #[fsm(initial, on(Lock => Locked), defer(Unlock))] Open, #[fsm(on(Unlock => Open), dump)] Locked { #[fsm(sensitive)] code: u32 } }",
    "#[fsm(event = Cmd)] enum G<T> { #[fsm(initial, on(Go | Stop => B), validate = ok)] A(T), #[fsm(on(Go => A), delegate(Tick))] B { #[fsm(strategy = s, arbitrary = a)] x: T } }",
    "enum Cmd { Go, Stop { n: u8 }, Tick(String) }",
    "#[fsm(event = Cmd, on(Audit => Done, plain), superstate(Active, initial = A, on(Stop => Done, plain), exit = left, state_timeout(s = 30 => Tick), on(Tick => Done, plain)), superstate(Inner, parent = Active, initial = B, on(Go => Inner, plain), on(Poke => B, plain, local), defer(Nope)))] enum H { #[fsm(initial, parent = Active, on(Go => Inner, plain))] A, #[fsm(parent = Inner, enter = came)] B, #[fsm(terminal)] Done }",
];

fn xorshift(mut seed: u64) -> impl FnMut(usize) -> Vec<u8> {
    move |n| {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }
}
