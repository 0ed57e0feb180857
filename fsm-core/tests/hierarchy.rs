//! Superstates: declared on the enum, inherited by the states inside them. An event bubbles
//! from the state to its superstates, innermost first, then to the transitions declared for
//! any state; a transition into a superstate enters its initial state; the table, the
//! diagrams, the typestate API and the kernel all see the hierarchy.
#![allow(missing_docs)]

use fsm_core::kernel::Kernel;
use fsm_core::store::{MachineId, MemoryStore};
use fsm_core::{DeclaredOn, Effects, Event, Policy, StateMachine};
use serde::{Deserialize, Serialize};

/// A subscription: `Active` holds a trial and the billing states; `Billing` holds the paid
/// ones. `Cancel` is declared once on `Active` (the trial declares its own, which wins),
/// `Audit` once for every state.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(
    event = Cmd,
    effect = String,
    on(Audit => Audited, plain),
    superstate(
        Active,
        initial = Trial,
        on(Cancel => Cancelled, plain),
        defer(Refund),
        exit = left_active
    ),
    superstate(
        Billing,
        parent = Active,
        initial = Current,
        on(Fail => PastDue, plain),
        on(Nudge => PastDue, plain, local),
        on(Reset => Billing, plain),
        enter = entered_billing,
        exit = left_billing
    )
)]
pub enum Sub {
    #[fsm(initial, parent = Active, on(Convert => Billing, plain), on(Cancel => Churned, plain))]
    Trial,
    #[fsm(parent = Billing, on(Renew => Current, plain), exit = left_current, enter = entered_current)]
    Current,
    #[fsm(parent = Billing, on(Pay => Current, plain))]
    PastDue,
    #[fsm(on(Reopen => Active, plain))]
    Cancelled,
    #[fsm(terminal)]
    Churned,
    #[fsm(terminal)]
    Audited,
}

#[derive(Event, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmd {
    Convert,
    Renew,
    Fail,
    Pay,
    Reset,
    Cancel,
    Reopen,
    Refund,
    Audit,
    Nudge,
}

fn left_current(_: sub::Current, fx: &mut Effects<String>) {
    fx.push("exit Current".into());
}

fn entered_current(_: sub::Current, fx: &mut Effects<String>) {
    fx.push("enter Current".into());
}

fn entered_billing(fx: &mut Effects<String>) {
    fx.push("enter Billing".into());
}

fn left_billing(fx: &mut Effects<String>) {
    fx.push("exit Billing".into());
}

fn left_active(fx: &mut Effects<String>) {
    fx.push("exit Active".into());
}

fn fx(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// `start` after `events`, and the effects of the last one.
fn after(start: Sub, events: &[Cmd]) -> (Sub, Vec<String>) {
    let mut m = start;
    let mut effects = Vec::new();
    for e in events {
        let step = m.apply(*e).unwrap_or_else(|r| panic!("{e:?}: {r}"));
        effects = step.effects.into_iter().collect();
    }
    (m, effects)
}

#[test]
fn an_event_bubbles_to_the_innermost_superstate_that_handles_it() {
    // Billing's Fail, from both of its states.
    assert_eq!(after(Sub::Current, &[Cmd::Fail]).0, Sub::PastDue);
    assert_eq!(after(Sub::PastDue, &[Cmd::Fail]).0, Sub::PastDue);
    // Active's Cancel, two levels up from Current and PastDue.
    assert_eq!(after(Sub::Current, &[Cmd::Cancel]).0, Sub::Cancelled);
    assert_eq!(after(Sub::PastDue, &[Cmd::Cancel]).0, Sub::Cancelled);
    // The trial's own Cancel hides Active's.
    assert_eq!(after(Sub::Trial, &[Cmd::Cancel]).0, Sub::Churned);
    // Declared for any state: every state that is not terminal takes it.
    for s in [Sub::Trial, Sub::Current, Sub::PastDue, Sub::Cancelled] {
        assert_eq!(after(s, &[Cmd::Audit]).0, Sub::Audited);
    }
    for s in [Sub::Churned, Sub::Audited] {
        let mut m = s.clone();
        assert!(m.apply(Cmd::Audit).is_err(), "{s:?} is terminal");
        assert_eq!(m, s);
    }
    // Outside the superstates nothing of theirs applies.
    let mut cancelled = Sub::Cancelled;
    assert!(cancelled.apply(Cmd::Fail).is_err());
    assert!(cancelled.apply(Cmd::Cancel).is_err());
}

#[test]
fn a_transition_into_a_superstate_enters_its_initial_state() {
    // Convert names Billing: its initial state is Current.
    assert_eq!(after(Sub::Trial, &[Cmd::Convert]).0, Sub::Current);
    // Reopen names Active: its initial state is Trial.
    assert_eq!(after(Sub::Cancelled, &[Cmd::Reopen]).0, Sub::Trial);
    // Renew, Current's own self-transition without `reenter`, runs no hook.
    assert_eq!(after(Sub::Current, &[Cmd::Renew]).1, Vec::<String>::new());
}

#[test]
fn hooks_run_from_the_state_up_to_the_common_ancestor_then_down_to_the_target() {
    // Into Billing from the trial (both inside Active): Billing is entered, then Current.
    assert_eq!(
        after(Sub::Trial, &[Cmd::Convert]),
        (Sub::Current, fx(&["enter Billing", "enter Current"]))
    );
    // Out of everything: Current, then Billing, then Active, innermost first.
    assert_eq!(
        after(Sub::Current, &[Cmd::Cancel]),
        (
            Sub::Cancelled,
            fx(&["exit Current", "exit Billing", "exit Active"])
        )
    );
    // Billing's transition into itself leaves it and enters it again, down to its initial
    // state: from Current, Current's hooks too; from PastDue, which has none, Billing's and
    // Current's enter.
    assert_eq!(
        after(Sub::Current, &[Cmd::Reset]),
        (
            Sub::Current,
            fx(&[
                "exit Current",
                "exit Billing",
                "enter Billing",
                "enter Current"
            ])
        )
    );
    assert_eq!(
        after(Sub::PastDue, &[Cmd::Reset]),
        (
            Sub::Current,
            fx(&["exit Billing", "enter Billing", "enter Current"])
        )
    );
    // A superstate's transition into one of its states is external by default: it leaves
    // and enters the superstate; marked `local`, it stays inside.
    assert_eq!(
        after(Sub::Current, &[Cmd::Fail]),
        (
            Sub::PastDue,
            fx(&["exit Current", "exit Billing", "enter Billing"])
        )
    );
    assert_eq!(
        after(Sub::Current, &[Cmd::Nudge]),
        (Sub::PastDue, fx(&["exit Current"]))
    );
    // Back in from outside: Active has no enter hook, Billing has.
    assert_eq!(
        after(Sub::Cancelled, &[Cmd::Reopen, Cmd::Convert]),
        (Sub::Current, fx(&["enter Billing", "enter Current"]))
    );
}

#[test]
fn the_table_knows_the_hierarchy_and_where_each_transition_was_declared() {
    let t = Sub::TABLE;
    assert!(t.verify().is_ok(), "{:?}", t.verify());
    let names: Vec<&str> = t.superstates().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["Active", "Billing"]);
    assert_eq!(t.superstates()[1].parent(), Some(0));
    assert_eq!(t.state_name(t.superstates()[0].initial()), "Trial");
    assert_eq!(t.state_name(t.superstates()[1].initial()), "Current");
    let id = |n: &str| t.state_id(n).unwrap();
    assert!(t.is_in(id("PastDue"), "Billing") && t.is_in(id("PastDue"), "Active"));
    assert!(t.is_in(id("Trial"), "Active") && !t.is_in(id("Trial"), "Billing"));
    assert!(!t.is_in(id("Cancelled"), "Active"));
    assert_eq!(t.ancestors(id("Current")).collect::<Vec<_>>(), [1, 0]);

    let declared = |from: &str, event: &str| {
        t.transitions_from(id(from))
            .find(|x| t.event_name(x.event) == event)
            .map(|x| (t.state_name(x.to), x.declared_on()))
    };
    assert_eq!(
        declared("Trial", "Cancel"),
        Some(("Churned", DeclaredOn::State))
    );
    assert_eq!(
        declared("PastDue", "Cancel"),
        Some(("Cancelled", DeclaredOn::Superstate(0)))
    );
    assert_eq!(
        declared("Current", "Fail"),
        Some(("PastDue", DeclaredOn::Superstate(1)))
    );
    assert_eq!(
        declared("Cancelled", "Audit"),
        Some(("Audited", DeclaredOn::AnyState))
    );
    assert_eq!(
        declared("Trial", "Convert"),
        Some(("Current", DeclaredOn::State))
    );
    assert_eq!(
        declared("Churned", "Audit"),
        None,
        "terminal states inherit nothing"
    );

    // Active's `defer(Refund)` holds in every state inside it, and nowhere else.
    let refund = t.event_id("Refund").unwrap();
    for s in ["Trial", "Current", "PastDue"] {
        assert_eq!(t.policy(id(s), refund), Some(Policy::Defer), "{s}");
    }
    assert_eq!(t.policy(id("Cancelled"), refund), Some(Policy::Reject));
    // Every state is reachable, through the inherited transitions too.
    assert_eq!(t.reachable().len(), t.states().len());

    // The admin protocol's table (what the inspector draws) carries the hierarchy.
    let table = fsm_core::kernel::admin::proto::Table::of(t);
    let supers: Vec<(&str, Option<&str>, &str)> = table
        .superstates
        .iter()
        .map(|s| (s.name.as_str(), s.parent.as_deref(), s.initial.as_str()))
        .collect();
    assert_eq!(
        supers,
        [
            ("Active", None, "Trial"),
            ("Billing", Some("Active"), "Current")
        ]
    );
    let within = |n: &str| {
        table
            .states
            .iter()
            .find(|s| s.name == n)
            .unwrap()
            .superstates
            .clone()
    };
    assert_eq!(within("PastDue"), ["Billing", "Active"]);
    assert_eq!(within("Trial"), ["Active"]);
    assert!(within("Cancelled").is_empty());
}

#[test]
fn a_machine_says_which_superstates_it_is_in() {
    assert!(Sub::PastDue.in_billing() && Sub::PastDue.in_active());
    assert!(Sub::Trial.in_active() && !Sub::Trial.in_billing());
    assert!(!Sub::Cancelled.in_active());
}

#[test]
fn every_state_type_has_a_method_for_each_transition_it_inherits() {
    // Typestate: Active's Cancel on Current and PastDue, Billing's Fail on both, Audit on
    // all four; each returns the target's type.
    let cancelled: sub::Cancelled = sub::PastDue.cancel(cmd::Cancel).unwrap().state;
    assert_eq!(Sub::from(cancelled), Sub::Cancelled);
    let past_due: sub::PastDue = sub::Current.fail(cmd::Fail).unwrap().state;
    let audited: sub::Audited = past_due.audit(cmd::Audit).unwrap().state;
    assert_eq!(Sub::from(audited), Sub::Audited);
    let churned: sub::Churned = sub::Trial.cancel(cmd::Cancel).unwrap().state;
    assert_eq!(Sub::from(churned), Sub::Churned);
    let current: sub::Current = sub::Cancelled
        .reopen(cmd::Reopen)
        .unwrap()
        .state
        .convert(cmd::Convert)
        .unwrap()
        .state;
    assert_eq!(Sub::from(current), Sub::Current);
}

#[test]
fn the_diagrams_draw_superstates_and_each_inherited_transition_once() {
    let mermaid = Sub::TABLE.to_mermaid();
    for line in [
        "    state Active {\n",
        "        [*] --> Trial\n",
        "        state Billing {\n",
        "            [*] --> Current\n",
        "            PastDue\n",
        "    state \"any state\" as __any\n",
        "    Active --> Cancelled : Cancel\n",
        "    Billing --> PastDue : Fail\n",
        "    Billing --> Current : Reset\n",
        "    __any --> Audited : Audit\n",
        "    Trial --> Churned : Cancel\n",
        "    Trial --> Current : Convert\n",
    ] {
        assert!(mermaid.contains(line), "{line:?} missing from:\n{mermaid}");
    }
    assert_eq!(
        mermaid.matches(" : Cancel\n").count(),
        2,
        "Active's Cancel once, the trial's own once:\n{mermaid}"
    );
    assert_eq!(mermaid.matches(" : Audit\n").count(), 1, "{mermaid}");
    let dot = Sub::TABLE.to_dot();
    for line in [
        "    compound=true;\n",
        "    subgraph cluster_Active {\n",
        "        subgraph cluster_Billing {\n",
        "    Trial -> Cancelled [label=\"Cancel\", ltail=cluster_Active];\n",
        "    __any -> Audited [label=\"Audit\"];\n",
    ] {
        assert!(dot.contains(line), "{line:?} missing from:\n{dot}");
    }
}

#[test]
fn the_property_check_and_the_kernel_run_a_hierarchical_machine_as_a_flat_one() {
    // The table as the model: every step agrees with it, accepted or refused.
    let all = [
        Cmd::Convert,
        Cmd::Renew,
        Cmd::Fail,
        Cmd::Pay,
        Cmd::Reset,
        Cmd::Refund,
        Cmd::Cancel,
        Cmd::Reopen,
        Cmd::Convert,
        Cmd::Fail,
        Cmd::Reset,
        Cmd::Cancel,
        Cmd::Audit,
        Cmd::Audit,
    ];
    let run = fsm_core::testing::Checker::<Sub>::new()
        .snapshots()
        .check_sequence(&Sub::Trial, all)
        .unwrap();
    assert!(run.accepted >= 10 && run.rejected >= 2, "{run:?}");
    let kernel = Kernel::builder(MemoryStore::new(), |_| Sub::Trial)
        .start()
        .unwrap();
    let id = MachineId::new("sub-1").unwrap();
    for e in [Cmd::Convert, Cmd::Fail, Cmd::Cancel] {
        kernel.submit(&id, e).unwrap().wait().unwrap();
    }
    assert_eq!(kernel.state(&id).unwrap().0, Sub::Cancelled);
}

/// A checkout that must finish within a second, whatever moves it makes inside.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(
    event = Co,
    superstate(
        Checkout,
        initial = Cart,
        state_timeout(ms = 1000 => Expire),
        on(Expire => Expired, plain),
        on(Cancel => Cancelled, plain)
    )
)]
pub enum Order {
    #[fsm(initial, parent = Checkout, on(Pay => Paying, plain))]
    Cart,
    #[fsm(parent = Checkout, on(Back => Cart, plain), on(Approve => Paid, plain))]
    Paying,
    #[fsm(on(Reopen => Checkout, plain))]
    Cancelled,
    #[fsm(terminal)]
    Expired,
    #[fsm(terminal)]
    Paid,
}

#[derive(Event, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Co {
    Pay,
    Back,
    Approve,
    Cancel,
    Reopen,
    Expire,
}

#[test]
fn a_superstate_timeout_survives_moves_inside_and_is_cancelled_by_leaving() {
    use fsm_core::queue::ManualClock;
    use std::time::Duration;
    let clock = ManualClock::at_wall_ms(7_000_000);
    let kernel = Kernel::builder(MemoryStore::new(), |_| Order::Cart)
        .clock(clock.clock())
        .start()
        .unwrap();
    let ms = Duration::from_millis;
    let step = |id: &MachineId, e: Co| kernel.submit(id, e).unwrap().wait().unwrap();

    // Armed when the machine starts in Cart (inside Checkout); moves inside keep it.
    let a = MachineId::new("a").unwrap();
    step(&a, Co::Pay);
    clock.advance(ms(600));
    step(&a, Co::Back);
    clock.advance(ms(399));
    assert_eq!(kernel.fire_due_timers(), 0, "999 ms into the checkout");
    clock.advance(ms(1));
    assert_eq!(kernel.fire_due_timers(), 1, "a second into the checkout");
    kernel.wait_idle();
    assert_eq!(kernel.state(&a).unwrap().0, Order::Expired);
    // The trace says who took each event: Expire bubbled up to Checkout.
    let trace = kernel.trace(&fsm_core::kernel::TraceFilter::new().machine(&a));
    let taken: Vec<(&str, Option<&str>)> = trace.iter().map(|e| (e.event, e.handled_by)).collect();
    assert_eq!(
        taken,
        [("Pay", None), ("Back", None), ("Expire", Some("Checkout"))]
    );

    // Leaving the superstate cancels it; coming back arms it anew.
    let b = MachineId::new("b").unwrap();
    step(&b, Co::Pay);
    step(&b, Co::Cancel);
    clock.advance(ms(5_000));
    assert_eq!(kernel.fire_due_timers(), 0, "cancelled by leaving Checkout");
    step(&b, Co::Reopen);
    clock.advance(ms(999));
    assert_eq!(kernel.fire_due_timers(), 0);
    clock.advance(ms(1));
    assert_eq!(kernel.fire_due_timers(), 1, "armed anew on coming back");
    kernel.wait_idle();
    assert_eq!(kernel.state(&b).unwrap().0, Order::Expired);

    // Finishing in time: the timer never fires.
    let c = MachineId::new("c").unwrap();
    step(&c, Co::Pay);
    step(&c, Co::Approve);
    clock.advance(ms(10_000));
    assert_eq!(kernel.fire_due_timers(), 0);
    assert_eq!(kernel.state(&c).unwrap().0, Order::Paid);
}

#[test]
fn a_superstate_timeout_is_durable_across_a_restart() {
    use fsm_core::queue::ManualClock;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_wall_ms(9_000_000);
    let id = MachineId::new("order-1").unwrap();
    {
        let kernel = fsm_persist::file_kernel(dir.path(), |_| Order::Cart)
            .clock(clock.clock())
            .start()
            .unwrap();
        kernel.submit(&id, Co::Pay).unwrap().wait().unwrap();
        clock.advance(Duration::from_millis(400));
        kernel.submit(&id, Co::Back).unwrap().wait().unwrap();
        // Dropped as a crash would: what is stored is what the next process finds.
    }
    let kernel = fsm_persist::file_kernel(dir.path(), |_| Order::Cart)
        .clock(clock.clock())
        .start()
        .unwrap();
    let (state, _) = kernel.state(&id).unwrap();
    assert_eq!(state, Order::Cart);
    clock.advance(Duration::from_millis(599));
    assert_eq!(kernel.fire_due_timers(), 0, "999 ms into the checkout");
    clock.advance(Duration::from_millis(1));
    assert_eq!(kernel.fire_due_timers(), 1, "the restored deadline, once");
    kernel.wait_idle();
    assert_eq!(kernel.state(&id).unwrap().0, Order::Expired);
    clock.advance(Duration::from_millis(5_000));
    assert_eq!(kernel.fire_due_timers(), 0, "fired once");
}

#[test]
fn the_diagram_draws_a_superstate_timeout_on_its_transition() {
    let mermaid = Order::TABLE.to_mermaid();
    assert!(
        mermaid.contains("    Checkout --> Expired : after 1000 ms / Expire\n"),
        "{mermaid}"
    );
}

#[test]
fn the_property_check_with_time_follows_superstate_timeouts() {
    use fsm_core::testing::{Checker, Input};
    use std::time::Duration;
    let ms = |n| Input::Elapse(Duration::from_millis(n));
    let run = Checker::<Order>::new()
        .check_timed(
            &Order::Cart,
            [
                Input::Event(Co::Pay),
                ms(600),
                Input::Event(Co::Back),
                ms(600), // a second into the checkout: Expire fires, into Expired
            ],
        )
        .unwrap();
    assert_eq!(run.fired, 1);
    let run = Checker::<Order>::new()
        .check_timed(
            &Order::Cart,
            [
                Input::Event(Co::Cancel),
                ms(5_000), // left: nothing fires
                Input::Event(Co::Reopen),
                ms(400),
                Input::Event(Co::Pay),
                ms(700), // armed anew on Reopen: fires
            ],
        )
        .unwrap();
    assert_eq!(run.fired, 1);
}

/// Restore is invisible for the checkout too (`restore.rs` has the flat and three-level
/// machines): stored and loaded at random moments, it goes on as if nothing happened.
#[test]
fn one_superstate_with_a_deadline_restores_invisibly_under_random_runs() {
    use fsm_core::testing::Checker;
    for start in [Order::Cart, Order::Paying, Order::Cancelled] {
        Checker::<Order>::new()
            .snapshots()
            .restores()
            .run_timed(start.clone())
            .unwrap_or_else(|f| panic!("from {start:?}: {f}"));
    }
}

#[test]
fn a_checkout_deadline_is_not_moved_by_a_restart() {
    use fsm_core::testing::{Checker, Input};
    use std::time::Duration;
    let ms = |n| Input::Elapse(Duration::from_millis(n));
    let co = Input::Event;
    let run = Checker::<Order>::new()
        .restores()
        .check_timed(
            &Order::Cart,
            [
                co(Co::Pay),
                ms(600),
                Input::Restore,
                co(Co::Back),
                ms(399),
                Input::Restore,
                ms(1), // the second since the checkout began: Expire
            ],
        )
        .unwrap();
    assert_eq!(run.fired, 1);
}

#[test]
fn the_admin_endpoint_shows_the_superstates_and_who_took_an_event() {
    use fsm_core::kernel::admin::proto::{Entry, Reply, Request, Show};
    use fsm_core::kernel::admin::AdminConfig;
    use std::io::{BufRead, BufReader, Write};
    let kernel = Kernel::builder(MemoryStore::new(), |_| Sub::Trial)
        .start()
        .unwrap();
    let id = MachineId::new("sub-9").unwrap();
    for e in [Cmd::Convert, Cmd::Fail] {
        kernel.submit(&id, e).unwrap().wait().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let _admin = kernel.serve_admin(AdminConfig::unix(&socket)).unwrap();
    let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut ask = |request: &Request| {
        writeln!(writer, "{}", serde_json::to_string(request).unwrap()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    };
    let show: Reply<Show> = serde_json::from_str(&ask(&Request::Show {
        machine: "sub-9".into(),
    }))
    .unwrap();
    let Reply::Ok(show) = show else {
        panic!("{show:?}")
    };
    assert_eq!(
        (show.state.as_str(), show.superstates),
        ("PastDue", vec!["Billing".to_owned(), "Active".to_owned()])
    );
    let trace: Reply<Vec<Entry>> = serde_json::from_str(&ask(&Request::Trace {
        machine: Some("sub-9".into()),
        state: None,
        event: None,
        outcome: None,
        since_ms: None,
        limit: None,
    }))
    .unwrap();
    let Reply::Ok(trace) = trace else {
        panic!("{trace:?}")
    };
    let by: Vec<(String, Option<String>)> =
        trace.into_iter().map(|e| (e.event, e.handled_by)).collect();
    assert_eq!(
        by,
        [
            ("Convert".to_owned(), None),
            ("Fail".to_owned(), Some("Billing".to_owned()))
        ]
    );
}

/// A session that ends after a second without a touch: `Touch` is declared on the superstate
/// into itself, so it leaves `LoggedIn` and enters it again (its hooks run, its deadline
/// starts over); `Peek` is local and keeps the deadline.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(
    event = Se,
    effect = String,
    superstate(
        LoggedIn,
        initial = Idle,
        state_timeout(ms = 1000 => Expire),
        on(Expire => Out, plain),
        on(Touch => LoggedIn, plain),
        on(Peek => Busy, plain, local),
        enter = session_in,
        exit = session_out
    )
)]
pub enum Session {
    #[fsm(initial, parent = LoggedIn, on(Work => Busy, plain))]
    Idle,
    #[fsm(parent = LoggedIn, on(Done => Idle, plain))]
    Busy,
    #[fsm(on(Login => LoggedIn, plain))]
    Out,
}

#[derive(Event, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Se {
    Work,
    Done,
    Touch,
    Peek,
    Expire,
    Login,
}

fn session_in(fx: &mut Effects<String>) {
    fx.push("in".into());
}

fn session_out(fx: &mut Effects<String>) {
    fx.push("out".into());
}

#[test]
fn the_table_records_which_transitions_leave_a_superstate_and_enter_it_again() {
    use fsm_core::{EventId, StateId};
    let t = Session::TABLE;
    let logged_in = t.superstate_index("LoggedIn").unwrap();
    let (idle, busy) = (StateId::new(0), StateId::new(1));
    let event =
        |name: &str| EventId::new(t.events().iter().position(|e| *e == name).unwrap() as u16);
    let reenters = |from: StateId, e: &str| {
        t.transitions()
            .iter()
            .find(|m| m.from == from && m.event == event(e))
            .unwrap()
            .reenters()
    };
    assert_eq!(reenters(idle, "Touch"), Some(logged_in));
    assert_eq!(reenters(busy, "Touch"), Some(logged_in));
    assert_eq!(reenters(idle, "Peek"), None, "local");
    assert_eq!(reenters(idle, "Work"), None, "a move inside");
    assert_eq!(
        reenters(idle, "Expire"),
        None,
        "it leaves and does not come back"
    );
    let crossed = |from, e, to| {
        let (left, entered) = t.crossed(from, event(e), to);
        (left.collect::<Vec<_>>(), entered.collect::<Vec<_>>())
    };
    assert_eq!(
        crossed(busy, "Touch", idle),
        (vec![logged_in], vec![logged_in])
    );
    assert_eq!(crossed(idle, "Peek", busy), (vec![], vec![]));
    assert_eq!(
        crossed(idle, "Expire", StateId::new(2)),
        (vec![logged_in], vec![])
    );
    // The hooks agree with the table.
    let mut s = Session::Busy;
    let touched: Vec<String> = s.apply(Se::Touch).unwrap().effects.into_iter().collect();
    assert_eq!(touched, fx(&["out", "in"]));
    assert_eq!(s, Session::Idle);
    let peeked: Vec<String> = s.apply(Se::Peek).unwrap().effects.into_iter().collect();
    assert!(peeked.is_empty(), "{peeked:?}");
}

#[test]
fn a_transition_that_enters_the_superstate_again_starts_its_deadline_over() {
    use fsm_core::queue::ManualClock;
    use std::time::Duration;
    let clock = ManualClock::at_wall_ms(5_000_000);
    let kernel = Kernel::builder(MemoryStore::new(), |_| Session::Idle)
        .clock(clock.clock())
        .start()
        .unwrap();
    let ms = Duration::from_millis;
    let id = MachineId::new("s").unwrap();
    let step = |e: Se| kernel.submit(&id, e).unwrap().wait().unwrap();

    step(Se::Work); // armed when the machine started, at 0
    clock.advance(ms(600));
    step(Se::Touch); // out of LoggedIn and in again: due at 1600
    clock.advance(ms(600));
    assert_eq!(
        kernel.fire_due_timers(),
        0,
        "1200: the first deadline is gone"
    );
    step(Se::Peek); // local: still due at 1600
    clock.advance(ms(399));
    assert_eq!(kernel.fire_due_timers(), 0, "1599");
    clock.advance(ms(1));
    assert_eq!(
        kernel.fire_due_timers(),
        1,
        "1600, a second after the touch"
    );
    kernel.wait_idle();
    assert_eq!(kernel.state(&id).unwrap().0, Session::Out);
}
