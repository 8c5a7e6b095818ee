//! The tools that change what runs: pass the gate, send exactly the command the decision
//! carries, record circusd's answer, and shape the result. Also `explain_policy`, which stops
//! after the decision.

use serde::Serialize;
use serde_json::{Value, json};

use super::tools::{ActionOutput, AddOutput, ExplainArgs, RemoveOutput, ScaleOutput, SignalOutput};
use super::{ErrorKind, ToolError, Warden};
use crate::circus::{CircusError, Command, WatcherName};
use crate::policy::Action;

fn json<T: Serialize>(v: T) -> Result<Value, ToolError> {
    serde_json::to_value(v).map_err(|e| ToolError::new(ErrorKind::CircusError, format!("cannot encode the result: {e}")))
}

/// Runs one mutating action for `identity` and returns the tool's result.
pub async fn run(w: &Warden, identity: &str, action: Action) -> Result<Value, ToolError> {
    let admitted = w.gate.admit(&w.client, identity, action.clone()).await?;
    let Some(cmd) = admitted.command.clone() else {
        return Err(ToolError::new(ErrorKind::Denied, "internal error: an allowed change carried no command; nothing was sent"));
    };
    if let (Command::Add { name, .. }, Some(files)) = (&cmd, &w.gate.output) {
        // circusd fails an add whose output directory is missing.
        if let Err(e) = files.prepare(name) {
            let e = CircusError::NotSent(format!("cannot create the output directory {}: {e}", files.watcher_dir(name).display()));
            w.gate.done(&admitted, &Err(e.clone()));
            return Err(e.into());
        }
    }
    let result = match &cmd {
        // Scaling to the current count: nothing to send.
        Command::Incr { nb: 0, .. } => Ok(json!({})),
        _ => w.client.call(cmd.clone()).await,
    };
    w.gate.done(&admitted, &result);
    if let Err(e) = result {
        return Err(match e {
            // The command reached circusd (it is only sent over a live connection) but the
            // answer did not: circusd may still carry it out. Retrying blindly could do it twice.
            CircusError::Timeout(_) => {
                let mut err = ToolError::from(e);
                err.retryable = false;
                err.message.push_str("; the change may still take effect: check with get_process_status before retrying");
                err
            }
            e => e.into(),
        });
    }
    let name = cmd.watcher().map(WatcherName::to_string).unwrap_or_default();
    match (action, cmd) {
        (Action::Add(_), Command::Add { cmd: command, args, start, .. }) => json(AddOutput { name, command, args, started: start }),
        (Action::Remove { .. }, _) => json(RemoveOutput { name, removed: true }),
        (Action::Scale { num_processes, .. }, _) => json(ScaleOutput { name, num_processes }),
        (Action::Signal { signal, .. }, _) => {
            let signal = crate::circus::signal_number(&signal).map_or(signal, |(n, _)| n.to_string());
            json(SignalOutput { name, signal })
        }
        (action, cmd) => {
            let verb = action.tool().trim_end_matches("_process").to_string();
            let status = w.client.call(Command::Status { name: cmd.watcher().cloned() }).await?;
            let state = status.get("status").and_then(Value::as_str).unwrap_or("unknown").to_string();
            json(ActionOutput { name, action: verb, state })
        }
    }
}

/// `explain_policy`: the decision the call would get, without recording or running it.
pub async fn explain(w: &Warden, identity: &str, a: ExplainArgs) -> Result<Value, ToolError> {
    let action = super::tools::action(&a.tool, Value::Object(a.arguments))?;
    let (decision, _) = w.gate.decide(&w.client, identity, action).await?;
    Ok(json!({
        "decision": if decision.allow { "allow" } else { "deny" },
        "rules": decision.rules,
        "violations": decision.violations,
        "argv": decision.command.as_ref().and_then(Command::argv),
        "run_as": decision.run_as,
        "would_send": decision.command.as_ref().map(Command::preview),
        "policy_generation": w.gate.policy.generation(),
    }))
}
