//! A domain-registration order walked through its life: the machine's diagram, one order from
//! draft to registered, and the clear errors of commands the machine will not take.
//!
//! Run with `cargo run --example domain_order`.

use fsm_core::{Redacted, StateMachine};
use fsm_examples::registrar::{Order, OrderCmd};

fn main() {
    println!("The order machine, drawn from its own table (Mermaid):\n");
    println!("{}", Order::TABLE.to_mermaid());

    let mut order = Order::Draft;
    let commands = [
        OrderCmd::Submit {
            domain: "example.org".into(),
        },
        // Below the minimum price: the handler's guard refuses it.
        OrderCmd::Pay {
            cents: 500,
            card_token: "tok_4242_secret".into(),
        },
        OrderCmd::Pay {
            cents: 1_500,
            card_token: "tok_4242_secret".into(),
        },
        OrderCmd::Reject {
            reason: "registry timeout".into(),
        },
        OrderCmd::Retry,
        OrderCmd::Pay {
            cents: 1_500,
            card_token: "tok_4242_secret".into(),
        },
        OrderCmd::Confirm,
        // The order is registered (terminal): nothing moves it any more.
        OrderCmd::Cancel,
    ];

    println!("One order through its life:\n");
    for command in commands {
        // Commands are printed redacted: the card token never reaches the output.
        let shown = format!("{:?}", Redacted(&command));
        match order.apply(command) {
            Ok(applied) => {
                println!("  ok       {shown}\n           {}", applied.transition);
                for effect in &applied.effects {
                    println!("           effect: {effect:?}");
                }
            }
            Err(rejection) => println!("  REJECTED {shown}\n           {rejection}"),
        }
    }
    println!("\nFinal state: {:?}", Redacted(&order));
}
