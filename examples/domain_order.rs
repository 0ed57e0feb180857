//! A domain-registration order walked through its life.
//!
//! `cargo run --example domain_order`

use fsm_core::{Redacted, StateMachine};
use fsm_examples::registrar::{Order, OrderCmd};

fn main() {
    println!("{}", Order::TABLE.to_mermaid());
    let mut o = Order::Draft;
    let cmds = vec![
        OrderCmd::Submit {
            domain: "example.org".into(),
        },
        OrderCmd::Pay {
            cents: 500,
            card_token: "tok_4242".into(),
        },
        OrderCmd::Pay {
            cents: 1500,
            card_token: "tok_4242".into(),
        },
        OrderCmd::Confirm,
        OrderCmd::Cancel,
    ];
    for c in cmds {
        let shown = format!("{:?}", Redacted(&c));
        match o.apply(c) {
            Ok(a) => println!("{shown}: {} effects {:?}", a.transition, a.effects),
            Err(r) => println!("{shown}: {r}\n  {r:?}"),
        }
    }
    println!("{:?}", o);
}
