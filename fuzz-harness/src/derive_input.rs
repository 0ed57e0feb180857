//! Arbitrary enums and `#[fsm(..)]` attribute sets through the derive's parse, check and
//! expand stages (`fsm-derive-internals`), outside the compiler.

use arbitrary::Unstructured;
use syn::DeriveInput;

/// The first byte chooses between raw text (the rest of the bytes as Rust source) and a
/// declaration built from the bytes: an enum (sometimes a struct or union) with generics,
/// container attributes (superstates among them), states with `initial`, `terminal`,
/// `parent`, `on(..)`, policies, `validate`,
/// fields with `sensitive`/`strategy`/`arbitrary`, drawn from valid, misspelled, malformed and
/// duplicated forms. Both derives run on every input that parses as a derive input. Must
/// hold: neither panics, and each returns tokens that parse as Rust items (generated code,
/// or `compile_error!`s).
pub fn derive_input(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let source = if mode % 4 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let mut u = Unstructured::new(rest);
        declaration(&mut u)
    };
    let Ok(input) = syn::parse_str::<DeriveInput>(&source) else {
        return;
    };
    for (derive, out) in [
        (
            "StateMachine",
            fsm_derive_internals::state_machine_from(&input),
        ),
        ("Event", fsm_derive_internals::event_from(&input)),
    ] {
        if let Err(e) = syn::parse2::<syn::File>(out.clone()) {
            panic!("derive({derive}) produced tokens that are not Rust items ({e}) for:\n{source}\n---\n{out}");
        }
    }
}

const STATES: &[&str] = &["A", "B", "C", "D", "E"];
const EVENTS: &[&str] = &["Go", "Stop", "Poke", "Tick", "Nope"];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> &'a str {
    u.choose_index(from.len()).map_or(from[0], |i| from[i])
}

fn count(u: &mut Unstructured<'_>, max: u8) -> u8 {
    u.int_in_range(0..=max).unwrap_or(0)
}

fn declaration(u: &mut Unstructured<'_>) -> String {
    let mut out = String::new();
    for _ in 0..count(u, 3) {
        out.push_str(&format!("#[fsm({})]\n", container_attrs(u)));
    }
    let kind = pick(u, &["enum", "enum", "enum", "enum", "struct", "union"]);
    let generics = pick(
        u,
        &[
            "",
            "",
            "",
            "<T>",
            "<'a>",
            "<const N: usize>",
            "<T: Clone, U>",
            "<T> where T: Copy",
        ],
    );
    let (params, bounds) = match generics.split_once(" where ") {
        Some((p, w)) => (p.to_owned(), format!(" where {w}")),
        None => (generics.to_owned(), String::new()),
    };
    out.push_str(&format!("pub {kind} M{params}{bounds} {{\n"));
    if kind == "enum" {
        for _ in 0..count(u, 5) {
            for _ in 0..count(u, 2) {
                out.push_str(&format!("    #[fsm({})]\n", state_attrs(u)));
            }
            let name = pick(u, STATES);
            out.push_str(&format!("    {name}{},\n", fields(u, true)));
        }
    } else {
        out.push_str(&fields(u, false));
    }
    out.push_str("}\n");
    out
}

fn container_attrs(u: &mut Unstructured<'_>) -> String {
    let mut parts = Vec::new();
    for _ in 0..count(u, 3) {
        parts.push(pick(
            u,
            &[
                "event = Cmd",
                "event = Cmd",
                "effect = u8",
                "effect = Vec<String>",
                "module = m",
                "crate = ::fsm_core",
                "event",
                "event = 1",
                "module = \"m\"",
                "unknown = x",
                "initial",
                "superstate(S1, initial = A)",
                "superstate(S1, initial = B, on(Stop => C, plain), defer(Poke))",
                "superstate(S2, parent = S1, initial = C, state_timeout(ms = 10 => Tick), on(Tick => A, plain))",
                "superstate(S2, parent = S2, initial = A)",
                "superstate(A, initial = A)",
                "superstate(S1)",
                "superstate(S1, initial = S2, enter = h, exit = g)",
                "superstate(S1, initial = A, on(Go => S1, plain, local), dump)",
                "superstate(S3, initial = Z, on(Go => A, update = f))",
                "superstate()",
                "on(Nope => E, plain)",
                "on(Nope => S1, reenter)",
            ],
        ));
    }
    parts.join(", ")
}

fn state_attrs(u: &mut Unstructured<'_>) -> String {
    let mut parts = Vec::new();
    for _ in 0..count(u, 4) {
        let part = match u.choose_index(18).unwrap_or(0) {
            0 => "initial".to_owned(),
            1 => "terminal".to_owned(),
            2 | 3 => format!("on({} => {})", pick(u, EVENTS), pick(u, STATES)),
            4 => format!(
                "on({} | {} => {})",
                pick(u, EVENTS),
                pick(u, EVENTS),
                pick(u, STATES)
            ),
            5 => format!("defer({})", pick(u, EVENTS)),
            6 => pick(u, &["defer", "dump", "delegate"]).to_owned(),
            7 => format!("dump({}, {})", pick(u, EVENTS), pick(u, EVENTS)),
            8 => format!("delegate({})", pick(u, EVENTS)),
            9 => "validate = check".to_owned(),
            10 => format!("on({} -> {})", pick(u, EVENTS), pick(u, STATES)),
            11 => pick(
                u,
                &["on()", "on(=> A)", "initial = 1", "validate", "defer()"],
            )
            .to_owned(),
            12 => "sensitive".to_owned(),
            13 => format!(
                "on({} => {}, {})",
                pick(u, EVENTS),
                pick(u, STATES),
                pick(
                    u,
                    &[
                        "plain",
                        "plan",
                        "plain, plain",
                        "with = f",
                        "update = f",
                        "with = f, update = g",
                        "plain, with = f",
                        "with =",
                        "with = 3",
                        "update = crate::m::f, reenter"
                    ]
                )
            ),
            14 => format!(
                "state_timeout({} = {} => {})",
                pick(u, &["ms", "s", "min", "hours"]),
                pick(
                    u,
                    &[
                        "0",
                        "1200",
                        "99999999999999999999",
                        "1_000",
                        "LIMIT",
                        "2 * 60",
                        "\"x\"",
                        "1.5"
                    ]
                ),
                pick(u, EVENTS)
            ),
            15 => pick(
                u,
                &[
                    "enter = hook",
                    "exit = hook",
                    "enter = hook, enter = hook",
                    "on(Go => A, reenter)",
                    "on(Go => A, plain, reenter, reenter)",
                    "on(Go | Stop => A, with = f)",
                ],
            )
            .to_owned(),
            16 => pick(
                u,
                &[
                    "parent = S1",
                    "parent = S2",
                    "parent = S3",
                    "parent = A",
                    "parent = S1, parent = S2",
                    "on(Go => S1, plain)",
                    "on(Go => S2, local)",
                ],
            )
            .to_owned(),
            _ => "inital".to_owned(),
        };
        parts.push(part);
    }
    parts.join(", ")
}

fn fields(u: &mut Unstructured<'_>, variant: bool) -> String {
    let style = if variant {
        u.choose_index(3).unwrap_or(0)
    } else {
        1
    };
    let mut list = Vec::new();
    for i in 0..count(u, 3) {
        let attr = match u.choose_index(7).unwrap_or(0) {
            0 => "#[fsm(sensitive)] ",
            1 => "#[fsm(strategy = gen)] ",
            2 => "#[fsm(arbitrary = gen)] ",
            3 => "#[fsm(bogus)] ",
            4 => "#[fsm(sensitive, sensitive)] ",
            _ => "",
        };
        let ty = pick(u, &["u8", "String", "T", "&'a str", "[u8; N]", "Vec<T>"]);
        list.push(match style {
            1 => format!("{attr}f{i}: {ty}"),
            _ => format!("{attr}{ty}"),
        });
    }
    match style {
        0 => String::new(),
        1 => format!(" {{ {} }}", list.join(", ")),
        _ => format!("({})", list.join(", ")),
    }
}
