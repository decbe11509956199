//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! same checks the fuzz targets run (`ringgate::fuzzing`), on stable, so a
//! regression on any input a fuzzer once found interesting fails
//! `cargo test`. Fuzzing itself: `cargo +nightly fuzz run <target>` in
//! `fuzz/` (docs/architecture.md, "Fuzzing").

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{target}: empty corpus");
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{target}: {} fails", path.display());
        }
    }
    eprintln!("{target}: {} inputs replayed", inputs.len());
}

#[test]
fn request_head_corpus() {
    replay("request_head", ringgate::fuzzing::request_head);
}

#[test]
fn response_head_corpus() {
    replay("response_head", ringgate::fuzzing::response_head);
}

#[test]
fn chunked_corpus() {
    replay("chunked", ringgate::fuzzing::chunked);
}

#[test]
fn path_corpus() {
    replay("path", ringgate::fuzzing::path);
}

#[test]
fn config_corpus() {
    replay("config", ringgate::fuzzing::config);
}

#[test]
fn redis_reply_corpus() {
    replay("redis_reply", ringgate::fuzzing::redis_reply);
}
