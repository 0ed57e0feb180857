//! The child-process plumbing of the SIGKILL loops: the test binary started again as a child
//! (told so by an environment variable), its stdout read line by line on a thread, and lines
//! written to its stdin.

// Shared by several test crates through `mod`.
#![allow(unreachable_pub, dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// Starts this test binary again with `vars` set; returns it and a channel of its stdout's
/// lines (closed when it exits).
pub fn spawn(vars: &[(&str, &OsStr)]) -> (Child, mpsc::Receiver<String>) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in vars {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Writes `text` to the child's stdin. The child may already be dead (killed): a broken pipe
/// is fine.
pub fn write(child: &mut Child, text: &str) {
    let stdin = child.stdin.as_mut().unwrap();
    let _ = stdin
        .write_all(text.as_bytes())
        .and_then(|()| stdin.flush());
}
