//! Handlers of the tools that change what runs. Each turns its arguments into a policy
//! [`Action`], passes the gate, and sends exactly the command the decision carries.

use serde_json::{json, Value};

use super::tools::{ActionOutput, AddArgs, AddOutput, ExplainArgs, RemoveOutput, ScaleArgs, ScaleOutput, SignalArgs, SignalOutput};
use super::{ErrorKind, ToolError, Warden};
use crate::circus::{CircusError, Command, WatcherName};
use crate::policy::{cases, Action, AddRequest};

/// Gate, send, record the outcome. Returns the command sent and circusd's reply.
async fn run(w: &Warden, identity: &str, action: Action) -> Result<(Command, Value), ToolError> {
    let admitted = w.gate.admit(&w.client, identity, action).await?;
    let Some(cmd) = admitted.command.clone() else {
        return Err(ToolError::new(ErrorKind::Denied, "internal error: an allowed change carried no command; nothing was sent"));
    };
    let result = match &cmd {
        // Scaling to the current count: nothing to send.
        Command::Incr { nb: 0, .. } => Ok(json!({})),
        _ => w.client.call(cmd.clone()).await,
    };
    w.gate.done(&admitted, &result);
    match result {
        Ok(reply) => Ok((cmd, reply)),
        // The command reached circusd (it is only sent over a live connection) but its answer
        // did not: circusd may still carry it out. Retrying blindly could do it twice.
        Err(e @ CircusError::Timeout(_)) => {
            let mut err = ToolError::from(e);
            err.retryable = false;
            err.message.push_str("; the change may still take effect: check with get_process_status before retrying");
            Err(err)
        }
        Err(e) => Err(e.into()),
    }
}

fn watcher(cmd: &Command) -> String {
    cmd.watcher().map(WatcherName::to_string).unwrap_or_default()
}

pub async fn add(w: &Warden, identity: &str, a: AddArgs) -> Result<AddOutput, ToolError> {
    let action = Action::Add(AddRequest {
        name: a.name,
        command: a.command,
        args: a.args,
        working_dir: a.working_dir,
        env: a.env,
        num_processes: a.num_processes,
        start: a.start,
        options: a.options,
    });
    let (cmd, _) = run(w, identity, action).await?;
    match cmd {
        Command::Add { name, cmd: program, args, start, .. } => {
            Ok(AddOutput { name: name.to_string(), command: program, args, started: start })
        }
        _ => Err(ToolError::new(ErrorKind::CircusError, "internal error: unexpected command")),
    }
}

pub async fn lifecycle(w: &Warden, identity: &str, tool: &str, name: String) -> Result<ActionOutput, ToolError> {
    let (action, verb) = match tool {
        "start_process" => (Action::Start { name }, "start"),
        "stop_process" => (Action::Stop { name }, "stop"),
        "restart_process" => (Action::Restart { name }, "restart"),
        _ => (Action::Reload { name }, "reload"),
    };
    let (cmd, _) = run(w, identity, action).await?;
    let status = w.client.call(Command::Status { name: cmd.watcher().cloned() }).await?;
    Ok(ActionOutput {
        name: watcher(&cmd),
        action: verb.into(),
        state: status.get("status").and_then(Value::as_str).unwrap_or("unknown").into(),
    })
}

pub async fn remove(w: &Warden, identity: &str, name: String) -> Result<RemoveOutput, ToolError> {
    let (cmd, _) = run(w, identity, Action::Remove { name }).await?;
    Ok(RemoveOutput { name: watcher(&cmd), removed: true })
}

pub async fn scale(w: &Warden, identity: &str, a: ScaleArgs) -> Result<ScaleOutput, ToolError> {
    let (cmd, _) = run(w, identity, Action::Scale { name: a.name, num_processes: a.num_processes }).await?;
    Ok(ScaleOutput { name: watcher(&cmd), num_processes: a.num_processes })
}

pub async fn signal(w: &Warden, identity: &str, a: SignalArgs) -> Result<SignalOutput, ToolError> {
    let shown = crate::circus::signal_number(&a.signal).map_or(a.signal.clone(), |(n, _)| n.to_string());
    let (cmd, _) = run(w, identity, Action::Signal { name: a.name, signal: a.signal }).await?;
    Ok(SignalOutput { name: watcher(&cmd), signal: shown })
}

/// `explain_policy`: the decision the call would get, without recording or running it.
pub async fn explain(w: &Warden, identity: &str, a: ExplainArgs) -> Result<Value, ToolError> {
    let action = cases::action(&a.tool, Value::Object(a.arguments)).map_err(|e| ToolError::invalid("arguments", "schema.type", e))?;
    let (decision, _) = w.gate.decide(&w.client, identity, action).await?;
    let command = decision.command.as_ref().map(Command::preview);
    Ok(json!({
        "decision": if decision.allow { "allow" } else { "deny" },
        "rules": decision.rules,
        "violations": decision.violations,
        "would_send": command,
        "policy_generation": w.gate.policy.generation(),
    }))
}
