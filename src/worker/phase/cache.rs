//! [hot] Phase: the response cache. Compiled part: `Route::cache` (the key
//! and the rules' settings); per-worker part: the shard's `Store`. Runs
//! after authentication and rate limits (a cached answer is still an
//! answer a client must be allowed), before the forward:
//!
//! - GET and HEAD look up the key; a fresh stored response answers (HEAD
//!   from a stored GET), with `Age` and `Cache-Status`, a client's
//!   satisfied conditional request with 304. Anything else is fetched.
//! - A fetched response the rules allow is stored while it streams to the
//!   client (`forward` tees the body, up to `max_object`).
//! - POST, PUT, DELETE and PATCH drop the stored response for their URL
//!   (RFC 9111 §4.4).
//!
//! A hit allocates nothing: the key is built in the shard's scratch
//! buffers and the stored head and body are shared (`Bytes`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::cache::control::{RequestDirectives, ResponseDirectives};
use crate::cache::freshness::ResponseTimes;
use crate::cache::key::{KeyFacts, Vary, primary_key, secondary_key, vary};
use crate::cache::policy::{self, RequestFacts, ResponseFacts, RouteCache, Serve};
use crate::cache::store::Variant;
use crate::http::date::parse_http_date;
use crate::http::{self, BodyFraming, HeaderSpan, Method, RequestHead};

use super::super::client::{Client, Exchange, RequestView};
use super::super::shard::Shard;
use super::super::single_flight::{Lead, Wait};
use super::RequestCtx;

/// What the cache made of a request.
pub enum Decision {
    /// The cache has nothing to do with it (a method it does not cache, a
    /// `Range` request): forward.
    Bypass,
    /// A stored response answers it.
    Hit(Hit),
    /// A stale stored response answers it (stale-while-revalidate); with
    /// `refresh`, this request starts the entry's background refresh (no
    /// other fetch of the key is under way).
    Stale {
        hit: Hit,
        refresh: Option<Box<Fill>>,
    },
    /// Forward, and store the answer if the rules allow.
    Miss(Box<Fill>),
    /// Another request on this worker is fetching this key: wait for it,
    /// then look again (coalescing).
    Wait(Wait),
}

/// A stored response about to be served.
pub struct Hit {
    head: Bytes,
    body: Bytes,
    age: u64,
    /// Seconds of freshness left (negative: stale by that much).
    ttl: i64,
    /// The client's conditional request is satisfied: 304.
    not_modified: bool,
    /// Served stale because the upstream failed (stale-if-error).
    instead_of_error: bool,
    /// Served after the upstream confirmed it (a 304 to revalidation).
    revalidated: bool,
    /// Served stale while it is refreshed (stale-while-revalidate).
    while_revalidating: bool,
}

/// A stale stored response's validators, sent upstream to revalidate it.
pub struct Revalidation {
    pub etag: Option<Bytes>,
    pub last_modified: Option<u64>,
    /// Which variant (its secondary key) a 304 freshens.
    secondary: Box<[u8]>,
}

impl Revalidation {
    /// Writes the conditional headers for the upstream request.
    pub fn write_headers(&self, out: &mut BytesMut) {
        if let Some(etag) = &self.etag {
            http::write::header(out, b"if-none-match", etag);
        }
        if let Some(modified) = self.last_modified {
            let mut date = [0u8; 29];
            crate::http::date::write_http_date(&mut date, modified);
            http::write::header(out, b"if-modified-since", &date);
        }
    }
}

/// What a 304 to a revalidation says about the stored response's
/// freshness (RFC 9111 §4.3.4): its own freshness information, if any.
pub struct Freshening {
    pub lifetime: Option<u64>,
    pub initial_age: u64,
    pub received: u64,
}

/// An upstream response's header fields, read by name.
struct Fields<'a> {
    buf: &'a [u8],
    headers: &'a [HeaderSpan],
}

impl<'a> Fields<'a> {
    /// Every value of `name`, trimmed.
    fn values(&self, name: &'static [u8]) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        let buf = self.buf;
        self.headers
            .iter()
            .filter(move |h| h.name.get(buf).eq_ignore_ascii_case(name))
            .map(move |h| http::trim_ows(h.value.get(buf)))
    }

    fn first(&self, name: &'static [u8]) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// `Cache-Control`, and `Date`, `Expires`, `Age`, `Last-Modified`.
    fn freshness(&self) -> (ResponseDirectives, ResponseTimes) {
        let times = ResponseTimes {
            date: self.first(b"date").and_then(parse_http_date),
            expires: self
                .first(b"expires")
                .map(|e| parse_http_date(e).unwrap_or(0)),
            age: self
                .first(b"age")
                .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok()),
            last_modified: self.first(b"last-modified").and_then(parse_http_date),
        };
        (
            ResponseDirectives::parse(self.values(b"cache-control")),
            times,
        )
    }
}

impl Freshening {
    /// Reads a 304's `Cache-Control`, `Date`, `Expires` and `Age`.
    pub fn of(buf: &[u8], headers: &[HeaderSpan], request_time: u64, now: u64) -> Freshening {
        let (directives, times) = Fields { buf, headers }.freshness();
        Freshening {
            lifetime: crate::cache::freshness::lifetime(&directives, &times, now),
            initial_age: crate::cache::freshness::initial_age(&times, request_time, now),
            received: now,
        }
    }
}

impl Hit {
    fn of(variant: &Variant, request: &RequestFacts, now: u64) -> Hit {
        let age = variant.age(now);
        Hit {
            head: variant.head.clone(),
            body: variant.body.clone(),
            age,
            ttl: variant.lifetime as i64 - age as i64,
            not_modified: policy::not_modified(variant, request),
            instead_of_error: false,
            revalidated: false,
            while_revalidating: false,
        }
    }
}

/// What storing a fetched response needs to know about its request.
pub struct Fill {
    pub key: Vec<u8>,
    pub authorized: bool,
    pub request: RequestDirectives,
    /// When the request went upstream (Unix seconds).
    pub request_time: u64,
    /// A HEAD is fetched but its (bodiless) answer not stored.
    pub is_get: bool,
    /// A copy of the request's head: a response's `Vary` names request
    /// headers, and the request's own bytes are gone by the time the
    /// response arrives.
    pub request_head: RequestCopy,
    /// A stale stored response stale-if-error allows to stand in if the
    /// upstream fails (5xx, reset, timeout).
    pub fallback: Option<Hit>,
    /// This request leads the fetch of its key: others wait until it is
    /// stored or known not to be (`release`).
    pub lead: Option<Lead>,
    /// The stale variant to revalidate with these validators.
    pub revalidate: Option<Revalidation>,
    /// The client's own conditional request, applied to a revalidated
    /// answer.
    client_conditional: (Option<Box<[u8]>>, Option<u64>),
}

impl Fill {
    /// Freshens the revalidated variant after a 304 and returns it to
    /// serve (`None` if it was evicted meanwhile).
    pub fn freshen(&self, shard: &Shard, fresh: Freshening) -> Option<Hit> {
        let revalidation = self.revalidate.as_ref()?;
        let mut store = shard.cache.borrow_mut();
        let variant = store.variant_mut(&self.key, &revalidation.secondary)?;
        variant.received = fresh.received;
        variant.initial_age = fresh.initial_age;
        if let Some(lifetime) = fresh.lifetime {
            variant.lifetime = lifetime;
        }
        let request = RequestFacts {
            if_none_match: self.client_conditional.0.as_deref(),
            if_modified_since: self.client_conditional.1,
            ..RequestFacts::default()
        };
        let mut hit = Hit::of(variant, &request, fresh.received);
        hit.revalidated = true;
        Some(hit)
    }

    /// Lets the requests waiting for this fetch look again.
    pub fn release(&self) {
        if let Some(lead) = &self.lead {
            lead.release();
        }
    }

    /// The stale response to answer with instead of the upstream's
    /// failure, if there is one.
    pub fn take_fallback(&mut self) -> Option<Hit> {
        self.fallback.take().map(|mut hit| {
            hit.instead_of_error = true;
            hit
        })
    }
}

/// A request head kept for the secondary key.
pub struct RequestCopy {
    buf: Vec<u8>,
    headers: Vec<HeaderSpan>,
}

impl KeyFacts for RequestCopy {
    fn host(&self) -> &[u8] {
        b""
    }
    fn path(&self) -> &[u8] {
        b""
    }
    fn query(&self) -> &[u8] {
        b""
    }
    fn header_values<'c>(&'c self, name: &[u8]) -> impl Iterator<Item = &'c [u8]> {
        let buf = &self.buf[..];
        self.headers
            .iter()
            .filter(move |h| h.name.get(buf).eq_ignore_ascii_case(name))
            .map(move |h| h.value.get(buf))
    }
    fn consumer(&self) -> Option<&str> {
        None
    }
}

/// The request as the key builder reads it.
struct Facts<'a, 'b> {
    view: &'b RequestView<'a>,
    head: &'b RequestHead,
}

impl KeyFacts for Facts<'_, '_> {
    fn host(&self) -> &[u8] {
        self.head.host.map_or(&b""[..], |h| h.get(self.view.buf))
    }
    fn path(&self) -> &[u8] {
        self.head.path.get(self.view.buf)
    }
    fn query(&self) -> &[u8] {
        let q = self.head.query.get(self.view.buf);
        q.strip_prefix(b"?").unwrap_or(q)
    }
    fn header_values<'c>(&'c self, name: &[u8]) -> impl Iterator<Item = &'c [u8]> {
        let buf = self.view.buf;
        self.view
            .headers
            .iter()
            .filter(move |h| h.name.get(buf).eq_ignore_ascii_case(name))
            .map(move |h| h.value.get(buf))
    }
    fn consumer(&self) -> Option<&str> {
        self.view.consumer.map(|c| &*c.name)
    }
}

/// Looks the request up (GET, HEAD) or invalidates its URL (unsafe
/// methods). `now`: Unix seconds. `may_wait`: a miss whose key another
/// request is fetching waits for it (false once it has waited).
pub fn lookup(
    shard: &Shard,
    rc: &RouteCache,
    route: &str,
    request: &RequestView<'_>,
    head: &RequestHead,
    now: u64,
    may_wait: bool,
) -> Decision {
    let facts = Facts {
        view: request,
        head,
    };
    let mut keys = shard.cache_keys.borrow_mut();
    let (key, secondary) = &mut *keys;
    match head.method {
        Method::Get | Method::Head => {}
        Method::Post | Method::Put | Method::Delete | Method::Patch => {
            primary_key(key, route, &rc.key, &facts);
            shard.cache.borrow_mut().remove(key);
            return Decision::Bypass;
        }
        _ => return Decision::Bypass,
    }
    if request.header(b"range").is_some() {
        return Decision::Bypass;
    }
    primary_key(key, route, &rc.key, &facts);
    let request_facts = RequestFacts {
        directives: RequestDirectives::parse(request.values(b"cache-control")),
        authorized: request.header(b"authorization").is_some() || request.consumer.is_some(),
        if_none_match: request.header(b"if-none-match"),
        if_modified_since: request
            .header(b"if-modified-since")
            .and_then(parse_http_date),
    };
    let mut store = shard.cache.borrow_mut();
    let mut fallback = None;
    let mut revalidate = None;
    if let Some(found) = store.get(key) {
        secondary.clear();
        if let Some(names) = found.vary {
            secondary_key(secondary, names, &facts);
        }
        if let Some(variant) = found
            .variants
            .iter()
            .find(|v| *v.secondary == secondary[..])
        {
            match policy::serve(variant, &request_facts, rc.honour_client_no_cache, now) {
                Serve::Fresh => return Decision::Hit(Hit::of(variant, &request_facts, now)),
                Serve::StaleWhileRevalidate => {
                    let mut hit = Hit::of(variant, &request_facts, now);
                    hit.while_revalidating = true;
                    let revalidation = Revalidation {
                        etag: variant.etag.clone(),
                        last_modified: variant.last_modified,
                        secondary: variant.secondary.clone(),
                    };
                    drop(store);
                    // A GET without a body can be sent again as it came;
                    // a HEAD or a key already being fetched just serves.
                    let refreshable = head.method == Method::Get
                        && head.framing == BodyFraming::None
                        && shard
                            .cache_fetches
                            .waiting(shard.cache_fetches.key(0, key))
                            .is_none();
                    let refresh = refreshable.then(|| {
                        Box::new(fill(
                            key,
                            &request_facts,
                            request,
                            head,
                            now,
                            None,
                            Some(revalidation),
                        ))
                    });
                    return Decision::Stale { hit, refresh };
                }
                Serve::Revalidate if head.method == Method::Get => {
                    revalidate = Some(Revalidation {
                        etag: variant.etag.clone(),
                        last_modified: variant.last_modified,
                        secondary: variant.secondary.clone(),
                    });
                }
                _ => {}
            }
            if policy::usable_on_error(variant, now) {
                fallback = Some(Hit::of(variant, &request_facts, now));
            }
        }
    }
    drop(store);
    let mut lead = None;
    if head.method == Method::Get {
        let flight = shard.cache_fetches.key(0, key);
        match shard.cache_fetches.waiting(flight) {
            Some(wait) if may_wait => return Decision::Wait(wait),
            Some(_) => {}
            None => lead = Some(shard.cache_fetches.lead(flight)),
        }
    }
    let mut fill = fill(
        key,
        &request_facts,
        request,
        head,
        now,
        fallback,
        revalidate,
    );
    fill.lead = lead;
    Decision::Miss(Box::new(fill))
}

/// What storing the answer to this request will need.
fn fill(
    key: &[u8],
    request_facts: &RequestFacts,
    request: &RequestView<'_>,
    head: &RequestHead,
    now: u64,
    fallback: Option<Hit>,
    revalidate: Option<Revalidation>,
) -> Fill {
    Fill {
        lead: None,
        revalidate: revalidate.filter(|r| r.etag.is_some() || r.last_modified.is_some()),
        client_conditional: (
            request_facts.if_none_match.map(Into::into),
            request_facts.if_modified_since,
        ),
        key: key.to_vec(),
        authorized: request_facts.authorized,
        request: request_facts.directives,
        request_time: now,
        is_get: head.method == Method::Get,
        request_head: RequestCopy {
            buf: request.buf[..head.len].to_vec(),
            headers: request.headers.to_vec(),
        },
        fallback,
    }
}

/// Answers from the cache; returns whether the connection stays open.
/// `head_in_buffer`: the request's head is still at the front of the
/// client's buffer (false once a forward consumed it).
pub async fn serve(
    ctx: &RequestCtx<'_>,
    hit: Hit,
    client: &mut Client,
    close: bool,
    exchange: &mut Exchange,
    head_in_buffer: bool,
) -> bool {
    let stale = hit.instead_of_error || hit.while_revalidating;
    let out = &mut client.out;
    out.clear();
    let status = if hit.not_modified {
        // 304 carries the stored headers that describe the response
        // (RFC 9110 §15.4.5), not its body or length.
        http::write::status_line(out, 304);
        out.put_slice(stored_headers(&hit.head));
        304
    } else {
        out.put_slice(&hit.head);
        http::write::content_length(out, hit.body.len() as u64);
        status_of(&hit.head)
    };
    out.put_slice(b"age: ");
    http::write::decimal(out, hit.age);
    out.put_slice(b"\r\ncache-status: ringgate; hit; ttl=");
    if hit.ttl < 0 {
        out.put_slice(b"-");
    }
    http::write::decimal(out, hit.ttl.unsigned_abs());
    if hit.instead_of_error {
        out.put_slice(b"; detail=stale-if-error");
    } else if hit.while_revalidating {
        out.put_slice(b"; detail=stale-while-revalidate");
    } else if hit.revalidated {
        out.put_slice(b"; fwd=stale; fwd-status=304");
    }
    out.put_slice(b"\r\n");
    super::respond::end_head(ctx, out, close, exchange, crate::peer_facts!(client));
    let with_body = !hit.not_modified && ctx.head.method != Method::Head;
    if with_body && hit.body.len() <= INLINE_BODY {
        out.put_slice(&hit.body);
    }
    if head_in_buffer {
        bytes::Buf::advance(&mut client.buf, ctx.head.len);
    }
    exchange.status = status;
    exchange.sent = client.out.len() as u64;
    let timeout = ctx.snapshot().limits.idle_timeout;
    let mut ok = crate::transport::write_all_clear(&mut client.stream, &mut client.out, timeout)
        .await
        .is_ok();
    if ok && with_body && hit.body.len() > INLINE_BODY {
        exchange.sent += hit.body.len() as u64;
        ok = crate::transport::write_owned(&mut client.stream, hit.body, timeout)
            .await
            .is_ok();
    }
    ctx.shard.metrics.cache(if stale {
        crate::metrics::CACHE_STALE
    } else {
        crate::metrics::CACHE_HIT
    });
    ok && !close
}

/// Wall-clock Unix seconds (cache times are HTTP dates).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Bodies up to this size are copied next to the head (one write); larger
/// ones are written from the stored buffer.
const INLINE_BODY: usize = 16 * 1024;

/// The status in a stored head's status line.
fn status_of(head: &[u8]) -> u16 {
    head.get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
        .unwrap_or(200)
}

/// A stored head without its status line.
fn stored_headers(head: &[u8]) -> &[u8] {
    let at = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(head.len(), |i| i + 2);
    &head[at..]
}

/// The `Cache-Status` a miss adds to the client's head.
pub fn miss_status(stored: bool) -> &'static [u8] {
    if stored {
        b"cache-status: ringgate; fwd=miss; stored\r\n"
    } else {
        b"cache-status: ringgate; fwd=miss\r\n"
    }
}

/// How a fetched response will be stored, decided from its head.
pub struct Capture {
    pub key: Vec<u8>,
    pub vary: Vary,
    pub plan: policy::Plan,
    pub head: BytesMut,
    pub body: BytesMut,
    pub limit: usize,
    /// The body outgrew `limit`: not stored.
    pub overflow: bool,
    pub etag: Option<Bytes>,
    pub last_modified: Option<u64>,
    pub received: u64,
    pub status: u16,
    pub secondary: Vec<u8>,
}

/// Decides from the response head whether the answer to `fill` is
/// stored; if so, the capture to fill while it streams. `headers` are the
/// upstream response's, spans into `buf`; `skip` says which of them the
/// client does not get (hop-by-hop, the route's edits).
#[allow(clippy::too_many_arguments)]
pub fn plan_capture(
    rc: &RouteCache,
    fill: &Fill,
    status: u16,
    buf: &[u8],
    headers: &[HeaderSpan],
    content_length: Option<u64>,
    skip: impl Fn(&[u8]) -> bool,
    now: u64,
    shape: crate::policy::compress::Shape,
) -> Option<Box<Capture>> {
    let fields = Fields { buf, headers };
    let (directives, times) = fields.freshness();
    // An answer the route compresses varies with Accept-Encoding: each
    // encoding's variant is stored apart, compressed.
    let response_vary = vary(
        fields.values(b"vary").chain(
            shape
                .varies_with_encoding
                .then_some(&b"accept-encoding"[..]),
        ),
    );
    let etag = fields.first(b"etag").map(Bytes::copy_from_slice);
    let last_modified = times.last_modified;
    let facts = ResponseFacts {
        status,
        directives,
        times,
        vary: &response_vary,
        set_cookie: fields.first(b"set-cookie").is_some(),
        has_validator: etag.is_some() || last_modified.is_some(),
    };
    let request_facts = RequestFacts {
        directives: fill.request,
        authorized: fill.authorized,
        if_none_match: None,
        if_modified_since: None,
    };
    let plan = policy::store_plan(
        rc,
        &request_facts,
        fill.is_get,
        &facts,
        fill.request_time,
        now,
    )
    .ok()?;
    if content_length.is_some_and(|n| n > rc.max_object as u64) {
        return None;
    }
    let mut secondary = Vec::new();
    if let Vary::Fields(names) = &response_vary {
        secondary_key(&mut secondary, names, &fill.request_head);
    }
    let mut stored = BytesMut::with_capacity(512);
    http::write::status_line(&mut stored, status);
    let mut stored_etag = None;
    for h in headers {
        let name = h.name.get(buf);
        if skip(name) || name.eq_ignore_ascii_case(b"age") {
            continue;
        }
        if shape.replaces(name) {
            if name.eq_ignore_ascii_case(b"etag") {
                stored_etag = Some(h.value.get(buf));
            }
            continue;
        }
        http::write::header(&mut stored, name, h.value.get(buf));
    }
    shape.write(&mut stored, stored_etag);
    Some(Box::new(Capture {
        key: fill.key.clone(),
        vary: response_vary,
        plan,
        head: stored,
        body: BytesMut::with_capacity(content_length.map_or(8192, |n| n as usize)),
        limit: rc.max_object,
        overflow: false,
        etag,
        last_modified,
        received: now,
        status,
        secondary,
    }))
}

impl Capture {
    /// Keeps `bytes` of the body, unless it has outgrown the limit.
    #[inline]
    pub fn take(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.body.len() + bytes.len() > self.limit {
            self.overflow = true;
            self.body = BytesMut::new();
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    /// Stores the captured response (the body arrived whole).
    pub fn store(self, shard: &Shard) {
        if self.overflow {
            return;
        }
        let vary = match self.vary {
            Vary::Fields(names) => Some(names),
            _ => None,
        };
        let variant = Variant {
            secondary: self.secondary.into_boxed_slice(),
            head: self.head.freeze(),
            body: self.body.freeze(),
            received: self.received,
            initial_age: self.plan.initial_age,
            lifetime: self.plan.lifetime,
            stale_while_revalidate: self.plan.stale_while_revalidate,
            stale_if_error: self.plan.stale_if_error,
            must_revalidate: self.plan.must_revalidate,
            no_cache: self.plan.no_cache,
            etag: self.etag,
            last_modified: self.last_modified,
            status: self.status,
        };
        shard.cache.borrow_mut().insert(&self.key, vary, variant);
    }
}
