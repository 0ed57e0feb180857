//! Queries by state through a running kernel, on the memory, file and SQLite stores: counts
//! per state (every declared state present), pages of the machines in one state, machines
//! whose snapshots predate state names decoded into their states, and snapshots that do not
//! decode counted as unreadable.
#![allow(missing_docs)]

use std::sync::Arc;

use fsm_core::kernel::Kernel;
use fsm_core::store::{
    Codec, Format, ListQuery, MachineId, MemoryStore, Snapshot, SnapshotStore, StateFilter,
};
use fsm_core::{Event, StateMachine};
use fsm_persist::{FileStore, SqliteStore};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = Cmd)]
pub enum Sub {
    #[fsm(initial, on(Start => Active, with = start))]
    Trial,
    #[fsm(on(Miss => PastDue, with = miss), on(Cancel => Cancelled, plain))]
    Active { misses: u32 },
    #[fsm(on(Pay => Active, with = pay), on(Cancel => Cancelled, plain))]
    PastDue { misses: u32 },
    #[fsm(terminal)]
    Cancelled,
}

fn start(
    _: sub::Trial,
    _: cmd::Start,
    _: &mut fsm_core::Effects<()>,
) -> Result<sub::Active, fsm_core::Refusal> {
    Ok(sub::Active { misses: 0 })
}

fn miss(
    s: sub::ActiveRef<'_>,
    _: cmd::Miss,
    _: &mut fsm_core::Effects<()>,
) -> Result<sub::PastDue, fsm_core::Refusal> {
    Ok(sub::PastDue {
        misses: *s.misses + 1,
    })
}

fn pay(
    s: sub::PastDueRef<'_>,
    _: cmd::Pay,
    _: &mut fsm_core::Effects<()>,
) -> Result<sub::Active, fsm_core::Refusal> {
    Ok(sub::Active { misses: *s.misses })
}

#[derive(Event, Debug, Clone)]
pub enum Cmd {
    Start,
    Miss,
    Pay,
    Cancel,
}

fn id(s: &str) -> MachineId {
    MachineId::new(s).unwrap()
}

/// Runs a kernel on `store`, puts machines in every state but one, and checks the answers.
fn counts_and_pages_follow_the_machines(store: Arc<dyn SnapshotStore>) {
    let k = Kernel::builder_shared(store.clone(), |_| Sub::Trial)
        .shards(2)
        .start()
        .unwrap();
    let run = |name: &str, cmds: &[Cmd]| {
        for c in cmds {
            k.submit(&id(name), c.clone()).unwrap().wait().unwrap();
        }
    };
    for i in 0..25 {
        let name = format!("sub-{i:02}");
        match i % 5 {
            0 | 1 => run(&name, &[Cmd::Start]),
            2 | 3 => run(&name, &[Cmd::Start, Cmd::Miss]),
            _ => run(
                &name,
                &[Cmd::Start, Cmd::Miss, Cmd::Pay, Cmd::Miss, Cmd::Cancel],
            ),
        }
    }
    let counts = k.count_states().unwrap();
    assert_eq!(
        counts.get("Trial"),
        0,
        "a declared state with no machine is present: {counts:?}"
    );
    assert!(counts.states.contains_key("Trial"));
    assert_eq!(
        (
            counts.get("Active"),
            counts.get("PastDue"),
            counts.get("Cancelled")
        ),
        (10, 10, 5),
        "{counts:?}"
    );
    assert_eq!(
        (counts.unrecorded, counts.unreadable, counts.total()),
        (0, 0, 25)
    );

    let mut past_due = Vec::new();
    let mut page = k.machines(&ListQuery::in_state("PastDue", 3)).unwrap();
    loop {
        assert!(page.ids.len() <= 3);
        past_due.extend(page.ids.iter().map(|m| m.to_string()));
        let Some(next) = page.next().cloned() else {
            break;
        };
        page = k
            .machines(&ListQuery::in_state("PastDue", 3).after(&next))
            .unwrap();
    }
    let want: Vec<String> = (0..25)
        .filter(|i| matches!(i % 5, 2 | 3))
        .map(|i| format!("sub-{i:02}"))
        .collect();
    assert_eq!(past_due, want);

    // A machine whose snapshot predates state names (its payload as the codec writes it,
    // without the state section) is decoded into its state; bytes of another shape are
    // unreadable.
    let codec = Codec::<Sub>::new(1);
    let past = codec.encode(&Sub::PastDue { misses: 3 }, 1).unwrap();
    let legacy = Snapshot::new("Sub", 1, 1, Format::Postcard, past.payload()).unwrap();
    assert_eq!(legacy.state(), None);
    store.put(&id("sub-legacy"), None, &legacy).unwrap();
    let garbage = Snapshot::new("Sub", 1, 1, Format::Postcard, &[0xff; 3]).unwrap();
    store.put(&id("sub-garbage"), None, &garbage).unwrap();
    assert_eq!(
        store
            .list(&ListQuery {
                state: StateFilter::Unrecorded,
                after: None,
                limit: 10
            })
            .unwrap()
            .ids,
        [id("sub-garbage"), id("sub-legacy")],
        "the store itself cannot place them"
    );
    let counts = k.count_states().unwrap();
    assert_eq!(
        (counts.get("PastDue"), counts.unreadable, counts.unrecorded),
        (11, 1, 0)
    );
    let all = k.machines(&ListQuery::in_state("PastDue", 100)).unwrap();
    assert!(all.ids.contains(&id("sub-legacy")), "{all:?}");
    assert!(!all.more);
    // In pages too: the legacy machine lands in its place in id order, once.
    let mut paged = Vec::new();
    let mut after: Option<MachineId> = None;
    loop {
        let mut q = ListQuery::in_state("PastDue", 4);
        q.after = after.as_ref();
        let page = k.machines(&q).unwrap();
        paged.extend(page.ids.iter().cloned());
        match page.next() {
            Some(n) => after = Some(n.clone()),
            None => break,
        }
    }
    assert_eq!(paged, all.ids);
    // Once the kernel writes it, the store records its state.
    k.submit(&id("sub-legacy"), Cmd::Pay)
        .unwrap()
        .wait()
        .unwrap();
    assert!(!store
        .list(&ListQuery {
            state: StateFilter::Unrecorded,
            after: None,
            limit: 10
        })
        .unwrap()
        .ids
        .contains(&id("sub-legacy")));
    assert_eq!(k.count_states().unwrap().get("Active"), 11);
}

#[test]
fn queries_by_state_on_the_memory_store() {
    counts_and_pages_follow_the_machines(Arc::new(MemoryStore::new()));
}

#[test]
fn queries_by_state_on_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    counts_and_pages_follow_the_machines(Arc::new(FileStore::open(dir.path()).unwrap()));
}

#[test]
fn queries_by_state_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    counts_and_pages_follow_the_machines(Arc::new(
        SqliteStore::open(dir.path().join("q.db")).unwrap(),
    ));
}
