//! The kernel against the raw storage limit it is built on, side by side.
//!
//! `cargo bench -p fsm-benches --bench kernel`
//!
//! Group `kernel`, 100 commands per iteration, each durable before it is answered:
//! - `raw_append_fdatasync/100x1KiB`: the raw batched-append limit (100 records of 1 KiB
//!   appended to a file, one fdatasync), as in the storage bench;
//! - `file_store_group_commit/100machines`: one command to each of 100 machines (1 KiB of
//!   state each) through the kernel over the file store, submitted together
//!   ([`KernelHandle::submit_batch`]), answered after the group commit;
//! - `memory_store/100machines`: the same through a kernel over the memory store: the
//!   runtime's own cost (dispatch, encoding, journal, answers), without a disk.
//!
//! The file-store kernel runs one shard: this group measures the runtime's cost against the
//! raw append at one thread; how throughput changes with shards is `kernel_scale`'s table.
//!
//! Group `kernel_admin`, the operator's endpoint beside the memory-store kernel (its trace
//! on, as the endpoint needs), side by side:
//! - `traced/100machines`: no endpoint;
//! - `admin_watch/100machines`: the admin endpoint serving, a `watch` client reading every
//!   line it is sent (default rate limit, 1,000 entries a second) and a `metrics` request
//!   every 100 ms, as `fsm top` and `fsm trace -f` do;
//! - `admin_watch_unlimited/100machines`: the same with the watch's rate limit lifted, so
//!   every decision is serialized and sent: the endpoint's worst case;
//! - `inspector/100machines`: `fsm ui` in front of the endpoint with one page open (its event
//!   stream read as a browser does: one watch at the page's default 200 entries a second,
//!   batched four times a second, and the inspector's poller asking `metrics`,
//!   `quarantined`, `escalations`, `trace_window` and `states` once a second).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fsm_benches::kernel::{round, Blob};
use fsm_benches::raw::AppendLog;
use fsm_core::kernel::admin::AdminConfig;
use fsm_core::kernel::{Kernel, Shutdown};
use fsm_core::store::{MachineId, MemoryStore};

const MACHINES: usize = 100;

fn bench_kernel(c: &mut Criterion) {
    let mut group = c.benchmark_group("kernel");
    group.sample_size(30);
    group.throughput(Throughput::Elements(MACHINES as u64));
    let ids: Vec<MachineId> = (0..MACHINES)
        .map(|i| MachineId::new(format!("blob-{i}")).unwrap())
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let mut log = AppendLog::create(dir.path());
    group.bench_function("raw_append_fdatasync/100x1KiB", |b| {
        b.iter(|| log.append(MACHINES))
    });

    let dir = tempfile::tempdir().unwrap();
    let kernel = fsm_persist::file_kernel(dir.path(), |_| Blob::New)
        .shards(1)
        .trace_capacity(0)
        .start()
        .unwrap();
    round(&kernel, &ids);
    group.bench_function("file_store_group_commit/100machines", |b| {
        b.iter(|| round(&kernel, &ids))
    });
    kernel.shutdown(Shutdown::Drain);

    let kernel = Kernel::builder(MemoryStore::new(), |_| Blob::New)
        .shards(1)
        .trace_capacity(0)
        .start()
        .unwrap();
    round(&kernel, &ids);
    group.bench_function("memory_store/100machines", |b| {
        b.iter(|| round(&kernel, &ids))
    });
    kernel.shutdown(Shutdown::Drain);
    group.finish();
}

/// Attaches what an operator runs: a watch client reading everything, and a metrics poller.
fn attach(socket: &std::path::Path, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let watcher = {
        let stream = UnixStream::connect(socket).unwrap();
        let mut writer = stream.try_clone().unwrap();
        writer.write_all(b"{\"op\":\"watch\"}\n").unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stream).lines();
            while !stop.load(Ordering::Relaxed) {
                if lines.next().is_none() {
                    return;
                }
            }
        })
    };
    let poller = {
        let stream = UnixStream::connect(socket).unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            // Ends when told to, or when the endpoint is gone.
            while !stop.load(Ordering::Relaxed) {
                line.clear();
                let asked = writer
                    .write_all(b"{\"op\":\"metrics\"}\n")
                    .and_then(|()| reader.read_line(&mut line));
                if !matches!(asked, Ok(n) if n > 0) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    vec![watcher, poller]
}

/// A page of the inspector: its event stream, read as it comes.
fn open_page(addr: std::net::SocketAddr, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    // Reads wake now and then to see whether to stop.
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    write!(writer, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let stop = stop.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while !stop.load(Ordering::Relaxed) {
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => line.clear(),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    })
}

fn bench_admin(c: &mut Criterion) {
    let mut group = c.benchmark_group("kernel_admin");
    group.sample_size(40);
    group.throughput(Throughput::Elements(MACHINES as u64));
    let ids: Vec<MachineId> = (0..MACHINES)
        .map(|i| MachineId::new(format!("blob-{i}")).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for (name, admin) in [
        ("traced/100machines", None),
        ("admin_watch/100machines", Some(1_000)),
        ("admin_watch_unlimited/100machines", Some(u32::MAX)),
        ("inspector/100machines", Some(0)),
    ] {
        let kernel = Kernel::builder(MemoryStore::new(), |_| Blob::New)
            .shards(1)
            .start()
            .unwrap();
        round(&kernel, &ids);
        let stop = Arc::new(AtomicBool::new(false));
        let mut attached = Vec::new();
        let mut inspector = None;
        let server = admin.map(|rate| {
            let socket = dir.path().join(format!("{rate}.sock"));
            if rate == 0 {
                let server = kernel.serve_admin(AdminConfig::unix(&socket)).unwrap();
                let ui = fsm_cli::UiServer::start(fsm_cli::UiConfig {
                    socket: socket.display().to_string(),
                    listen: "127.0.0.1:0".parse().unwrap(),
                    allow_remote: false,
                })
                .unwrap();
                attached = vec![open_page(ui.addr(), &stop)];
                inspector = Some(ui);
                return server;
            }
            let server = kernel
                .serve_admin(AdminConfig::unix(&socket).max_per_sec(rate))
                .unwrap();
            attached = attach(&socket, &stop);
            server
        });
        group.bench_function(name, |b| b.iter(|| round(&kernel, &ids)));
        stop.store(true, Ordering::Relaxed);
        drop(inspector);
        drop(server);
        for t in attached {
            let _ = t.join();
        }
        kernel.shutdown(Shutdown::Drain);
    }
    group.finish();
}

criterion_group!(benches, bench_kernel, bench_admin);
criterion_main!(benches);
