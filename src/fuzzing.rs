//! [cold] The checks behind each fuzz target (`fuzz/fuzz_targets/*.rs`),
//! here so that each target is three lines and `tests/fuzz_corpus.rs`
//! replays the committed corpora through exactly the same code on stable,
//! in every `cargo test`. Each function must never panic, whatever the
//! input; it asserts the invariants its parser promises.

use crate::http::{self, ChunkedDecoder, HeaderSpan, Step};

/// Request heads, with framing rules and path normalization as the worker
/// applies them.
pub fn request_head(data: &[u8]) {
    let mut headers = Vec::new();
    let Ok(Some(head)) = http::parse_request(data, 16 * 1024, 100, &mut headers) else {
        return;
    };
    assert!(head.len <= data.len());
    for span in headers
        .iter()
        .flat_map(|h: &HeaderSpan| [h.name, h.value])
        .chain([head.path, head.query, head.method_span])
        .chain(head.host)
    {
        assert!(span.start <= span.end && span.end as usize <= head.len);
    }
    let mut buf = data.to_vec();
    let path = head.path.start as usize..head.path.end as usize;
    for options in options_all() {
        if let Ok(n) = http::normalize_path(&mut buf[path.clone()], options) {
            assert!(n <= path.len());
        }
        buf[path.clone()].copy_from_slice(&data[path.clone()]);
    }
}

/// Response heads, as if answering GET and HEAD.
pub fn response_head(data: &[u8]) {
    let mut headers = Vec::new();
    for head_request in [false, true] {
        if let Ok(Some(head)) =
            http::parse_response(data, 16 * 1024, 100, head_request, &mut headers)
        {
            assert!(head.len <= data.len());
            assert!((100..=599).contains(&head.status));
            for h in &headers {
                assert!(h.value.end as usize <= head.len);
            }
        }
    }
}

/// The chunked decoder, fed the input whole and split at a point taken from
/// its first byte: both must classify the same bytes the same way.
pub fn chunked(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let whole = decode_chunked(body, body.len().max(1));
    let split = decode_chunked(body, usize::from(first).max(1));
    assert_eq!(whole, split, "framing must not depend on how bytes arrive");
}

/// (data bytes, chunk sizes, outcome) of decoding `input` fed `piece` bytes
/// at a time.
fn decode_chunked(input: &[u8], piece: usize) -> (Vec<u8>, Vec<u64>, Option<bool>) {
    let mut decoder = ChunkedDecoder::new();
    let (mut data, mut sizes) = (Vec::new(), Vec::new());
    let mut buffered: Vec<u8> = Vec::new();
    for part in input.chunks(piece) {
        buffered.extend_from_slice(part);
        loop {
            let step = match decoder.step(&buffered) {
                Ok(step) => step,
                Err(_) => return (data, sizes, Some(false)),
            };
            let used = match step {
                Step::Skip(n) | Step::ChunkEnd(n) => n,
                Step::ChunkStart { consumed, size } => {
                    sizes.push(size);
                    consumed
                }
                Step::Data(n) => {
                    data.extend_from_slice(&buffered[..n]);
                    n
                }
                Step::End(n) => {
                    assert!(n <= buffered.len());
                    return (data, sizes, Some(true));
                }
                Step::NeedMore => break,
            };
            assert!(used <= buffered.len(), "a step consumes what it was given");
            buffered.drain(..used);
            if used == 0 && buffered.is_empty() {
                break;
            }
        }
    }
    (data, sizes, None)
}

fn options_all() -> [http::NormalizeOptions; 3] {
    use http::EncodedSlash::{Decode, Keep};
    [
        http::NormalizeOptions::default(),
        http::NormalizeOptions {
            merge_slashes: false,
            encoded_slash: Keep,
        },
        http::NormalizeOptions {
            merge_slashes: true,
            encoded_slash: Decode,
        },
    ]
}

/// Path normalization: never longer, idempotent, and free of dot segments
/// (and, merging, of empty ones).
pub fn path(data: &[u8]) {
    for options in options_all() {
        let mut buf = data.to_vec();
        let Ok(n) = http::normalize_path(&mut buf, options) else {
            continue;
        };
        assert!(n <= data.len());
        let once = buf[..n].to_vec();
        let mut again = once.clone();
        let m = http::normalize_path(&mut again, options).expect("a normalized path normalizes");
        assert_eq!(&again[..m], &once[..], "idempotent");
        if once.first() == Some(&b'/') {
            for segment in once.split(|&b| b == b'/').skip(1) {
                assert!(segment != b"." && segment != b"..", "dot segment left");
            }
            if options.merge_slashes {
                assert!(!once.windows(2).any(|w| w == b"//"), "empty segment left");
            }
        }
    }
}

/// The config loader: any text either compiles or yields errors, never a
/// panic. Hostnames are not looked up for text that names none.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::load_str(text, "fuzz.toml");
    }
}

/// The Redis reply parser.
pub fn redis_reply(data: &[u8]) {
    let mut input = data;
    let _ = crate::redis::read_reply(&mut input);
}
