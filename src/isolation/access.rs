//! What an account can do to a path, judged from owners and mode bits the way the kernel
//! judges an unprivileged process: search on every ancestor, then read, write or execute on
//! the path itself. The warden runs this for the run-as account, which it cannot become.
//! ACLs and Linux security modules are not consulted (they can only take access away
//! further, except ACL grants, which the documentation tells operators not to use here).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Permission bits, as in a mode's `rwx` triplet.
pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const EXEC: u32 = 1;

/// An unprivileged account's credentials.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub uid: u32,
    /// Every group it holds, primary included.
    pub groups: &'a [u32],
}

impl Who<'_> {
    fn may(&self, meta: &std::fs::Metadata, bits: u32) -> bool {
        let mode = meta.mode();
        if self.uid == 0 {
            // Root passes every check except executing a file with no execute bit at all.
            return bits & EXEC == 0 || meta.is_dir() || mode & 0o111 != 0;
        }
        let class = if meta.uid() == self.uid {
            mode >> 6
        } else if self.groups.contains(&meta.gid()) {
            mode >> 3
        } else {
            mode
        };
        class & bits == bits
    }
}

/// `Ok` when `who` can reach `path` and has `bits` on it; otherwise why not. Symlinks are
/// resolved first, so the check is on the file a process would really open.
pub fn check(path: &Path, who: Who, bits: u32) -> Result<(), String> {
    let real = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
    searchable_to(&real, who)?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    if !who.may(&meta, bits) {
        return Err(format!("{} is not {} for uid {}", real.display(), describe(bits), who.uid));
    }
    Ok(())
}

/// `Ok` when every ancestor directory of the canonical `real` is searchable by `who`.
fn searchable_to(real: &Path, who: Who) -> Result<(), String> {
    let mut dir = PathBuf::from("/");
    let parents: Vec<_> = real.parent().map(|p| p.components().skip(1).collect()).unwrap_or_default();
    for c in std::iter::once(None).chain(parents.into_iter().map(Some)) {
        if let Some(c) = c {
            dir.push(c);
        }
        let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !who.may(&meta, EXEC) {
            return Err(format!("uid {} cannot enter {}", who.uid, dir.display()));
        }
    }
    Ok(())
}

/// What `who` could do to a control-plane path, or `None` when it can do nothing: enter a
/// directory; read, write or connect to a file or socket; or replace it (delete or rename it
/// away, then create its own) through a writable parent. The sticky bit is honoured.
pub fn exposure(path: &Path, who: Who) -> Option<String> {
    let Ok(real) = path.canonicalize() else { return None };
    let meta = std::fs::metadata(&real).ok()?;
    let mut can = Vec::new();
    if searchable_to(&real, who).is_ok() {
        if meta.is_dir() {
            if who.may(&meta, EXEC) {
                can.push("enter it");
            }
        } else {
            if who.may(&meta, READ) {
                can.push("read it");
            }
            if who.may(&meta, WRITE) {
                can.push(if meta.file_type_is_socket() { "connect to it" } else { "write it" });
            }
        }
        if let Some(parent) = real.parent().and_then(|p| std::fs::metadata(p).ok()) {
            let sticky = parent.mode() & 0o1000 != 0 && parent.uid() != who.uid && meta.uid() != who.uid;
            if who.may(&parent, WRITE | EXEC) && !sticky {
                can.push("replace it (its directory is writable)");
            }
        }
    }
    (!can.is_empty()).then(|| format!("{} can {}", real.display(), can.join(", ")))
}

fn describe(bits: u32) -> String {
    let mut v = Vec::new();
    if bits & READ != 0 {
        v.push("readable");
    }
    if bits & WRITE != 0 {
        v.push("writable");
    }
    if bits & EXEC != 0 {
        v.push("executable");
    }
    v.join(" and ")
}

trait SocketType {
    fn file_type_is_socket(&self) -> bool;
}

impl SocketType for std::fs::Metadata {
    fn file_type_is_socket(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.file_type().is_socket()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Files created by the test (root or not) are owned by the test's uid; `who` is another
    /// uid, so only the group and other bits decide.
    #[test]
    fn other_bits_decide_for_a_stranger() {
        let t = tempfile::tempdir().unwrap();
        chmod(t.path(), 0o755);
        let f = t.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let stranger = Who { uid: 4_000_000, groups: &[4_000_000] };
        chmod(&f, 0o644);
        assert!(check(&f, stranger, READ).is_ok());
        assert!(check(&f, stranger, WRITE).is_err());
        assert!(exposure(&f, stranger).unwrap().contains("read it"));
        chmod(&f, 0o600);
        assert_eq!(exposure(&f, stranger), None);
        // A closed parent hides everything below it, whatever the file's own bits.
        chmod(&f, 0o666);
        chmod(t.path(), 0o700);
        let e = check(&f, stranger, READ).unwrap_err();
        assert!(e.contains("cannot enter"), "{e}");
        assert_eq!(exposure(&f, stranger), None);
        assert_eq!(exposure(t.path(), stranger), None);
        chmod(t.path(), 0o711);
        assert!(exposure(t.path(), stranger).unwrap().contains("enter it"));
    }

    #[test]
    fn group_bits_count_for_members_and_writable_parents_mean_replaceable() {
        let t = tempfile::tempdir().unwrap();
        let gid = std::fs::metadata(t.path()).unwrap().gid();
        chmod(t.path(), 0o770);
        let f = t.path().join("f");
        std::fs::write(&f, "x").unwrap();
        chmod(&f, 0o600);
        let member = Who { uid: 4_000_000, groups: &[gid] };
        let e = exposure(&f, member).unwrap();
        assert!(e.contains("replace it") && !e.contains("read it"), "{e}");
        // Sticky directory (like /tmp): others' files cannot be replaced.
        chmod(t.path(), 0o1777);
        assert_eq!(exposure(&f, Who { uid: 4_000_000, groups: &[4_000_000] }), None);
    }

    #[test]
    fn root_reads_anything_but_executes_only_files_with_an_x_bit() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, "x").unwrap();
        chmod(&f, 0o600);
        let root = Who { uid: 0, groups: &[0] };
        assert!(check(&f, root, READ | WRITE).is_ok());
        assert!(check(&f, root, EXEC).is_err());
        chmod(&f, 0o700);
        assert!(check(&f, root, EXEC).is_ok());
    }
}
