//! The typed side of Layer 4: `Codec` (schema versions, migrations, invariants after decode)
//! and the in-memory store through the typed helpers. The byte-level contract of every backend,
//! the memory store included, is checked by the conformance suite in fsm-persist.
#![allow(missing_docs)] // test machines

use fsm_core::store::{
    Codec, DecodeError, Format, Limits, LoadError, MachineId, MemoryStore, Snapshot,
    SnapshotStoreExt, StoreError,
};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = Op)]
pub enum Account {
    #[fsm(initial, on(Open => Active))]
    New,
    #[fsm(on(Open => Active), validate = non_negative)]
    Active { owner: String, balance: i64 },
}

#[derive(Event, Debug, Clone)]
pub enum Op {
    Open { owner: String },
}

fn non_negative(a: account::ActiveRef<'_>) -> Result<(), Refusal> {
    if *a.balance >= 0 {
        Ok(())
    } else {
        Err(Refusal::new("balance below zero"))
    }
}

impl Handler<op::Open, account::Active> for account::New {
    fn handle(
        _: account::New,
        e: op::Open,
        _: &mut Effects<()>,
    ) -> Result<account::Active, Refusal> {
        Ok(account::Active {
            owner: e.owner,
            balance: 0,
        })
    }
}

impl Handler<op::Open, account::Active> for account::Active {
    fn handle(
        s: account::ActiveRef<'_>,
        _: op::Open,
        _: &mut Effects<()>,
    ) -> Result<account::Active, Refusal> {
        Ok(account::Active {
            owner: s.owner.clone(),
            balance: *s.balance,
        })
    }
}

/// What schema version 1 looked like: no owner.
#[derive(Serialize, Deserialize)]
enum AccountV1 {
    New,
    Active { balance: i64 },
}

fn v1_snapshot(state: &AccountV1, seq: u64) -> Snapshot {
    Snapshot::new(
        "Account",
        1,
        seq,
        Format::Postcard,
        &postcard::to_allocvec(state).unwrap(),
    )
    .unwrap()
}

fn active(owner: &str, balance: i64) -> Account {
    Account::Active {
        owner: owner.into(),
        balance,
    }
}

#[test]
fn a_machine_round_trips_through_the_codec() {
    let codec = Codec::<Account>::new(2);
    let s = codec.encode(&active("ada", 12), 9).unwrap();
    assert_eq!(s.seq(), 9);
    assert_eq!(s.machine(), "Account");
    assert_eq!(s.schema_version(), 2);
    assert_eq!(codec.decode(&s).unwrap(), active("ada", 12));
    assert_eq!(
        codec.decode_bytes(s.as_bytes()).unwrap(),
        (active("ada", 12), 9)
    );
}

#[test]
fn an_older_schema_runs_through_its_migration_and_then_the_invariant() {
    let codec = Codec::<Account>::new(2).migrate_from(1, |old: AccountV1| match old {
        AccountV1::New => Account::New,
        AccountV1::Active { balance } => Account::Active {
            owner: "unknown".into(),
            balance,
        },
    });
    let good = v1_snapshot(&AccountV1::Active { balance: 5 }, 3);
    assert_eq!(codec.decode(&good).unwrap(), active("unknown", 5));
    // The migrated state still has to be valid.
    let bad = v1_snapshot(&AccountV1::Active { balance: -5 }, 4);
    let err = codec.decode(&bad).unwrap_err();
    assert!(
        matches!(err, DecodeError::Invalid(ref e) if e.state_name() == "Active"),
        "{err}"
    );
}

#[test]
fn an_older_schema_without_a_migration_is_a_typed_error_naming_the_fix() {
    let codec = Codec::<Account>::new(3);
    let err = codec.decode(&v1_snapshot(&AccountV1::New, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::NoMigration {
                found: 1,
                current: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("migrate_from(1"), "{err}");
}

#[test]
fn a_newer_schema_is_refused_loudly() {
    let newer = Codec::<Account>::new(5).encode(&Account::New, 1).unwrap();
    let err = Codec::<Account>::new(4).decode(&newer).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::NewerSchema {
                found: 5,
                supported: 4,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_snapshot_of_another_machine_type_is_refused() {
    let other = Snapshot::new("Invoice", 1, 1, Format::Postcard, &[0]).unwrap();
    let err = Codec::<Account>::new(1).decode(&other).unwrap_err();
    assert!(
        matches!(err, DecodeError::WrongMachine { expected: "Account", ref found } if found == "Invoice"),
        "{err}"
    );
}

#[test]
fn an_invalid_state_is_refused_after_decode() {
    let codec = Codec::<Account>::new(1);
    // Encoding does not judge; decoding does.
    let s = codec.encode(&active("eve", -1), 1).unwrap();
    assert!(matches!(codec.decode(&s), Err(DecodeError::Invalid(_))));
}

#[test]
fn payload_garbage_and_trailing_bytes_are_payload_errors() {
    let codec = Codec::<Account>::new(1);
    let garbage = Snapshot::new("Account", 1, 1, Format::Postcard, &[9, 9, 9]).unwrap();
    assert!(matches!(
        codec.decode(&garbage),
        Err(DecodeError::Payload { .. })
    ));
    let mut payload = postcard::to_allocvec(&Account::New).unwrap();
    payload.push(0);
    let trailing = Snapshot::new("Account", 1, 1, Format::Postcard, &payload).unwrap();
    let err = codec.decode(&trailing).unwrap_err();
    assert!(err.to_string().contains("left over"), "{err}");
}

#[test]
fn untrusted_bytes_are_bounded_by_the_codec_limits() {
    let codec = Codec::<Account>::new(1).limits(Limits { max_payload: 8 });
    let big = Codec::<Account>::new(1)
        .encode(&active(&"x".repeat(64), 1), 1)
        .unwrap();
    assert!(matches!(
        codec.decode_bytes(big.as_bytes()),
        Err(DecodeError::Envelope(_))
    ));
    assert!(codec.decode_bytes(b"").is_err());
}

#[cfg(feature = "json")]
#[test]
fn json_payloads_are_readable_and_decode_with_any_codec() {
    let json = Codec::<Account>::new(1).format(Format::Json);
    let s = json.encode(&active("ada", 3), 1).unwrap();
    assert_eq!(s.format(), Format::Json);
    let text = std::str::from_utf8(s.payload()).unwrap();
    assert!(text.contains("\"owner\":\"ada\""), "{text}");
    // A codec that writes postcard still reads JSON snapshots.
    assert_eq!(
        Codec::<Account>::new(1).decode(&s).unwrap(),
        active("ada", 3)
    );
}

#[test]
fn load_and_save_go_through_the_codec_and_the_compare_and_set() {
    let store = MemoryStore::new();
    let codec = Codec::<Account>::new(1);
    let id = MachineId::new("acct-1").unwrap();
    assert!(store.load(&id, &codec).unwrap().is_none());
    assert_eq!(store.save(&id, None, &Account::New, &codec).unwrap(), 1);
    assert_eq!(
        store.save(&id, Some(1), &active("ada", 0), &codec).unwrap(),
        2
    );
    assert_eq!(
        store.load(&id, &codec).unwrap(),
        Some((active("ada", 0), 2))
    );
    let stale = store
        .save(&id, Some(1), &active("mallory", 0), &codec)
        .unwrap_err();
    assert!(
        matches!(
            stale,
            LoadError::Store(StoreError::Conflict {
                expected: Some(1),
                found: Some(2),
                ..
            })
        ),
        "{stale}"
    );
    assert_eq!(
        store.load(&id, &codec).unwrap(),
        Some((active("ada", 0), 2))
    );
}

mod untrusted {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes never panic the decoder; they are an error or a valid machine.
        #[test]
        fn arbitrary_bytes_decode_to_an_error_or_a_valid_machine(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok((machine, _)) = Codec::<Account>::new(1).decode_bytes(&bytes) {
                prop_assert!(machine.validate().is_ok());
            }
        }

        /// A valid envelope with any byte changed or any length cut is refused (CRC32C catches
        /// every change of up to 32 bits in a message this short).
        #[test]
        fn a_damaged_envelope_is_always_refused(at in 0usize..1000, xor in 1u8..=255, cut in 0usize..1000) {
            let codec = Codec::<Account>::new(1);
            let good = codec.encode(&active("ada", 7), 3).unwrap().into_bytes();
            let mut flipped = good.clone();
            let at = at % good.len();
            flipped[at] ^= xor;
            prop_assert!(codec.decode_bytes(&flipped).is_err());
            let cut = cut % good.len();
            prop_assert!(codec.decode_bytes(&good[..cut]).is_err());
        }
    }
}
