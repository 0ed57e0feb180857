//! The inspector on a busy service: the registrar's kernel (domain orders over a file store,
//! two flaky registrar workers whose registrations are durable effects, retried) with
//! customers placing orders, its admin endpoint, and `fsm ui` in front of it.
//!
//! ```text
//! cargo run -p fsm-cli --example inspector            then open http://127.0.0.1:7171/
//! cargo run -p fsm-cli --example inspector -- --listen 127.0.0.1:0 --seconds 30
//! ```
//!
//! A service of your own serves its admin socket (`kernel.serve_admin(..)`) and you run
//! `fsm ui /path/to/admin.sock` beside it; this example does both in one process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsm_cli::{UiConfig, UiServer};
use fsm_core::kernel::admin::AdminConfig;
use fsm_core::kernel::Shutdown;
use fsm_examples::registrar_service::{self, Counters};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = "127.0.0.1:7171".parse()?;
    let mut seconds: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen ADDR")?.parse()?,
            "--seconds" => seconds = Some(args.next().ok_or("--seconds N")?.parse()?),
            other => {
                return Err(
                    format!("unknown argument {other:?}: --listen ADDR, --seconds N").into(),
                )
            }
        }
    }
    // The registrar's worker panics now and then on purpose (its restarts are part of the
    // show); say so once instead of printing each.
    std::panic::set_hook(Box::new(|_| {}));

    let dir = tempfile::tempdir()?;
    let kernel = registrar_service::start(&dir.path().join("orders"), &Counters::default())?;
    let socket = dir.path().join("admin.sock");
    let _admin = kernel.serve_admin(AdminConfig::unix(&socket))?;

    // Customers: a few orders a second each, some of them abandoned as drafts.
    let stop = Arc::new(AtomicBool::new(false));
    let customers: Vec<_> = (0..4u64)
        .map(|c| {
            let handle = kernel.handle();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(c);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    if rng.u32(0..100) < 8 {
                        // A draft left as it is.
                        let id = registrar_service::order_id(c, i);
                        let _ = handle.submit(&id, fsm_examples::registrar::OrderCmd::Cancel);
                        let _ = handle.submit(
                            &registrar_service::order_id(c + 100, i),
                            fsm_examples::registrar::OrderCmd::Submit {
                                domain: format!("idle{i}.example"),
                            },
                        );
                    } else {
                        registrar_service::place(&handle, c, i, &mut rng);
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(rng.u64(20..120)));
                }
            })
        })
        .collect();

    let ui = UiServer::start(UiConfig {
        socket: socket.display().to_string(),
        listen,
        allow_remote: false,
    })?;
    println!(
        "the inspector of the registrar's {} orders: http://{}/\n(the same as: fsm ui {})",
        ui.machine(),
        ui.addr(),
        socket.display()
    );
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in customers {
        let _ = c.join();
    }
    drop(ui);
    kernel.shutdown(Shutdown::Drain);
    Ok(())
}
