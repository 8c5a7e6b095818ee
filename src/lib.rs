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
//! - [`policy`]: the compiled policy and its pure decision.
//! - [`output`]: the processes' output: files, tailer, classification, capped buffers, alerts.
//! - [`isolation`]: the run-as accounts of managed processes, and the level of isolation
//!   from the control plane that the warden achieved.
//!
//! Around it: [`config`] (figment layers and validation), [`audit`], [`metrics`] (the
//! Prometheus registry), [`serve`] (wiring and shutdown).

pub mod audit;
pub mod circus;
pub mod config;
pub mod isolation;
pub mod mcp;
pub mod metrics;
pub mod output;
pub mod policy;
pub mod request;
pub mod serve;
