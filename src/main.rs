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
    let (file, overrides) = match &cli.command {
        Cmd::Serve(a) => (
            a.file.config.as_deref(),
            Overrides { transport: a.transport, bind: a.bind, endpoint: a.endpoint.clone(), log_format: a.log_format },
        ),
        Cmd::Config(ConfigCmd::Print(f) | ConfigCmd::Check(f)) => (f.config.as_deref(), Overrides::default()),
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
            ExitCode::SUCCESS
        }
        Cmd::Serve(_) => {
            init_tracing(&config);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("circus-warden: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(circus_warden::serve::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "circus-warden stopped");
                    ExitCode::from(1)
                }
            }
        }
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
