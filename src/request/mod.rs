//! The request path, independent of MCP: decode a tool's arguments, pass mutations through the
//! one gate, call circusd, and shape the reply or the error an agent can act on.

pub mod admission;
pub mod drain;
pub mod error;
pub mod gate;
pub mod inspect;
pub mod logs;
pub mod mutate;
pub mod tools;

use crate::circus::CircusClient;
use crate::circus::events::ProcessView;
use crate::metrics::Metrics;

pub use error::{ErrorKind, ToolError};
pub use gate::Gate;

/// Everything a tool call needs; cheap to clone.
#[derive(Clone)]
pub struct Warden {
    pub client: CircusClient,
    pub view: ProcessView,
    pub gate: Gate,
    pub metrics: Metrics,
    /// Stored process output; `None` when capture is off.
    pub logs: Option<crate::output::Logs>,
}
