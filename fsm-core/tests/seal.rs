//! Sensitive fields sealed at rest: round trip, key rotation, a wrong or missing key (typed
//! errors; a kernel quarantines the machine), a tampered ciphertext, snapshots written before
//! sealing, and no plaintext byte of a sensitive field in the store's files (file store and
//! SQLite), the trace or the admin answers.
#![allow(missing_docs)]

use std::path::Path;

use fsm_core::kernel::{CommandError, Kernel, QuarantineCause, TraceFilter};
use fsm_core::store::{
    sealed_key, Codec, DecodeError, Format, Limits, MachineId, SealError, Snapshot, SnapshotStore,
};
use fsm_core::store::{Keyring, Sealer};
use fsm_core::{Event, Redacted, StateMachine};
use fsm_persist::{FileStore, SqliteStore};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = Cmd)]
pub enum Account {
    #[fsm(initial, on(Open => Active, with = open))]
    New,
    #[fsm(on(Pay => Active, update = pay), on(Close => Closed, plain))]
    Active {
        balance: u64,
        #[fsm(sensitive)]
        card: String,
        #[fsm(sensitive)]
        pin: Option<u32>,
    },
    #[fsm(terminal)]
    Closed,
}

#[derive(Event, Debug, Clone, Serialize, Deserialize)]
pub enum Cmd {
    Open {
        #[fsm(sensitive)]
        card: String,
    },
    Pay {
        cents: u64,
    },
    Close,
}

fn open(
    _: account::New,
    e: cmd::Open,
    _: &mut fsm_core::Effects<()>,
) -> Result<account::Active, fsm_core::Refusal> {
    Ok(account::Active {
        balance: 0,
        card: e.card,
        pin: Some(4242),
    })
}

fn pay(
    s: &mut account::Active,
    e: cmd::Pay,
    _: &mut fsm_core::Effects<()>,
) -> Result<(), fsm_core::Refusal> {
    s.balance += e.cents;
    Ok(())
}

const CARD: &str = "4111-1111-1111-1111";

fn active() -> Account {
    Account::Active {
        balance: 7,
        card: CARD.into(),
        pin: Some(9876),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn keyring(id: u32, fill: u8) -> Keyring {
    Keyring::new(id, [fill; 32])
}

#[test]
fn sealed_fields_round_trip_and_are_not_in_the_stored_bytes() {
    let codec = Codec::<Account>::new(1).sealed(keyring(1, 7));
    let snapshot = codec.encode(&active(), 3).unwrap();
    assert!(!contains(snapshot.as_bytes(), CARD.as_bytes()));
    assert!(!contains(snapshot.as_bytes(), &9876u32.to_le_bytes()));
    let (key, _) = sealed_key(snapshot.sealed().expect("a sealed section")).unwrap();
    assert_eq!(key, 1);
    assert_eq!(
        snapshot.state(),
        Some("Active"),
        "the state's name is not sealed"
    );
    assert_eq!(codec.decode(&snapshot).unwrap(), active());
    // A state without sensitive fields has no sealed section.
    assert_eq!(codec.encode(&Account::Closed, 4).unwrap().sealed(), None);
    // Through the bytes, as a store hands them back.
    let back = Snapshot::from_bytes(snapshot.into_bytes(), &Limits::DEFAULT).unwrap();
    assert_eq!(codec.decode(&back).unwrap(), active());
}

#[test]
fn keys_rotate_old_snapshots_read_with_the_old_key_new_ones_are_written_with_the_new() {
    let first = Keyring::new(1, Keyring::generate_key());
    let old = Codec::<Account>::new(1)
        .sealed(first.clone())
        .encode(&active(), 1)
        .unwrap();
    let rotated = Keyring::new(2, Keyring::generate_key()).with_key(1, first.key(1).unwrap());
    assert_eq!(rotated.current_key(), 2);
    let codec = Codec::<Account>::new(1).sealed(rotated);
    assert_eq!(codec.decode(&old).unwrap(), active());
    let new = codec.encode(&active(), 2).unwrap();
    assert_eq!(sealed_key(new.sealed().unwrap()).unwrap().0, 2);
    // A reader that only has the first key cannot read what the second sealed.
    match Codec::<Account>::new(1).sealed(first).decode(&new) {
        Err(DecodeError::Unseal(SealError::UnknownKey { key_id: 2 })) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wrong_key_a_missing_key_and_altered_bytes_are_typed_errors() {
    let snapshot = Codec::<Account>::new(1)
        .sealed(keyring(1, 7))
        .encode(&active(), 1)
        .unwrap();
    // The same id, other key bytes.
    let err = Codec::<Account>::new(1)
        .sealed(keyring(1, 8))
        .decode(&snapshot)
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::Unseal(SealError::Tampered { key_id: 1 })),
        "{err}"
    );
    // No keyring at all: said so, never the defaults handed back as the state.
    let err = Codec::<Account>::new(1).decode(&snapshot).unwrap_err();
    assert!(matches!(err, DecodeError::Sealed { key_id: 1 }), "{err}");
    assert!(err.to_string().contains("Codec::sealed"), "{err}");
    // For printing, the rest of the machine reads without the key; the sealed fields hold
    // their defaults and print redacted.
    let mut shown = Codec::<Account>::new(1).decode_redacted(&snapshot).unwrap();
    assert_eq!(
        shown,
        Account::Active {
            balance: 7,
            card: String::new(),
            pin: None
        }
    );
    assert_eq!(
        format!("{:?}", Redacted(&shown)),
        "Active { balance: 7, card: <redacted>, pin: <redacted> }"
    );
    assert_eq!(
        Codec::<Account>::sensitive_fields(&mut shown),
        ["card", "pin"]
    );

    // Every single flipped bit of the sealed section (checksum fixed up, as an attacker with
    // write access would) is refused, never decoded into something else.
    let codec = Codec::<Account>::new(1).sealed(keyring(1, 7));
    let bytes = snapshot.as_bytes().to_vec();
    let section = snapshot.sealed().unwrap();
    let start = bytes.len() - 4 - snapshot.payload().len() - section.len();
    for i in start * 8..(start + section.len()) * 8 {
        let mut b = bytes.clone();
        b[i / 8] ^= 1 << (i % 8);
        let n = b.len();
        let crc = crc32c::crc32c(&b[..n - 4]);
        b[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let altered = Snapshot::from_bytes(b, &Limits::DEFAULT).unwrap();
        let err = codec.decode(&altered).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Unseal(
                    SealError::Tampered { .. }
                        | SealError::UnknownKey { .. }
                        | SealError::Malformed(_)
                )
            ),
            "bit {i}: {err}"
        );
    }
    // A sealed section moved into another snapshot (another sequence) does not open.
    let other = codec.encode(&active(), 2).unwrap();
    let moved = Snapshot::framed(
        "Account",
        1,
        1,
        Format::Postcard,
        fsm_core::store::Sections {
            state: Some("Active"),
            sealed: other.sealed(),
            ..Default::default()
        },
        snapshot.payload(),
    )
    .unwrap();
    assert!(matches!(
        codec.decode(&moved),
        Err(DecodeError::Unseal(SealError::Tampered { .. }))
    ));
}

#[test]
fn snapshots_written_before_sealing_read_as_before_and_are_sealed_when_next_written() {
    let plain = Codec::<Account>::new(1).encode(&active(), 1).unwrap();
    assert!(
        contains(plain.as_bytes(), CARD.as_bytes()),
        "unsealed: in clear"
    );
    let codec = Codec::<Account>::new(1).sealed(keyring(5, 1));
    assert_eq!(codec.decode(&plain).unwrap(), active());
    let again = codec.encode(&codec.decode(&plain).unwrap(), 2).unwrap();
    assert!(!contains(again.as_bytes(), CARD.as_bytes()));
}

/// Every byte of every file under `dir`.
fn all_files(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

fn run_kernel(store: std::sync::Arc<dyn SnapshotStore>, codec: Codec<Account>) -> Kernel<Account> {
    Kernel::builder_shared(store, Account::initial_state)
        .codec(codec)
        .shards(2)
        .start()
        .unwrap()
}

/// A kernel with a sealing codec on `open()`'s store: the card never reaches the disk or the
/// trace; reopened with the key it reads back, with another key or none the machine is
/// quarantined with a typed cause.
fn a_kernel_keeps_the_card_off_the_disk(
    dir: &Path,
    open: &dyn Fn() -> std::sync::Arc<dyn SnapshotStore>,
) {
    let keys = Keyring::new(1, Keyring::generate_key());
    let id = MachineId::new("acct-1").unwrap();
    {
        let k = run_kernel(open(), Codec::new(1).sealed(keys.clone()));
        k.submit(&id, Cmd::Open { card: CARD.into() })
            .unwrap()
            .wait()
            .unwrap();
        k.submit(&id, Cmd::Pay { cents: 5 })
            .unwrap()
            .wait()
            .unwrap();
        k.wait_idle();
        let (state, _) = k.state(&id).unwrap();
        assert!(matches!(state, Account::Active { ref card, balance: 5, .. } if card == CARD));
        let trace = format!("{:?}", k.trace(&TraceFilter::new()));
        assert!(!trace.contains(CARD), "{trace}");
    }
    let disk = all_files(dir);
    assert!(!disk.is_empty());
    assert!(
        !contains(&disk, CARD.as_bytes()),
        "the card is in the store's files"
    );
    assert!(
        !contains(&disk, b"1111-1111"),
        "part of the card is in the store's files"
    );

    // The key: read back.
    {
        let k = run_kernel(open(), Codec::new(1).sealed(keys.clone()));
        let (state, _) = k.state(&id).unwrap();
        assert!(matches!(state, Account::Active { ref card, .. } if card == CARD));
    }
    // Another key, or none: quarantined, typed, never run on the defaults.
    for codec in [
        Codec::new(1).sealed(Keyring::new(1, Keyring::generate_key())),
        Codec::new(1),
    ] {
        let k = run_kernel(open(), codec);
        match k.submit(&id, Cmd::Pay { cents: 1 }).unwrap().wait() {
            Err(CommandError::Quarantined(q)) => match &q.cause {
                QuarantineCause::Decode(
                    e @ (DecodeError::Unseal(_) | DecodeError::Sealed { .. }),
                ) => {
                    assert!(e.to_string().contains("key 1"), "{e}")
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_kernel_on_the_file_store_keeps_sensitive_fields_off_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    a_kernel_keeps_the_card_off_the_disk(dir.path(), &|| {
        std::sync::Arc::new(FileStore::open(&path).unwrap())
    });
}

#[test]
fn a_kernel_on_sqlite_keeps_sensitive_fields_off_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accounts.db");
    a_kernel_keeps_the_card_off_the_disk(dir.path(), &|| {
        std::sync::Arc::new(SqliteStore::open(&path).unwrap())
    });
}
