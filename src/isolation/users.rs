//! Run-as accounts: the user a policy names for the managed processes, resolved the way
//! circus resolves it when it spawns them (passwd and group entries, then `initgroups`).
//! circus refuses ids without entries, so an id without one is an error here too.

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};
use serde::{Deserialize, Serialize};

/// Who the processes of a program run as, as the policy writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunAs {
    /// A user name: its uid and primary group come from passwd.
    User { user: String },
    /// Numeric ids; both must have entries.
    Ids { uid: u32, gid: u32 },
}

impl std::fmt::Display for RunAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunAs::User { user } => write!(f, "user {user}"),
            RunAs::Ids { uid, gid } => write!(f, "uid {uid}, gid {gid}"),
        }
    }
}

/// A resolved account: what the processes' credentials will be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Account {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Every group the process holds: the primary one and the user's supplementary groups
    /// (circus calls `initgroups`).
    pub groups: Vec<u32>,
}

/// The command that creates the documented run-as user on a host.
pub const CREATE_HINT: &str = "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin";

/// Resolves `run_as` through the system's user database (NSS).
pub fn resolve(run_as: &RunAs) -> Result<Account, String> {
    let user = match run_as {
        RunAs::User { user } => User::from_name(user)
            .map_err(|e| format!("cannot look up user {user}: {e}"))?
            .ok_or_else(|| format!("user {user} does not exist; create it with `{CREATE_HINT} {user}`"))?,
        RunAs::Ids { uid, .. } => User::from_uid(Uid::from_raw(*uid))
            .map_err(|e| format!("cannot look up uid {uid}: {e}"))?
            .ok_or_else(|| format!("uid {uid} has no passwd entry, and circus only switches to ids that have one"))?,
    };
    let gid = match run_as {
        RunAs::User { .. } => user.gid.as_raw(),
        RunAs::Ids { gid, .. } => {
            Group::from_gid(Gid::from_raw(*gid))
                .map_err(|e| format!("cannot look up gid {gid}: {e}"))?
                .ok_or_else(|| format!("gid {gid} has no group entry, and circus only switches to ids that have one"))?;
            *gid
        }
    };
    let name = CString::new(user.name.clone()).map_err(|_| "the user name holds a NUL byte".to_string())?;
    let mut groups: Vec<u32> = getgrouplist(&name, Gid::from_raw(gid))
        .map_err(|e| format!("cannot list the groups of {}: {e}", user.name))?
        .iter()
        .map(|g| g.as_raw())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    Ok(Account { user: user.name, uid: user.uid.as_raw(), gid, groups })
}

/// The warden's own credentials: effective uid, and every group it holds.
pub fn current() -> (u32, Vec<u32>) {
    let mut groups: Vec<u32> = nix::unistd::getgroups().unwrap_or_default().iter().map(|g| g.as_raw()).collect();
    groups.push(nix::unistd::getegid().as_raw());
    groups.sort_unstable();
    groups.dedup();
    (nix::unistd::geteuid().as_raw(), groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_by_name_and_by_id() {
        let by_name = resolve(&RunAs::User { user: "root".into() }).unwrap();
        assert_eq!((by_name.uid, by_name.gid), (0, 0));
        assert!(by_name.groups.contains(&0));
        let by_id = resolve(&RunAs::Ids { uid: 0, gid: 0 }).unwrap();
        assert_eq!(by_id.user, "root");
    }

    #[test]
    fn missing_users_and_ids_are_errors_that_say_what_to_do() {
        let e = resolve(&RunAs::User { user: "no-such-user-cw".into() }).unwrap_err();
        assert!(e.contains("does not exist") && e.contains("useradd"), "{e}");
        let e = resolve(&RunAs::Ids { uid: 3_999_999_999, gid: 0 }).unwrap_err();
        assert!(e.contains("no passwd entry"), "{e}");
        let e = resolve(&RunAs::Ids { uid: 0, gid: 3_999_999_999 }).unwrap_err();
        assert!(e.contains("no group entry"), "{e}");
    }
}
