//! [hot] Rate limits: per-worker shards of token buckets and window quotas.
//!
//! This is the first part of the rate-limit issue: the algorithms, on
//! simulated time. Policies, key tables, node-scope aggregation and the
//! Redis cluster scope build on it.

pub mod bucket;
pub mod table;

pub use bucket::{Decision, Rate, TokenBucket, WindowQuota};
pub use table::KeyTable;
