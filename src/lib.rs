//! circus-warden: an MCP server that lets AI agents run and watch processes under circusd,
//! with every change checked by a deny-by-default gate before it reaches circusd.
//!
//! # Layout
//! The request path, in the order a call takes it:
//! - [`mcp`]: the MCP edge (rmcp, stdio and Streamable HTTP on hyper); the only rmcp user.
//! - [`request`]: tool catalogue and argument decoding ([`request::tools`]), the one gate
//!   ([`request::gate`]), mutation and inspection handlers, the error shape agents read.
//! - [`circus`]: typed commands, the ZeroMQ client actor, the pub/sub process view, and the
//!   supervisor of an embedded circusd.
//!
//! Around it: [`config`] (figment layers and validation), [`serve`] (wiring and shutdown).
//! Later pieces go beside these: `policy/` replaces the interim gate, `output/` holds the log
//! tailer and buffers, `metrics` the Prometheus registry.

pub mod audit;
pub mod circus;
pub mod config;
pub mod mcp;
pub mod metrics;
pub mod policy;
pub mod request;
pub mod serve;
