//! The `circus-warden` command line: `serve`, `config print` and `config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use circus_warden::config::{Config, LogFormat, Overrides, Transport};

/// An MCP server that lets AI agents run and watch processes under circusd, with every change
/// checked by a deny-by-default gate before it reaches circusd.
///
/// Configuration is layered, later wins: built-in defaults; config/circus-warden.yaml (or
/// --config FILE); CIRCUS_WARDEN_* environment variables, with `__` between levels
/// (CIRCUS_WARDEN_CIRCUS__ENDPOINT=ipc:///run/circus/control.sock); then these flags.
/// `circus-warden config print` shows the result.
#[derive(Parser)]
#[command(version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve MCP over stdio or HTTP.
    ///
    /// Without circus.endpoint the warden starts its own circusd (found through
    /// circus.circusd_path, then PATH) with ipc sockets in a private directory, restarts it
    /// if it dies and stops it on exit.
    ///
    /// Examples:
    ///   circus-warden serve --transport stdio
    ///   circus-warden serve --transport http --bind 127.0.0.1:8731
    ///   circus-warden serve --endpoint ipc:///run/circus/control.sock
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Inspect the effective configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Check, explain and test policy files.
    #[command(subcommand)]
    Policy(PolicyCmd),
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate policy files; errors give file:line: field: message. Exit 1 on any error.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Run one decision and print it as JSON (exit 0 allow, 2 deny).
    ///
    /// The request is {"identity": "...", "tool": "...", "arguments": {...}}, optionally with
    /// circusd facts: "target": {"exists", "owner", "num_processes"}, "watchers",
    /// "total_processes". Filesystem facts are gathered for real.
    ///
    /// Example:
    ///   circus-warden policy explain --policy policies/default.yaml \
    ///     --request '{"identity":"local","tool":"add_process","arguments":{"name":"nap","command":"sleep","args":["60"]}}'
    #[command(verbatim_doc_comment)]
    Explain {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The request as JSON (or @FILE to read it from a file).
        #[arg(long, value_name = "JSON")]
        request: String,
    },
    /// Run the YAML test cases in DIR (every *.yaml, recursively), like `opa test`.
    ///
    /// A case file names its policy (relative to the file) and lists cases:
    ///   policy: ../default.yaml
    ///   cases:
    ///     - {name: sleep allowed, identity: local, tool: add_process,
    ///        arguments: {name: nap, command: sleep, args: ["60"]}, want: allow, rule: "program:sleep"}
    #[command(verbatim_doc_comment)]
    Test {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Print every case, not just failures.
        #[arg(long, short)]
        verbose: bool,
    },
}

#[derive(Args)]
struct ConfigFile {
    /// The YAML config file (default: config/circus-warden.yaml when it exists).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    file: ConfigFile,
    /// stdio: one client on stdin/stdout. http: Streamable HTTP at /mcp.
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    /// Address for the HTTP transport (default 127.0.0.1:8731).
    #[arg(long, value_name = "ADDR")]
    bind: Option<std::net::SocketAddr>,
    /// circusd's control endpoint (tcp://HOST:PORT or ipc:///PATH); omit to embed circusd.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Log format on stderr.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the effective configuration as YAML (tokens redacted).
    Print(ConfigFile),
    /// Validate the configuration; exit 1 with `source: key: rule` lines on error.
    Check(ConfigFile),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Policy(cmd) = cli.command {
        return policy_command(cmd);
    }
    let (file, overrides) = match &cli.command {
        Cmd::Serve(a) => (
            a.file.config.as_deref(),
            Overrides { transport: a.transport, bind: a.bind, endpoint: a.endpoint.clone(), log_format: a.log_format },
        ),
        Cmd::Config(ConfigCmd::Print(f) | ConfigCmd::Check(f)) => (f.config.as_deref(), Overrides::default()),
        Cmd::Policy(_) => unreachable!("handled above"),
    };
    let config = match Config::load(file, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("circus-warden: invalid configuration\n{e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Cmd::Config(ConfigCmd::Print(_)) => {
            print!("{}", config.to_yaml());
            ExitCode::SUCCESS
        }
        Cmd::Config(ConfigCmd::Check(_)) => {
            eprintln!("configuration is valid");
            match circus_warden::policy::Policy::load(&config.policy.path) {
                Ok(policy) => {
                    let a = circus_warden::isolation::assess_config(&config, &policy);
                    eprintln!("isolation: {}", a.summary());
                    if a.level < config.isolation.require {
                        eprintln!("isolation.require is {}: serve would refuse to start", config.isolation.require.as_str());
                        return ExitCode::from(1);
                    }
                }
                Err(e) => eprintln!("isolation: not assessed, the policy does not load:\n{e}"),
            }
            ExitCode::SUCCESS
        }
        Cmd::Policy(_) => ExitCode::SUCCESS,
        Cmd::Serve(_) => {
            init_tracing(&config);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("circus-warden: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let result = runtime.block_on(circus_warden::serve::run(config));
            // A blocking read of stdin (stdio transport) would hold a plain drop forever.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "circus-warden stopped");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn policy_command(cmd: PolicyCmd) -> ExitCode {
    use circus_warden::policy::{Facts, Policy, Request, Target, cases, decide::decide, facts};
    match cmd {
        PolicyCmd::Check { files } => {
            let mut failed = false;
            for f in files {
                match Policy::load(&f) {
                    Ok(p) => {
                        for w in &p.warnings {
                            eprintln!("warning: {w}");
                        }
                        println!("{}: ok ({} programs, {} identities)", f.display(), p.programs.len(), p.identities.len());
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
        PolicyCmd::Explain { policy, request } => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Input {
                identity: String,
                tool: String,
                #[serde(default)]
                arguments: serde_json::Value,
                #[serde(default)]
                target: Option<Target>,
                #[serde(default)]
                watchers: u32,
                #[serde(default)]
                total_processes: u32,
                /// circusd runs as root, so `run_as` applies (default false: processes would
                /// run as circusd's own user).
                #[serde(default)]
                circusd_root: bool,
            }
            let policy = match Policy::load(&policy) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            let text = match request.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
                None => request,
            };
            let input: Input = match serde_json::from_str(&text) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("--request: {e}");
                    return ExitCode::from(1);
                }
            };
            let action = match cases::action(&input.tool, input.arguments) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("--request: {e}");
                    return ExitCode::from(1);
                }
            };
            let mut f: Facts = facts::gather(&policy, &action);
            f.target = input.target;
            f.watchers = input.watchers;
            f.total_processes = input.total_processes;
            f.circusd_switches = input.circusd_root;
            let d = decide(&policy, &Request { identity: input.identity, action }, &f);
            let out = serde_json::json!({
                "decision": if d.allow { "allow" } else { "deny" },
                "rules": d.rules,
                "violations": d.violations,
                "argv": d.command.as_ref().and_then(|c| c.argv()),
                "run_as": d.run_as,
                "would_send": d.command.as_ref().map(|c| c.preview()),
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            if d.allow { ExitCode::SUCCESS } else { ExitCode::from(2) }
        }
        PolicyCmd::Test { dir, verbose } => match cases::run_dir(&dir) {
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
            Ok(outcomes) => {
                let failed: Vec<_> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
                for o in &outcomes {
                    match &o.failure {
                        Some(why) => println!("FAIL {}: {}: {why}", o.file, o.name),
                        None if verbose => println!("ok   {}: {}", o.file, o.name),
                        None => {}
                    }
                }
                println!("{} passed, {} failed", outcomes.len() - failed.len(), failed.len());
                if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
            }
        },
    }
}

/// Logs go to stderr always: in stdio mode stdout carries only MCP.
fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.with_ansi(false).init(),
    }
}
