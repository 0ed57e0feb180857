//! Every fuzz target's body over its checked-in corpus (`fuzz/corpus/<target>/`): the seeds
//! and the regression inputs of bugs the fuzzers found. A target whose directory is missing or
//! empty fails, so a corpus cannot silently vanish.

use std::fs;
use std::path::PathBuf;

#[global_allocator]
static ALLOC: fsm_fuzz_harness::alloc::Tracking = fsm_fuzz_harness::alloc::Tracking;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} unreadable: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

fn run(target: &str) {
    let (_, body) = fsm_fuzz_harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let files = corpus(target);
    for path in &files {
        let data = fs::read(path).expect("a corpus file");
        let result = std::panic::catch_unwind(|| body(&data));
        if let Err(panic) = result {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{target} failed on {}: {message}", path.display());
        }
    }
    println!("{target}: {} corpus inputs passed", files.len());
}

#[test]
fn transition_table_corpus_holds() {
    run("transition_table");
}

#[test]
fn envelope_decode_corpus_holds() {
    run("envelope_decode");
}

#[test]
fn queue_ops_corpus_holds() {
    run("queue_ops");
}

#[test]
fn store_ops_corpus_holds() {
    run("store_ops");
    let reboots = fsm_fuzz_harness::store_ops_power_reboots();
    println!("store_ops: {reboots} sessions ended in a power cut");
    assert!(reboots > 0, "no corpus input reaches the power-loss model");
}

#[test]
fn derive_input_corpus_holds() {
    run("derive_input");
}

#[test]
fn every_target_has_a_test() {
    let names: Vec<&str> = fsm_fuzz_harness::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "transition_table",
            "envelope_decode",
            "queue_ops",
            "store_ops",
            "derive_input"
        ]
    );
}
