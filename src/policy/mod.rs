//! [cold/hot] Edge policies a route (or a listener) applies before it
//! proxies: who may call it by address (`ip_access`) and what browsers of
//! other origins may do with it (`cors`), and header values with
//! variables (`header_value`). Each policy is compiled once
//! into a lookup structure here; the request-path phases that apply them
//! are in `worker::phase`. docs/policies.md describes them for operators.

pub mod aggregate;
pub mod compress;
pub mod cors;
pub mod header_value;
pub mod ip_access;
pub mod tunnel;
