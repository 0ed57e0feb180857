use fsm_core::Event;

#[derive(Event, Debug)]
struct Cmd {
    go: bool,
}

fn main() {}
