//! Handlers of the tools that change what runs. Each builds a gate [`Request`], gets a
//! decision, and sends exactly the command the decision carries.

use serde_json::Value;

use super::gate::{AddRequest, Decision, Request};
use super::tools::{ActionOutput, AddArgs, AddOutput, RemoveOutput, ScaleArgs, ScaleOutput, SignalArgs, SignalOutput};
use super::{ErrorKind, ToolError, Warden};
use crate::circus::{Command, WatcherName};

/// The single gate entry point: facts, decision, audit line. Returns the command to send.
pub fn check(w: &Warden, tool: &str, req: &Request) -> Result<Command, ToolError> {
    let facts = w.gate.facts(req);
    match w.gate.decide(req, &facts) {
        Decision::Allow(cmd) => {
            tracing::info!(target: "audit", tool, decision = "allow", command = cmd.verb(), "gate decision");
            w.metrics.decisions.with_label_values(&[tool, "allow", "allow"]).inc();
            Ok(cmd)
        }
        Decision::Deny(violations) => {
            let rules: Vec<&str> = violations.iter().map(|v| v.rule).collect();
            tracing::info!(target: "audit", tool, decision = "deny", ?rules, "gate decision");
            for rule in &rules {
                w.metrics.decisions.with_label_values(&[tool, "deny", rule]).inc();
            }
            Err(ToolError::denied(violations))
        }
    }
}

pub async fn add(w: &Warden, a: AddArgs) -> Result<AddOutput, ToolError> {
    let req = Request::Add(AddRequest {
        name: a.name,
        command: a.command,
        args: a.args,
        working_dir: a.working_dir,
        env: a.env,
        num_processes: a.num_processes,
        start: a.start,
    });
    let cmd = check(w, "add_process", &req)?;
    let out = match &cmd {
        Command::Add { name, cmd: program, args, start, .. } => {
            AddOutput { name: name.to_string(), command: program.clone(), args: args.clone(), started: *start }
        }
        other => return Err(mismatch(other)),
    };
    w.client.call(cmd).await?;
    Ok(out)
}

pub async fn lifecycle(w: &Warden, tool: &str, name: String) -> Result<ActionOutput, ToolError> {
    let (action, req) = match tool {
        "start_process" => ("start", Request::Start { name }),
        "stop_process" => ("stop", Request::Stop { name }),
        "restart_process" => ("restart", Request::Restart { name }),
        _ => ("reload", Request::Reload { name }),
    };
    let cmd = check(w, tool, &req)?;
    let name = watcher(&cmd)?;
    w.client.call(cmd).await?;
    let status = w.client.call(Command::Status { name: Some(name.clone()) }).await?;
    Ok(ActionOutput {
        name: name.to_string(),
        action: action.into(),
        state: status.get("status").and_then(Value::as_str).unwrap_or("unknown").into(),
    })
}

pub async fn remove(w: &Warden, name: String) -> Result<RemoveOutput, ToolError> {
    let cmd = check(w, "remove_process", &Request::Remove { name })?;
    let name = watcher(&cmd)?.to_string();
    w.client.call(cmd).await?;
    Ok(RemoveOutput { name, removed: true })
}

pub async fn scale(w: &Warden, a: ScaleArgs) -> Result<ScaleOutput, ToolError> {
    // The current count is needed to phrase the change as incr/decr; an invalid name is
    // denied by the gate before circusd is asked anything.
    let current = match WatcherName::parse(&a.name) {
        Some(n) => {
            let reply = w.client.call(Command::NumProcesses { name: n }).await?;
            reply.get("numprocesses").and_then(Value::as_u64).unwrap_or(0) as u32
        }
        None => 0,
    };
    let cmd = check(w, "scale_process", &Request::Scale { name: a.name, num_processes: a.num_processes, current })?;
    let name = watcher(&cmd)?.to_string();
    if !matches!(cmd, Command::Incr { nb: 0, .. }) {
        w.client.call(cmd).await?;
    }
    Ok(ScaleOutput { name, num_processes: a.num_processes })
}

pub async fn signal(w: &Warden, a: SignalArgs) -> Result<SignalOutput, ToolError> {
    let cmd = check(w, "signal_process", &Request::Signal { name: a.name, signal: a.signal.clone() })?;
    let name = watcher(&cmd)?.to_string();
    let shown = crate::circus::signal_number(&a.signal).map_or(a.signal, |(n, _)| n.to_string());
    w.client.call(cmd).await?;
    Ok(SignalOutput { name, signal: shown })
}

/// The watcher an allowed command names.
fn watcher(cmd: &Command) -> Result<WatcherName, ToolError> {
    cmd.watcher().cloned().ok_or_else(|| mismatch(cmd))
}

/// The gate allowed a command of another kind than the request: refuse rather than guess.
fn mismatch(cmd: &Command) -> ToolError {
    tracing::error!(verb = cmd.verb(), "the gate allowed an unexpected command; refusing it");
    ToolError::new(ErrorKind::Denied, "internal error: the gate's decision did not match the request; nothing was sent")
}
