//! The queue bench's spsc comparison as alternating pairs: wall-clock time on this 2-core
//! machine drifts by 2x over minutes, so one criterion group measured after another can compare
//! two different machines. Here each round runs the crossbeam baseline and the fsm queue back
//! to back (in alternating order), and the ratio is taken within the round.
//!
//! `cargo run --release -p fsm-benches --bin queue_pairs -- [rounds]` (default 15)

use std::time::{Duration, Instant};

use fsm_benches::queue::{crossbeam_hand_match, fsm_queue, LEN};
use fsm_examples::workload::w1_cycle;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    let w1 = w1_cycle(LEN);
    let (mut base, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (e1, e2) = (w1.clone(), w1.clone());
        let (b, o) = if round % 2 == 0 {
            let b = timed(|| assert_eq!(crossbeam_hand_match(e1), LEN));
            let o = timed(|| assert_eq!(fsm_queue(vec![e2]), LEN as u64));
            (b, o)
        } else {
            let o = timed(|| assert_eq!(fsm_queue(vec![e2]), LEN as u64));
            let b = timed(|| assert_eq!(crossbeam_hand_match(e1), LEN));
            (b, o)
        };
        let (b, o) = (b.as_secs_f64() * 1e3, o.as_secs_f64() * 1e3);
        println!("round {round:2}: crossbeam_hand_match {b:7.1} ms   fsm_queue {o:7.1} ms   fsm/crossbeam {:.2}", o / b);
        base.push(b);
        ours.push(o);
        ratios.push(o / b);
    }
    println!(
        "median over {rounds} rounds: crossbeam_hand_match {:.1} ms, fsm_queue {:.1} ms, median ratio fsm/crossbeam {:.2} (max {:.2})",
        median(base),
        median(ours),
        median(ratios.clone()),
        ratios.iter().copied().fold(0.0, f64::max)
    );
}
