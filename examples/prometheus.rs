//! Metrics a dashboard scrapes: the registrar's kernel publishes its counts, queue depths and
//! latency percentiles through the `metrics` facade (`KernelHandle::publish_metrics`, feature
//! `metrics` of fsm-core), `metrics-exporter-prometheus` renders them, and a small HTTP
//! responder serves them at `/metrics`.
//!
//! ```text
//! cargo run --example prometheus --features prometheus             # serves 127.0.0.1:9898/metrics
//! cargo run --example prometheus --features prometheus -- ADDR     # another address
//! cargo run --example prometheus --features prometheus -- --once   # prints one scrape and exits
//! ```
//!
//! Labels name the machine type, shard, outcome, stage and quantile, never a machine id.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use fsm_core::kernel::{Kernel, KernelHandle};
use fsm_core::store::MachineId;
use fsm_examples::registrar::{Order, OrderCmd};
use metrics_exporter_prometheus::PrometheusBuilder;

/// One customer's order from submission to registration, and a late cancel that is refused.
fn order(submitter: &KernelHandle<Order>, i: u64) {
    let id = MachineId::new(format!("order-{i}")).expect("a valid id");
    let commands = [
        OrderCmd::Submit {
            domain: format!("shop{i}.example"),
        },
        OrderCmd::Pay {
            cents: 1200,
            card_token: "tok_never_printed".into(),
        },
        OrderCmd::Confirm,
        OrderCmd::Cancel,
    ];
    for cmd in commands {
        if let Ok(ticket) = submitter.submit(&id, cmd) {
            let _ = ticket.wait();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let once = args.iter().any(|a| a == "--once");
    let address = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("127.0.0.1:9898", String::as_str)
        .to_owned();
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let data = std::env::temp_dir().join(format!("fsm-prometheus-{}", std::process::id()));
    let kernel: Kernel<Order> = fsm_persist::file_kernel(&data, |_| Order::Draft)
        .shards(2)
        .start()?;
    let submitter = kernel.handle();
    for i in 0..200 {
        order(&submitter, i);
    }
    kernel.wait_idle();
    kernel.publish_metrics();
    if once {
        print!("{}", prometheus.render());
        drop(kernel);
        std::fs::remove_dir_all(&data)?;
        return Ok(());
    }

    // Serving: orders keep coming, the kernel publishes every second, scrapes read the text.
    let listener = TcpListener::bind(&address)?;
    println!(
        "serving http://{address}/metrics (data in {})",
        data.display()
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 200.. {
                order(&submitter, i);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        s.spawn(|| loop {
            kernel.publish_metrics();
            std::thread::sleep(Duration::from_secs(1));
        });
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = String::new();
            if BufReader::new(&stream).read_line(&mut request).is_err() {
                continue;
            }
            let response = if request.starts_with("GET /metrics ") {
                let body = prometheus.render();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    Ok(())
}
