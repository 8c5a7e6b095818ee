//! Gathering the filesystem facts a decision needs: the command resolved through the
//! policy's own search path, the canonical working directory, the canonical form of every
//! argument that could be a path, and for each program the command could be, its run-as
//! account and whether that account can use the command and the working directory. This is
//! the I/O half; [`super::decide`] is the pure half.

use std::path::{Path, PathBuf};

use super::{Action, Facts, Policy, RunAsFact};
use crate::isolation::access::{self, EXEC, READ, Who};
use crate::isolation::users;

/// Fills the filesystem facts of `action` into a fresh [`Facts`] (circusd facts stay empty).
pub fn gather(policy: &Policy, action: &Action) -> Facts {
    let Action::Add(add) = action else { return Facts::default() };
    let working_dir = add.working_dir.as_deref().map(|d| {
        let p = Path::new(d);
        if !p.is_absolute() {
            return Err("must be an absolute path".to_string());
        }
        match p.canonicalize() {
            Ok(c) if c.is_dir() => Ok(c),
            Ok(_) => Err("is not a directory".into()),
            Err(e) => Err(format!("does not resolve: {e}")),
        }
    });
    let base = working_dir.as_ref().and_then(|r| r.as_ref().ok()).cloned();
    let command = resolve_command(policy, &add.command);
    let mut facts = Facts { command: Some(command.clone()), working_dir, ..Facts::default() };
    if let Ok(cmd) = &command {
        for program in policy.programs_for(&cmd.to_string_lossy()) {
            let Some(rule) = &program.run_as else { continue };
            let account = users::resolve(&rule.who);
            let (command, working_dir) = match &account {
                Ok(a) => {
                    let who = Who { uid: a.uid, groups: &a.groups };
                    let dir = if add.working_dir.is_some() { base.as_deref() } else { Some(program.default_working_dir.as_path()) };
                    (
                        access::check(cmd, who, READ | EXEC).map_err(|e| format!("the run-as user {} cannot run it: {e}", a.user)),
                        dir.map_or(Ok(()), |d| {
                            access::check(d, who, READ | EXEC).map_err(|e| format!("the run-as user {} cannot use it: {e}", a.user))
                        }),
                    )
                }
                Err(_) => (Ok(()), Ok(())),
            };
            facts.run_as.insert(program.id.clone(), RunAsFact { account, command, working_dir });
        }
    }
    for a in &add.args {
        for candidate in [Some(a.as_str()), a.split_once('=').map(|(_, v)| v)].into_iter().flatten() {
            if !candidate.is_empty() && !facts.paths.contains_key(candidate) {
                facts.paths.insert(candidate.to_string(), resolve_path(candidate, base.as_deref()));
            }
        }
    }
    facts
}

/// An absolute command as is, a bare name through the policy's search path (never the
/// request's PATH), anything else refused; then canonicalised so symlinks cannot disguise it.
pub fn resolve_command(policy: &Policy, command: &str) -> Result<PathBuf, String> {
    let p = Path::new(command);
    let found = if p.is_absolute() {
        p.to_path_buf()
    } else if command.contains('/') || command.is_empty() {
        return Err("relative paths are not resolved; give an absolute path or a bare program name".into());
    } else {
        policy
            .search_path
            .iter()
            .map(|d| d.join(command))
            .find(|c| c.is_file())
            .ok_or_else(|| format!("not found in the policy's search path {:?}", policy.search_path))?
    };
    let canonical = found.canonicalize().map_err(|e| format!("does not resolve: {e}"))?;
    if !canonical.is_file() {
        return Err("is not a regular file".into());
    }
    Ok(canonical)
}

/// A path argument: relative ones are taken from the working directory the process gets.
fn resolve_path(s: &str, base: Option<&Path>) -> Result<PathBuf, String> {
    let p = Path::new(s);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        match base {
            Some(b) => b.join(p),
            None => return Err("is a relative path and there is no working_dir".into()),
        }
    };
    full.canonicalize().map_err(|e| format!("does not resolve: {e}"))
}
