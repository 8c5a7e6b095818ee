//! The isolation levels, from weakest to strongest (`isolation.require` names one).

use serde::{Deserialize, Serialize};

/// What the managed processes are kept from. Ordered: `Uid` is the stronger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Managed processes may share circusd's uid and reach what it can.
    #[default]
    None,
    /// Managed processes run under their own unprivileged uid, which cannot reach the
    /// control plane.
    Uid,
}

impl Level {
    pub const ALL: [Level; 2] = [Level::None, Level::Uid];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Uid => "uid",
        }
    }
}
