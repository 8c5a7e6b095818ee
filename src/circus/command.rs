//! The closed set of commands the warden may send to circusd, and their wire encoding.
//!
//! There is deliberately no variant for `quit`, `reloadconfig`, `ipython`, `set` or globbed
//! names: what cannot be built cannot be sent. (`quit` for the embedded circusd lives in the
//! supervisor, which owns that process.) Every encoded message is a JSON object with a
//! non-empty `command` and an object `properties`, the only shape circusd handles without
//! stalling its connection.

use serde_json::{Value, json};

use super::WatcherName;

/// Options of an `add`, built by the policy decision. Typed, so that the forced-safe keys
/// cannot be missing and no other key can appear than the ones named here and in `extra`
/// (which the policy fills only with its settable options).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AddOptions {
    pub numprocesses: u32,
    /// Environment of the processes: exactly these variables (`copy_env` is always false).
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Settable circus options (graceful_timeout, max_retry, …), by circus name.
    pub extra: Vec<(&'static str, Value)>,
    /// Where circusd writes stdout and stderr: set by the warden, never by a request.
    pub output: Option<OutputFiles>,
}

/// circus `FileStream` settings for both streams: `<dir>/stdout.log` and `<dir>/stderr.log`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputFiles {
    pub dir: String,
    pub max_bytes: u64,
    pub backup_count: u32,
}

impl OutputFiles {
    fn stream(&self, file: &str) -> Value {
        // No time_format: it would prefix every 1024-byte chunk and split long lines.
        json!({ "class": "FileStream", "filename": format!("{}/{file}", self.dir),
                "max_bytes": self.max_bytes, "backup_count": self.backup_count })
    }
}

impl serde::Serialize for AddOptions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Env<'a>(&'a [(String, String)]);
        impl serde::Serialize for Env<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("numprocesses", &self.numprocesses)?;
        // Never inherit circusd's environment, never a shell, stop the whole process tree,
        // and give the child no stdin.
        m.serialize_entry("copy_env", &false)?;
        m.serialize_entry("shell", &false)?;
        m.serialize_entry("stop_children", &true)?;
        m.serialize_entry("close_child_stdin", &true)?;
        m.serialize_entry("env", &Env(&self.env))?;
        if let Some(d) = &self.working_dir {
            m.serialize_entry("working_dir", d)?;
        }
        if let (Some(uid), Some(gid)) = (self.uid, self.gid) {
            m.serialize_entry("uid", &uid)?;
            m.serialize_entry("gid", &gid)?;
        }
        for (k, v) in &self.extra {
            m.serialize_entry(k, v)?;
        }
        if let Some(o) = &self.output {
            m.serialize_entry("stdout_stream", &o.stream("stdout.log"))?;
            m.serialize_entry("stderr_stream", &o.stream("stderr.log"))?;
        }
        m.end()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    List {
        name: Option<WatcherName>,
    },
    Status {
        name: Option<WatcherName>,
    },
    Stats {
        name: Option<WatcherName>,
    },
    Options {
        name: WatcherName,
    },
    NumProcesses {
        name: WatcherName,
    },
    /// Processes across every watcher.
    NumProcessesAll,
    GlobalOptions,
    /// circusd's own process: pid, user, start time.
    DStats,
    /// The configured `numprocesses` of a watcher, by the name circusd reports: also names
    /// the warden would never create (ini-defined `legacy.web`), which still count toward the
    /// caps. A read; the name is JSON data, never a glob (`get` matches exactly).
    ConfiguredProcesses {
        name: String,
    },
    Add {
        name: WatcherName,
        cmd: String,
        args: Vec<String>,
        options: AddOptions,
        start: bool,
    },
    Start {
        name: WatcherName,
    },
    Stop {
        name: WatcherName,
    },
    Restart {
        name: WatcherName,
    },
    Reload {
        name: WatcherName,
    },
    Rm {
        name: WatcherName,
    },
    Incr {
        name: WatcherName,
        nb: u32,
    },
    Decr {
        name: WatcherName,
        nb: u32,
    },
    Signal {
        name: WatcherName,
        signum: i32,
    },
}

impl Command {
    /// circusd's command name.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::List { .. } => "list",
            Command::Status { .. } => "status",
            Command::Stats { .. } => "stats",
            Command::Options { .. } => "options",
            Command::NumProcesses { .. } | Command::NumProcessesAll => "numprocesses",
            Command::GlobalOptions => "globaloptions",
            Command::DStats => "dstats",
            Command::ConfiguredProcesses { .. } => "get",
            Command::Add { .. } => "add",
            Command::Start { .. } => "start",
            Command::Stop { .. } => "stop",
            Command::Restart { .. } => "restart",
            Command::Reload { .. } => "reload",
            Command::Rm { .. } => "rm",
            Command::Incr { .. } => "incr",
            Command::Decr { .. } => "decr",
            Command::Signal { .. } => "signal",
        }
    }

    /// The watcher the command names, if it names exactly one.
    pub fn watcher(&self) -> Option<&WatcherName> {
        match self {
            Command::List { name } | Command::Status { name } | Command::Stats { name } => name.as_ref(),
            Command::GlobalOptions | Command::DStats | Command::NumProcessesAll | Command::ConfiguredProcesses { .. } => None,
            Command::Options { name }
            | Command::NumProcesses { name }
            | Command::Add { name, .. }
            | Command::Start { name }
            | Command::Stop { name }
            | Command::Restart { name }
            | Command::Reload { name }
            | Command::Rm { name }
            | Command::Incr { name, .. }
            | Command::Decr { name, .. }
            | Command::Signal { name, .. } => Some(name),
        }
    }

    /// Whether the command takes circusd's global lock (and so is serialized and retried).
    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            Command::List { .. }
                | Command::Status { .. }
                | Command::Stats { .. }
                | Command::Options { .. }
                | Command::NumProcesses { .. }
                | Command::NumProcessesAll
                | Command::GlobalOptions
                | Command::DStats
                | Command::ConfiguredProcesses { .. }
        )
    }

    fn properties(&self) -> Value {
        let named = |name: &WatcherName| json!({ "name": name.as_str() });
        let maybe = |name: &Option<WatcherName>| match name {
            Some(n) => named(n),
            None => json!({}),
        };
        // start/stop/restart/reload treat `name` as a glob unless told otherwise.
        let exact = |name: &WatcherName| json!({ "name": name.as_str(), "match": "simple", "waiting": true });
        match self {
            Command::List { name } | Command::Status { name } | Command::Stats { name } => maybe(name),
            Command::Options { name } | Command::NumProcesses { name } => named(name),
            Command::GlobalOptions | Command::DStats | Command::NumProcessesAll => json!({}),
            Command::ConfiguredProcesses { name } => json!({ "name": name, "keys": ["numprocesses"] }),
            Command::Add { name, cmd, args, options, start } => json!({
                "name": name.as_str(), "cmd": cmd, "args": args, "options": options,
                "start": start, "waiting": start,
            }),
            Command::Start { name } | Command::Stop { name } | Command::Restart { name } => exact(name),
            Command::Reload { name } => {
                let mut p = exact(name);
                p["graceful"] = json!(true);
                p
            }
            Command::Rm { name } => json!({ "name": name.as_str(), "waiting": true }),
            Command::Incr { name, nb } | Command::Decr { name, nb } => {
                json!({ "name": name.as_str(), "nb": nb, "waiting": true })
            }
            Command::Signal { name, signum } => json!({ "name": name.as_str(), "signum": signum }),
        }
    }

    /// For an add, the argv its processes get: the executable, then the checked arguments.
    pub fn argv(&self) -> Option<Vec<String>> {
        match self {
            Command::Add { cmd, args, .. } => {
                Some(std::iter::once(crate::policy::decide::shell_unquote(cmd)).chain(args.iter().cloned()).collect())
            }
            _ => None,
        }
    }

    /// The message without its id: exactly what circusd would receive (for explanations).
    pub fn preview(&self) -> Value {
        json!({ "command": self.verb(), "properties": self.properties() })
    }

    /// The single JSON frame circusd expects.
    pub fn encode(&self, id: &str) -> Vec<u8> {
        let msg = json!({ "id": id, "command": self.verb(), "properties": self.properties() });
        serde_json::to_vec(&msg).expect("a json! value always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> WatcherName {
        WatcherName::parse(s).unwrap()
    }

    #[test]
    fn lifecycle_commands_are_exact_and_waiting() {
        let v: Value = serde_json::from_slice(&Command::Stop { name: name("web") }.encode("1")).unwrap();
        assert_eq!(v["command"], "stop");
        assert_eq!(v["properties"]["match"], "simple");
        assert_eq!(v["properties"]["name"], "web");
        assert_eq!(v["properties"]["waiting"], true);
    }

    #[test]
    fn every_message_is_an_object_with_command_and_properties() {
        let all = [
            Command::List { name: None },
            Command::GlobalOptions,
            Command::DStats,
            Command::Signal { name: name("a"), signum: 1 },
            Command::Add { name: name("a"), cmd: "/bin/true".into(), args: vec![], options: AddOptions::default(), start: false },
        ];
        for c in all {
            let v: Value = serde_json::from_slice(&c.encode("abc")).unwrap();
            assert!(v["command"].as_str().is_some_and(|s| !s.is_empty()));
            assert!(v["properties"].is_object());
            assert_eq!(v["id"], "abc");
        }
    }

    #[test]
    fn add_options_are_forced_safe() {
        let o = AddOptions {
            numprocesses: 2,
            env: vec![("A".into(), "1".into())],
            extra: vec![("graceful_timeout", json!(5))],
            ..Default::default()
        };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(
            v,
            json!({"numprocesses": 2, "copy_env": false, "shell": false, "stop_children": true,
            "close_child_stdin": true, "env": {"A": "1"}, "graceful_timeout": 5})
        );
        let files = OutputFiles { dir: "/var/log/cw/web".into(), max_bytes: 4096, backup_count: 2 };
        let v = serde_json::to_value(AddOptions { output: Some(files), ..o }).unwrap();
        assert_eq!(
            v["stderr_stream"],
            json!({"class": "FileStream", "filename": "/var/log/cw/web/stderr.log",
            "max_bytes": 4096, "backup_count": 2})
        );
        assert_eq!(v["stdout_stream"]["filename"], "/var/log/cw/web/stdout.log");
    }

    #[test]
    fn reads_are_not_mutations() {
        assert!(!Command::Status { name: None }.is_mutation());
        assert!(Command::Rm { name: name("a") }.is_mutation());
    }
}
