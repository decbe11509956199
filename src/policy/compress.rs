//! [hot] Response compression (`compress = { ... }` on a route): which
//! encoding a request negotiates (`Accept-Encoding`, RFC 9110 §12.5.3),
//! which answers may be compressed, and the streaming encoders. An encoder
//! takes the body a piece at a time and hands back what is ready, so the
//! relay never holds a whole body; a sync flush before each wait for the
//! upstream keeps a streamed answer (server-sent events) flowing.

use std::io::Write;

use bytes::{BufMut, BytesMut};

use crate::http;

/// A content coding the gateway can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip = 0,
    Brotli = 1,
}

impl Encoding {
    pub fn token(self) -> &'static [u8] {
        match self {
            Encoding::Gzip => b"gzip",
            Encoding::Brotli => b"br",
        }
    }

    pub fn parse(token: &str) -> Option<Encoding> {
        match token {
            "gzip" => Some(Encoding::Gzip),
            "br" => Some(Encoding::Brotli),
            _ => None,
        }
    }
}

/// A content type the route compresses: exact (`application/json`) or a
/// whole top-level type (`text/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeMatch {
    Exact(Box<[u8]>),
    Top(Box<[u8]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressPolicy {
    /// In the server's order of preference.
    pub encodings: Box<[Encoding]>,
    pub types: Box<[TypeMatch]>,
    /// Answers with a known length below this are sent as they are.
    pub min_size: u64,
    /// gzip level, 1–9.
    pub gzip_level: u32,
    /// brotli quality, 0–11.
    pub brotli_quality: u32,
}

/// The content types compressed when a route names none.
pub const DEFAULT_TYPES: [&str; 11] = [
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/ld+json",
    "application/problem+json",
    "application/wasm",
    "image/svg+xml",
];

/// What the answer says about itself, for `CompressPolicy::applies`.
pub struct AnswerFacts<'a> {
    pub status: u16,
    pub content_type: Option<&'a [u8]>,
    pub content_encoding: Option<&'a [u8]>,
    pub cache_control: Option<&'a [u8]>,
    pub content_length: Option<u64>,
    pub has_content_range: bool,
}

impl<'a> AnswerFacts<'a> {
    /// The facts of an answer whose head is in `buf`, with `headers`
    /// spans into it.
    pub fn read(
        status: u16,
        buf: &'a [u8],
        headers: &[http::HeaderSpan],
        content_length: Option<u64>,
    ) -> AnswerFacts<'a> {
        let first = |name: &[u8]| {
            headers
                .iter()
                .find(|h| h.name.get(buf).eq_ignore_ascii_case(name))
                .map(|h| http::trim_ows(h.value.get(buf)))
        };
        AnswerFacts {
            status,
            content_type: first(b"content-type"),
            content_encoding: first(b"content-encoding"),
            cache_control: first(b"cache-control"),
            content_length,
            has_content_range: first(b"content-range").is_some(),
        }
    }
}

/// The `q` of one `Accept-Encoding` element (`gzip;q=0.5`), in thousandths.
fn quality(params: &[u8]) -> u16 {
    for p in params.split(|&b| b == b';') {
        let p = http::trim_ows(p);
        if p.len() >= 2 && p[..2].eq_ignore_ascii_case(b"q=") {
            let v = &p[2..];
            let (whole, frac) = match v.iter().position(|&b| b == b'.') {
                Some(i) => (&v[..i], &v[i + 1..]),
                None => (v, &b""[..]),
            };
            if whole == b"1" {
                return 1000;
            }
            if whole != b"0" || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
                return 0;
            }
            let mut q = 0u16;
            for i in 0..3 {
                q = q * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
            }
            return q;
        }
    }
    1000
}

impl CompressPolicy {
    /// The encoding to answer with, given the request's `Accept-Encoding`
    /// values: the one the client rates highest (`*` standing for any not
    /// named), the server's order breaking ties; `None` when the client
    /// accepts none of ours (or sent no `Accept-Encoding`).
    pub fn negotiate<'a, I: Iterator<Item = &'a [u8]>>(
        &self,
        accept: impl Fn() -> I,
    ) -> Option<Encoding> {
        let rate = |token: &[u8]| -> Option<u16> {
            let mut star = None;
            for element in accept().flat_map(http::list_elements) {
                let (name, params) = match element.iter().position(|&b| b == b';') {
                    Some(i) => (http::trim_ows(&element[..i]), &element[i + 1..]),
                    None => (element, &b""[..]),
                };
                if name.eq_ignore_ascii_case(token) {
                    return Some(quality(params));
                }
                if name == b"*" {
                    star = Some(quality(params));
                }
            }
            star
        };
        let mut best: Option<(u16, Encoding)> = None;
        for &e in self.encodings.iter() {
            if let Some(q) = rate(e.token()).filter(|&q| q > 0)
                && best.is_none_or(|(b, _)| q > b)
            {
                best = Some((q, e));
            }
        }
        best.map(|(_, e)| e)
    }

    /// Whether the answer is one this route compresses (whatever the
    /// client accepts): a complete 200-class answer, not encoded already,
    /// not a range, without `no-transform`, of a listed type, not known
    /// to be smaller than `min_size`.
    pub fn applies(&self, a: &AnswerFacts<'_>) -> bool {
        if !matches!(a.status, 200..=203 | 205 | 207..=299) || a.has_content_range {
            return false;
        }
        if a.content_encoding
            .is_some_and(|e| !http::trim_ows(e).eq_ignore_ascii_case(b"identity"))
        {
            return false;
        }
        if a.cache_control.is_some_and(|cc| {
            http::list_elements(cc).any(|d| d.eq_ignore_ascii_case(b"no-transform"))
        }) {
            return false;
        }
        if a.content_length.is_some_and(|n| n < self.min_size) {
            return false;
        }
        let Some(ct) = a.content_type else {
            return false;
        };
        let media = http::trim_ows(ct.split(|&b| b == b';').next().unwrap_or_default());
        let top = media.split(|&b| b == b'/').next().unwrap_or_default();
        self.types.iter().any(|t| match t {
            TypeMatch::Exact(m) => media.eq_ignore_ascii_case(m),
            TypeMatch::Top(m) => top.eq_ignore_ascii_case(m) && media.len() > top.len() + 1,
        })
    }

    /// `body` compressed whole (a background cache refresh has it in hand).
    pub fn compress_whole(&self, encoding: Encoding, body: &[u8]) -> std::io::Result<BytesMut> {
        let mut out = BytesMut::with_capacity(body.len() / 3 + 64);
        let mut encoder = self.encoder(encoding);
        encoder.feed(body, &mut out)?;
        encoder.finish(&mut out)?;
        Ok(out)
    }

    /// A fresh encoder for `encoding` at this route's level.
    pub fn encoder(&self, encoding: Encoding) -> Encoder {
        match encoding {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::with_capacity(ENCODER_OUT),
                flate2::Compression::new(self.gzip_level),
            )),
            Encoding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::with_capacity(ENCODER_OUT),
                ENCODER_OUT,
                self.brotli_quality,
                BROTLI_WINDOW_BITS,
            ))),
        }
    }
}

/// Room for an encoder's output between takes.
const ENCODER_OUT: usize = 16 * 1024;
/// brotli's window: 2^18 = 256 KiB per response, not the 4 MiB default
/// (memory per concurrent compressed answer; a few percent of ratio).
const BROTLI_WINDOW_BITS: u32 = 18;

/// A streaming encoder; output collects in its inner `Vec`, which `take`
/// empties into the caller's buffer.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    fn ready(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
        }
    }

    /// Feeds `input`; appends what the encoder has ready to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(input)?,
            Encoder::Brotli(e) => e.write_all(input)?,
        }
        self.take(out);
        Ok(())
    }

    /// Makes everything fed so far decodable by the client (a sync flush)
    /// and appends it to `out`.
    pub fn flush(&mut self, out: &mut BytesMut) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush()?,
            Encoder::Brotli(e) => e.flush()?,
        }
        self.take(out);
        Ok(())
    }

    /// Ends the stream; appends the rest to `out`.
    pub fn finish(self, out: &mut BytesMut) -> std::io::Result<()> {
        let rest = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
        };
        out.extend_from_slice(&rest);
        Ok(())
    }

    fn take(&mut self, out: &mut BytesMut) {
        let ready = self.ready();
        out.extend_from_slice(ready);
        ready.clear();
    }
}

/// `"abc"` → `W/"abc"`: a compressed representation is not byte-identical
/// to the upstream's, so its validator can only be weak (RFC 9110 §8.8.1).
pub fn weaken_etag(value: &[u8], out: &mut BytesMut) {
    let value = http::trim_ows(value);
    if !value.starts_with(b"W/") {
        out.extend_from_slice(b"W/");
    }
    out.extend_from_slice(value);
}

/// How the gateway reshapes the answer's representation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// Compressed with this encoding (`Content-Length`, `Accept-Ranges`
    /// dropped, the `ETag` weakened, `Content-Encoding` added).
    pub encoding: Option<Encoding>,
    /// The route compresses answers like this one: they vary with
    /// `Accept-Encoding`, compressed or not.
    pub varies_with_encoding: bool,
}

impl Shape {
    /// Whether a relayed header gives way to the reshaped representation.
    pub fn replaces(&self, name: &[u8]) -> bool {
        self.encoding.is_some()
            && (name.eq_ignore_ascii_case(b"etag") || name.eq_ignore_ascii_case(b"accept-ranges"))
    }

    /// Writes the headers of the reshaped representation.
    pub fn write(&self, out: &mut BytesMut, etag: Option<&[u8]>) {
        if let Some(e) = self.encoding {
            http::write::header(out, b"content-encoding", e.token());
            if let Some(etag) = etag {
                out.put_slice(b"etag: ");
                weaken_etag(etag, out);
                out.put_slice(b"\r\n");
            }
        }
        if self.varies_with_encoding {
            out.put_slice(b"vary: Accept-Encoding\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn policy() -> CompressPolicy {
        CompressPolicy {
            encodings: vec![Encoding::Brotli, Encoding::Gzip].into_boxed_slice(),
            types: vec![
                TypeMatch::Top(b"text".as_slice().into()),
                TypeMatch::Exact(b"application/json".as_slice().into()),
            ]
            .into_boxed_slice(),
            min_size: 100,
            gzip_level: 4,
            brotli_quality: 4,
        }
    }

    fn negotiate(values: &[&'static str]) -> Option<Encoding> {
        policy().negotiate(|| values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn the_client_s_preference_wins_and_the_server_s_breaks_ties() {
        assert_eq!(negotiate(&["gzip, deflate, br"]), Some(Encoding::Brotli));
        assert_eq!(negotiate(&["gzip"]), Some(Encoding::Gzip));
        assert_eq!(negotiate(&["br;q=0.5, gzip;q=0.8"]), Some(Encoding::Gzip));
        assert_eq!(negotiate(&["br;q=0, gzip"]), Some(Encoding::Gzip));
        assert_eq!(
            negotiate(&["gzip;q=0.001", "br;q=0.0005"]),
            Some(Encoding::Gzip)
        );
        assert_eq!(negotiate(&["*"]), Some(Encoding::Brotli));
        assert_eq!(negotiate(&["*;q=0.5, br;q=0.2"]), Some(Encoding::Gzip));
        assert_eq!(negotiate(&["*, br;q=0, gzip;q=0"]), None);
        assert_eq!(negotiate(&["identity"]), None);
        assert_eq!(negotiate(&["deflate, zstd"]), None);
        assert_eq!(negotiate(&[]), None);
        assert_eq!(negotiate(&["GZIP;Q=1.0"]), Some(Encoding::Gzip));
        assert_eq!(negotiate(&["gzip;q=2"]), None);
        assert_eq!(negotiate(&["gzip;q=0.5000"]), None);
        // An element with no name is no encoding (and no trouble).
        assert_eq!(negotiate(&[";q=1, gzip;q=0.3"]), Some(Encoding::Gzip));
    }

    fn facts(ct: Option<&'static str>) -> AnswerFacts<'static> {
        AnswerFacts {
            status: 200,
            content_type: ct.map(str::as_bytes),
            content_encoding: None,
            cache_control: None,
            content_length: Some(1000),
            has_content_range: false,
        }
    }

    #[test]
    fn only_listed_types_of_plain_complete_answers_are_compressed() {
        let p = policy();
        assert!(p.applies(&facts(Some("text/html; charset=utf-8"))));
        assert!(p.applies(&facts(Some("Application/JSON"))));
        assert!(!p.applies(&facts(Some("application/jsonx"))));
        assert!(!p.applies(&facts(Some("image/png"))));
        assert!(!p.applies(&facts(Some("text"))));
        assert!(!p.applies(&facts(None)));
        let json = || facts(Some("application/json"));
        assert!(!p.applies(&AnswerFacts {
            status: 206,
            ..json()
        }));
        assert!(!p.applies(&AnswerFacts {
            status: 304,
            ..json()
        }));
        assert!(!p.applies(&AnswerFacts {
            status: 204,
            ..json()
        }));
        assert!(!p.applies(&AnswerFacts {
            has_content_range: true,
            ..json()
        }));
        assert!(!p.applies(&AnswerFacts {
            content_encoding: Some(b"gzip"),
            ..json()
        }));
        assert!(p.applies(&AnswerFacts {
            content_encoding: Some(b"identity"),
            ..json()
        }));
        assert!(!p.applies(&AnswerFacts {
            cache_control: Some(b"public, no-transform"),
            ..json()
        }));
        assert!(!p.applies(&AnswerFacts {
            content_length: Some(99),
            ..json()
        }));
        assert!(p.applies(&AnswerFacts {
            content_length: Some(100),
            ..json()
        }));
        assert!(p.applies(&AnswerFacts {
            content_length: None,
            ..json()
        }));
        assert!(!p.applies(&AnswerFacts {
            status: 404,
            ..json()
        }));
    }

    #[test]
    fn streamed_pieces_decode_to_the_input_with_flushes_in_between() {
        let input: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{{\"n\":{i}}},").into_bytes())
            .collect();
        for encoding in [Encoding::Gzip, Encoding::Brotli] {
            let mut encoder = policy().encoder(encoding);
            let mut out = BytesMut::new();
            for (i, piece) in input.chunks(7_000).enumerate() {
                encoder.feed(piece, &mut out).unwrap();
                if i % 5 == 0 {
                    encoder.flush(&mut out).unwrap();
                }
            }
            encoder.finish(&mut out).unwrap();
            assert!(
                out.len() < input.len() / 4,
                "{encoding:?}: {} of {}",
                out.len(),
                input.len()
            );
            let mut decoded = Vec::new();
            match encoding {
                Encoding::Gzip => flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut decoded),
                Encoding::Brotli => {
                    brotli::Decompressor::new(&out[..], 4096).read_to_end(&mut decoded)
                }
            }
            .unwrap();
            assert_eq!(decoded, input, "{encoding:?}");
        }
    }

    #[test]
    fn a_flush_makes_what_was_fed_decodable_at_once() {
        for encoding in [Encoding::Gzip, Encoding::Brotli] {
            let mut encoder = policy().encoder(encoding);
            let mut out = BytesMut::new();
            encoder.feed(b"data: first event\n\n", &mut out).unwrap();
            encoder.flush(&mut out).unwrap();
            // Decoding what was sent so far yields the event.
            let mut decoded = vec![0u8; 64];
            let n = match encoding {
                Encoding::Gzip => flate2::read::GzDecoder::new(&out[..]).read(&mut decoded),
                Encoding::Brotli => brotli::Decompressor::new(&out[..], 4096).read(&mut decoded),
            }
            .unwrap();
            assert_eq!(&decoded[..n], b"data: first event\n\n", "{encoding:?}");
        }
    }

    #[test]
    fn etags_are_weakened_once() {
        let mut out = BytesMut::new();
        weaken_etag(b" \"v1\" ", &mut out);
        assert_eq!(&out[..], b"W/\"v1\"");
        out.clear();
        weaken_etag(b"W/\"v1\"", &mut out);
        assert_eq!(&out[..], b"W/\"v1\"");
    }
}
