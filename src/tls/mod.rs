//! TLS: rustls runs handshakes (`handshake`), ringgate's own record layer
//! carries the bytes after them (`record`, `session`), so an established
//! connection allocates nothing. `listener` compiles a listener's
//! certificates and policies; `tickets` makes resumption work on every
//! core and node; `identity` reads certificates.
pub mod client_hello;
pub mod handshake;
pub mod identity;
pub mod listener;
pub mod pem;
pub mod record;
pub mod session;
pub mod tickets;
pub mod upstream;
