//! [hot] The response cache: one shard per worker, bounded in bytes, no
//! lock on the request path (RFC 9111, shared-cache rules). docs/cache.md
//! says what is stored and served, with the RFC sections.

pub mod control;
pub mod freshness;
pub mod key;
pub mod policy;
pub mod purge;
pub mod store;
