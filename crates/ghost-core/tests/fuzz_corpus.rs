//! Replays every input of the fuzz corpus (`fuzz/corpus/parse/`, seeds and the regressions the
//! fuzzer found) through the fuzz target's own function, so each run of the test suite covers
//! them without a fuzzer or nightly flags.

#[path = "../../../fuzz/exercise.rs"]
mod exercise;

#[test]
fn every_fuzz_corpus_input_runs_without_a_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/parse");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the fuzz corpus is in the repository") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        exercise::run(&data);
        replayed += 1;
    }
    assert!(
        replayed >= 20,
        "only {replayed} corpus files in {}",
        dir.display()
    );
}
