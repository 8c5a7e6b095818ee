//! The single gate every tool call passes before anything reaches circusd: the identity's rate
//! limit, facts gathered from the filesystem and circusd, the policy's pure decision, the
//! audit record, and the metrics. Every error on the way is a denial or a clear error, never
//! an allowed call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};

use super::admission::{Admission, AdmissionLock};
use super::{ErrorKind, ToolError};
use crate::audit::{Audit, DecisionRecord, new_id, now_rfc3339};
use crate::circus::command::OutputFiles;
use crate::circus::{CircusClient, CircusError, Command, WatcherName};
use crate::isolation::Isolation;
use crate::metrics::Metrics;
use crate::output::Files;
use crate::policy::decide::decide;
use crate::policy::reload::ActivePolicy;
use crate::policy::{Action, Decision, Facts, OWNER_ENV, Request, Target, Violation, facts};

#[derive(Clone)]
pub struct Gate {
    pub policy: ActivePolicy,
    /// Where added watchers write their output; set on every allowed add.
    pub output: Option<Files>,
    /// The isolation level achieved, and the one required; read on every add.
    pub isolation: Isolation,
    /// Held from the cap check of a change until circusd answered it.
    admission: AdmissionLock,
    /// How long a change may wait for the admission lock (the mutation timeout).
    admission_wait: std::time::Duration,
    /// Calls in flight and changes without an outcome record, for a shutdown that drains.
    pub drain: super::drain::Drain,
    audit: Audit,
    limiter: Arc<Mutex<HashMap<String, Bucket>>>,
    metrics: Metrics,
}

/// A token bucket: `burst` calls at once, refilled at `per_minute`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// An allowed call: its decision id (for the outcome record) and, for a mutation, the exact
/// command to send and the admission lock, which stays held until this is dropped (after
/// circusd answered).
pub struct Admitted {
    pub id: String,
    pub command: Option<Command>,
    _admission: Option<Admission>,
}

impl Gate {
    pub fn new(
        policy: ActivePolicy,
        audit: Audit,
        isolation: Isolation,
        admission: AdmissionLock,
        admission_wait: std::time::Duration,
        metrics: Metrics,
    ) -> Gate {
        Gate {
            policy,
            output: None,
            isolation,
            admission,
            admission_wait,
            drain: Default::default(),
            audit,
            limiter: Arc::default(),
            metrics,
        }
    }

    /// Decides one call and records the decision. `Err` is a denial or a failure to decide.
    pub async fn admit(&self, client: &CircusClient, identity: &str, action: Action) -> Result<Admitted, ToolError> {
        let policy = self.policy.get();
        let tool = action.tool().to_string();
        if action.mutates() {
            if let Some((per_minute, burst)) = policy.identities.get(identity).and_then(|i| i.rate_limit) {
                if !self.take(identity, per_minute, burst) {
                    self.metrics.rate_limited.with_label_values(&[identity, &tool]).inc();
                    let v = Violation::new(
                        "identity",
                        "rate_limit",
                        format!("identity {identity:?} may make {per_minute} changes a minute (bursts of {burst}); retry later"),
                    );
                    let decision = Decision::deny(vec![v]);
                    self.count(&tool, &decision);
                    let _ = self.record(identity, &action, &decision);
                    let mut e = ToolError::denied(decision.violations);
                    e.kind = ErrorKind::RateLimited;
                    e.retryable = true;
                    return Err(e);
                }
            }
        }
        // A change is checked against circusd's counts and sent under one lock: no other
        // change, from this warden or another one of this circusd, can come in between.
        let refuse = |field: &str, rule: &str, e: ToolError| {
            // No lock or no facts, no decision: a denial, recorded like any other.
            let refused = Decision::deny(vec![Violation::new(field, rule, e.message.clone())]);
            self.count(&tool, &refused);
            let _ = self.record(identity, &action, &refused);
            e
        };
        let admission = match action.mutates() {
            true => Some(self.admission.acquire(self.admission_wait).await.map_err(|e| refuse("circusd", "admission.busy", e))?),
            false => None,
        };
        let decision = match self.decide(client, identity, action.clone()).await {
            Ok((decision, _)) => decision,
            Err(e) => return Err(refuse("circusd", "facts.unavailable", e)),
        };
        // Allowed reads are recorded only when asked (`audit.reads`); everything else always.
        if !action.mutates() && decision.allow && !self.audit.reads {
            self.count(&tool, &decision);
            return Ok(Admitted { id: String::new(), command: None, _admission: None });
        }
        let id = match self.record(identity, &action, &decision) {
            Ok(id) => id,
            Err(_) if self.audit.fail_closed && action.mutates() => {
                let refused = Decision::deny(vec![Violation::new(
                    "audit",
                    "audit.unavailable",
                    "the audit log cannot be written, so no change is allowed; reads still work",
                )]);
                self.count(&tool, &refused);
                return Err(ToolError::denied(refused.violations));
            }
            Err(_) => String::new(),
        };
        self.count(&tool, &decision);
        if decision.allow {
            if action.mutates() && !id.is_empty() {
                self.drain.admitted(&id);
            }
            Ok(Admitted { id, command: decision.command, _admission: admission })
        } else {
            let not_found = decision.violations.iter().all(|v| v.rule == "watcher.not_found");
            let mut e = ToolError::denied(decision.violations);
            if not_found {
                e.kind = ErrorKind::NotFound;
            }
            Err(e)
        }
    }

    /// The decision a call would get, and the facts it saw; nothing is recorded or sent.
    pub async fn decide(&self, client: &CircusClient, identity: &str, action: Action) -> Result<(Decision, Facts), ToolError> {
        let policy = self.policy.get();
        // Only an add touches the filesystem; keep those syscalls off the async workers.
        let mut f = if matches!(action, Action::Add(_)) {
            let (policy, action) = (policy.clone(), action.clone());
            tokio::task::spawn_blocking(move || facts::gather(&policy, &action))
                .await
                .map_err(|e| ToolError::new(ErrorKind::CircusError, format!("gathering facts failed: {e}")))?
        } else {
            Facts::default()
        };
        circus_facts(client, &action, &mut f).await?;
        let isolation = self.isolation.get();
        f.circusd_switches = isolation.circusd_switches();
        let request = Request { identity: identity.to_string(), action };
        let mut decision = decide(&policy, &request, &f);
        if decision.allow && matches!(request.action, Action::Add(_)) && isolation.level < self.isolation.required {
            decision = Decision::deny(vec![Violation::new(
                "isolation",
                "isolation.required",
                format!(
                    "isolation.require is {}, but the isolation level is {}; no process may be added",
                    self.isolation.required.as_str(),
                    isolation.summary()
                ),
            )]);
        }
        // The output files are the warden's choice, part of exactly what circusd receives.
        if let (Some(files), Some(Command::Add { name, options, .. })) = (&self.output, decision.command.as_mut()) {
            options.output = Some(OutputFiles {
                dir: files.watcher_dir(name).to_string_lossy().into_owned(),
                max_bytes: files.max_bytes,
                backup_count: files.backup_count,
            });
        }
        Ok((decision, f))
    }

    /// Records circusd's answer to an allowed mutation.
    pub fn done(&self, admitted: &Admitted, result: &Result<Value, CircusError>) {
        if admitted.id.is_empty() {
            return;
        }
        let circus = match result {
            Ok(_) => json!({ "ok": true }),
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        };
        self.audit.outcome(&admitted.id, circus);
        self.drain.answered(&admitted.id);
    }

    /// Shutdown: refuses new calls, waits up to `grace` for those in flight, and records every
    /// admitted change still unanswered as such.
    pub async fn close(&self, grace: std::time::Duration) {
        let left = self.drain.close(grace).await;
        for id in &left {
            let error = format!("unanswered: the warden shut down before circusd answered (grace {} ms)", grace.as_millis());
            self.audit.outcome(id, json!({ "ok": false, "error": error }));
        }
        if !left.is_empty() {
            tracing::warn!(unanswered = left.len(), "shut down with changes in flight; their outcome records say so");
        }
    }

    fn record(&self, identity: &str, action: &Action, d: &Decision) -> std::io::Result<String> {
        let id = new_id();
        self.audit.decision(&DecisionRecord {
            kind: "decision",
            id: &id,
            time: now_rfc3339(),
            identity,
            tool: action.tool(),
            request: redacted(action),
            decision: if d.allow { "allow" } else { "deny" },
            argv: d.command.as_ref().and_then(Command::argv),
            run_as: d.run_as.as_ref(),
            would_send: d.command.as_ref().map(|c| redacted_command(c.preview())),
            rules: &d.rules,
            violations: &d.violations,
            policy_generation: self.policy.generation(),
            policy_hash: &self.policy.get().hash,
        })?;
        Ok(id)
    }

    /// `circus_warden_policy_decisions_total`: one per allow, one per fired rule of a denial.
    fn count(&self, tool: &str, d: &Decision) {
        if d.allow {
            self.metrics.decisions.with_label_values(&[tool, "allow", "allow"]).inc();
        } else {
            for rule in &d.rules {
                self.metrics.decisions.with_label_values(&[tool, "deny", rule]).inc();
            }
        }
    }

    fn take(&self, identity: &str, per_minute: u32, burst: u32) -> bool {
        let mut buckets = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let b = buckets.entry(identity.to_string()).or_insert(Bucket { tokens: f64::from(burst), at: now });
        let refill = now.duration_since(b.at).as_secs_f64() * f64::from(per_minute) / 60.0;
        b.tokens = (b.tokens + refill).min(f64::from(burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The request as recorded: environment values are replaced, names are kept.
fn redacted(action: &Action) -> Value {
    let mut v = serde_json::to_value(action).unwrap_or(Value::Null);
    if let Some(env) = v.pointer_mut("/arguments/env").and_then(Value::as_object_mut) {
        for value in env.values_mut() {
            *value = json!("<redacted>");
        }
    }
    v
}

/// A command as recorded: environment values are replaced (the names stay).
fn redacted_command(mut preview: Value) -> Value {
    if let Some(env) = preview.pointer_mut("/properties/options/env").and_then(Value::as_object_mut) {
        for (name, value) in env.iter_mut() {
            if name != OWNER_ENV {
                *value = json!("<redacted>");
            }
        }
    }
    preview
}

/// What circusd says about the watcher a request names, and, for an add, the totals.
/// Any failure other than "not found" fails the call: no fact, no decision.
async fn circus_facts(client: &CircusClient, action: &Action, f: &mut Facts) -> Result<(), ToolError> {
    if let Some(name) = action.target().and_then(WatcherName::parse) {
        f.target = Some(match client.call(Command::Options { name }).await {
            Ok(reply) => {
                let o = reply.get("options").cloned().unwrap_or_default();
                Target {
                    exists: true,
                    owner: o.pointer(&format!("/env/{OWNER_ENV}")).and_then(Value::as_str).map(str::to_string),
                    num_processes: o.get("numprocesses").and_then(Value::as_u64).unwrap_or(0) as u32,
                    command: o.get("cmd").and_then(Value::as_str).map(crate::policy::decide::shell_unquote),
                }
            }
            Err(e) if e.is_not_found() => Target::default(),
            Err(e) => return Err(e.into()),
        });
    }
    if matches!(action, Action::Add(_) | Action::Scale { .. } | Action::Start { .. } | Action::Restart { .. } | Action::Reload { .. }) {
        (f.watchers, f.total_processes) = configured(client).await?;
    }
    Ok(())
}

/// The watchers circusd holds and the processes it is configured to run: the sum of every
/// watcher's `numprocesses`, stopped ones included (circus's own `numprocesses` counts only
/// running processes, which a start could then exceed), whatever their names. One `get` a
/// watcher, in parallel.
async fn configured(client: &CircusClient) -> Result<(u32, u32), ToolError> {
    let status = client.call(Command::Status { name: None }).await?;
    let names: Vec<String> = status.get("statuses").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default();
    let replies =
        futures::future::join_all(names.iter().map(|name| client.call(Command::ConfiguredProcesses { name: name.clone() }))).await;
    let mut total: u32 = 0;
    for reply in replies {
        let reply = match reply {
            Ok(r) => r,
            // Removed between the two calls (by something that does not share the lock): gone.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        // A count that cannot be read is taken as the largest: it must never make room.
        let n = reply.pointer("/options/numprocesses").and_then(Value::as_u64).unwrap_or(u64::from(u32::MAX));
        total = total.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }
    Ok((names.len() as u32, total))
}
