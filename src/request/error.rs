//! The one error shape tools return: a kind an agent can branch on, a message that says what
//! to do, the failed checks of a denial, and whether retrying may help.

use serde::Serialize;
use serde_json::{Value, json};

use crate::circus::CircusError;
use crate::policy::Violation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidArguments,
    Denied,
    UnknownTool,
    NotFound,
    CircusError,
    CircusUnavailable,
    Timeout,
    Busy,
    RateLimited,
    /// A change was sent and circusd's answer was lost with it: check before retrying.
    OutcomeUnknown,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArguments => "invalid_arguments",
            ErrorKind::Denied => "denied",
            ErrorKind::UnknownTool => "unknown_tool",
            ErrorKind::NotFound => "not_found",
            ErrorKind::CircusError => "circus_error",
            ErrorKind::CircusUnavailable => "circus_unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Busy => "busy",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i64>,
    pub retryable: bool,
}

impl ToolError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ToolError {
        let retryable = matches!(kind, ErrorKind::CircusUnavailable | ErrorKind::Timeout | ErrorKind::Busy | ErrorKind::RateLimited);
        ToolError { kind, message: message.into(), violations: Vec::new(), errno: None, retryable }
    }

    pub fn invalid(field: &str, rule: &'static str, message: impl Into<String>) -> ToolError {
        let message = message.into();
        let mut e = ToolError::new(ErrorKind::InvalidArguments, format!("invalid arguments: {message}"));
        e.violations.push(Violation::new(field, rule, message));
        e
    }

    pub fn denied(violations: Vec<crate::policy::Violation>) -> ToolError {
        let summary: Vec<String> = violations.iter().map(|v| format!("{}: {}", v.field, v.message)).collect();
        ToolError {
            kind: ErrorKind::Denied,
            message: format!("denied by policy: {}", summary.join("; ")),
            violations,
            errno: None,
            retryable: false,
        }
    }

    /// The body of the `structuredContent` of an `isError` result.
    pub fn to_value(&self) -> Value {
        json!({ "error": self })
    }
}

impl From<CircusError> for ToolError {
    fn from(e: CircusError) -> ToolError {
        let kind = match &e {
            CircusError::Unavailable(_) | CircusError::Closed => ErrorKind::CircusUnavailable,
            CircusError::Timeout(_) => ErrorKind::Timeout,
            CircusError::Busy { .. } => ErrorKind::Busy,
            CircusError::Lost(_) => ErrorKind::OutcomeUnknown,
            e if e.is_not_found() => ErrorKind::NotFound,
            CircusError::Remote { .. } | CircusError::BadReply(_) | CircusError::NotSent(_) => ErrorKind::CircusError,
        };
        let mut out = ToolError::new(kind, e.to_string());
        if let CircusError::Remote { errno, .. } = e {
            out.errno = Some(errno);
        }
        out
    }
}
