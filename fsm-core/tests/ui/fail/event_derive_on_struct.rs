use fsm_core::Event;

#[derive(Event)]
struct Cmd {
    go: bool,
}

fn main() {}
