//! The MCP edge, and the only module that uses rmcp's API (which moves between releases).
//! It maps MCP tools, resources and prompts onto [`crate::request`], and every failure of a
//! tool onto a result with `isError: true` and a structured reason: protocol errors are left
//! to rmcp for malformed JSON-RPC.

mod follow;
pub mod http;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams, Prompt, PromptArgument,
    PromptMessage, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate, Role,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::output::Logs;
use crate::policy::Action;
use crate::request::{ToolError, Warden, inspect, logs, tools};

/// Sends `notify(uri)` for each of `uris` whose watcher has new entries or alerts, at most once
/// per notify interval, until `stop` or a failed send.
async fn notify_news<F, Fut>(logs: Logs, uris: Vec<String>, stop: CancellationToken, notify: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let watchers: Vec<String> = uris.iter().filter_map(|u| logs::resource_watcher(u)).map(|w| w.to_string()).collect();
    let mut seen = logs.seen(&watchers);
    let mut rx = logs.subscribe();
    loop {
        let moved = tokio::select! {
            _ = stop.cancelled() => return,
            m = logs.news(&mut rx, &watchers, &mut seen) => match m { Some(m) => m, None => return },
        };
        for i in moved {
            if !notify(uris[i].clone()).await {
                return;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(logs.limits.notify_interval) => {}
        }
    }
}

/// Who is calling, attached by the HTTP edge from the bearer token (stdio has one identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(pub String);

/// The rmcp server handler: a thin adapter over [`Warden`].
#[derive(Clone)]
pub struct Server {
    warden: Warden,
    /// The identity of callers that bring none (the stdio session).
    default_identity: Identity,
    /// This session's legacy `resources/subscribe` subscriptions, by URI.
    subscriptions: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

/// Subscriptions one session may hold (legacy subscribe, or URIs in one listen request).
const MAX_SUBSCRIPTIONS: usize = 32;

impl Server {
    pub fn new(warden: Warden, default_identity: Identity) -> Server {
        Server { warden, default_identity, subscriptions: Arc::default() }
    }

    /// A handler for a new session: shares the warden, not the subscriptions.
    pub fn for_session(&self) -> Server {
        Server::new(self.warden.clone(), self.default_identity.clone())
    }

    pub fn warden(&self) -> &Warden {
        &self.warden
    }

    /// Logs URIs of watchers this caller may read, or the reason why not.
    async fn log_uris(&self, ctx: &RequestContext<RoleServer>, uris: &[String]) -> Result<Vec<String>, McpError> {
        let identity = self.identity(ctx);
        self.warden
            .gate
            .admit(&self.warden.client, &identity.0, Action::Read { tool: "get_logs".into() })
            .await
            .map_err(|e| McpError::invalid_params(e.message.clone(), Some(e.to_value())))?;
        if self.warden.logs.is_none() {
            return Err(McpError::invalid_params("output capture is off in this warden", None));
        }
        for uri in uris {
            if logs::resource_watcher(uri).is_none() {
                return Err(McpError::invalid_params(format!("cannot subscribe to {uri}: only logs://{{name}}/recent"), None));
            }
        }
        Ok(uris.to_vec())
    }

    fn identity(&self, ctx: &RequestContext<RoleServer>) -> Identity {
        ctx.extensions
            .get::<http::Parts>()
            .and_then(|p| p.extensions.get::<Identity>())
            .cloned()
            .unwrap_or_else(|| self.default_identity.clone())
    }
}

/// Serves MCP on stdin/stdout until the client closes the stream.
pub async fn serve_stdio(server: Server) -> anyhow::Result<()> {
    let running = server.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}

/// The tool list, with schemas generated once.
static TOOL_LIST: std::sync::LazyLock<Vec<Tool>> = std::sync::LazyLock::new(|| {
    tools::TOOLS
        .iter()
        .map(|t| {
            Tool::new(t.name, t.description, (t.input_schema)())
                .with_title(t.title)
                .with_raw_output_schema((t.output_schema)().into())
                .with_annotations(ToolAnnotations::with_title(t.title).read_only(!t.mutates).destructive(t.destructive))
        })
        .collect()
});

fn json_resource(uri: &str, value: &Value) -> ReadResourceResponse {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    ReadResourceResult::new(vec![ResourceContents::text(text, uri).with_mime_type("application/json")]).into()
}

fn read_error(uri: &str, e: ToolError) -> McpError {
    McpError::resource_not_found(format!("{uri}: {}", e.message), Some(e.to_value()))
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder().enable_tools().enable_resources().enable_resources_subscribe().enable_prompts().build(),
        )
        .with_server_info(
            Implementation::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
                .with_title("circus-warden")
                .with_description(env!("CARGO_PKG_DESCRIPTION")),
        )
        .with_instructions(
            "Manage processes under circus. Every call that changes what runs is checked against the warden's \
                 policy; a denied or failed call returns isError with structuredContent.error {kind, message, \
                 violations}. Read the violations: each names the field, the rule, and what would be allowed.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(TOOL_LIST.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        TOOL_LIST.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(&self, request: CallToolRequestParams, ctx: RequestContext<RoleServer>) -> Result<CallToolResponse, McpError> {
        let identity = self.identity(&ctx);
        let started = std::time::Instant::now();
        let result = tools::call(&self.warden, &identity.0, &request.name, request.arguments).await;
        let error = result.as_ref().err().map(|e| e.kind);
        tracing::debug!(tool = %request.name, identity = %identity.0, ?error, elapsed_us = started.elapsed().as_micros() as u64, "tool call");
        Ok(match result {
            Ok(value) => CallToolResult::structured(value),
            Err(e) => CallToolResult::structured_error(e.to_value()),
        }
        .into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new("circus://processes", "processes")
                .with_description("Every watcher with its state and pids")
                .with_mime_type("application/json"),
            Resource::new("circus://stats", "stats")
                .with_description("CPU, memory and age of every process")
                .with_mime_type("application/json"),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("process://{name}/info", "process-info")
                .with_description("One watcher's circus options, state, pids and counters")
                .with_mime_type("application/json"),
            ResourceTemplate::new("logs://{name}/recent", "recent-logs")
                .with_description("A watcher's newest output entries and recent log alerts; subscribe to hear of new ones")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri.as_str();
        let body = match uri {
            "circus://processes" => inspect::list(&self.warden).await.map(|v| serde_json::to_value(v).unwrap_or_default()),
            "circus://stats" => inspect::stats(&self.warden, None).await.map(|v| serde_json::to_value(v).unwrap_or_default()),
            _ if uri.starts_with("logs://") => match logs::resource_watcher(uri) {
                Some(name) => {
                    let identity = self.identity(&_ctx);
                    let read = Action::Read { tool: "get_logs".into() };
                    match self.warden.gate.admit(&self.warden.client, &identity.0, read).await {
                        Ok(_) => logs::recent(&self.warden, name.as_str()),
                        Err(e) => Err(e),
                    }
                }
                None => return Err(McpError::resource_not_found(format!("no resource at {uri}"), None)),
            },
            _ => match uri.strip_prefix("process://").and_then(|r| r.strip_suffix("/info")) {
                Some(name) => inspect::info(&self.warden, name).await,
                None => return Err(McpError::resource_not_found(format!("no resource at {uri}"), None)),
            },
        };
        body.map(|v| json_resource(uri, &v)).map_err(|e| read_error(uri, e))
    }

    #[allow(deprecated)]
    async fn subscribe(&self, request: rmcp::model::SubscribeRequestParams, ctx: RequestContext<RoleServer>) -> Result<(), McpError> {
        let uris = self.log_uris(&ctx, std::slice::from_ref(&request.uri)).await?;
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if subs.contains_key(&request.uri) {
            return Ok(());
        }
        if subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(McpError::invalid_params(format!("at most {MAX_SUBSCRIPTIONS} subscriptions per session"), None));
        }
        // Not the request's token: that one ends with the subscribe request. The task ends on
        // unsubscribe, or at the first update the closed session cannot take.
        let stop = CancellationToken::new();
        subs.insert(request.uri.clone(), stop.clone());
        let (logs, peer) = (self.warden.logs.clone().expect("checked by log_uris"), ctx.peer.clone());
        tokio::spawn(notify_news(logs, uris, stop, move |uri| {
            let peer = peer.clone();
            async move { peer.notify_resource_updated(rmcp::model::ResourceUpdatedNotificationParam::new(uri)).await.is_ok() }
        }));
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(&self, request: rmcp::model::UnsubscribeRequestParams, _ctx: RequestContext<RoleServer>) -> Result<(), McpError> {
        if let Some(stop) = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).remove(&request.uri) {
            stop.cancel();
        }
        Ok(())
    }

    fn accepted_subscription_filter(&self, requested: &rmcp::model::SubscriptionFilter) -> Option<rmcp::model::SubscriptionFilter> {
        self.warden.logs.as_ref()?;
        let uris: Vec<String> = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|u| logs::resource_watcher(u).is_some())
            .take(MAX_SUBSCRIPTIONS)
            .cloned()
            .collect();
        Some(rmcp::model::SubscriptionFilter::builder().resource_subscriptions(uris).build())
    }

    async fn listen(&self, sub: SubscriptionContext) -> Result<(), McpError> {
        let requested = sub.accepted().resource_subscriptions.clone().unwrap_or_default();
        let uris = self.log_uris(sub.request_context(), &requested).await?;
        let logs = self.warden.logs.clone().expect("checked by log_uris");
        let stop = CancellationToken::new();
        let sink = sub.sink().clone();
        let news = notify_news(logs, uris, stop.clone(), move |uri| {
            let sink = sink.clone();
            async move { sink.notify_resource_updated(uri).await.is_ok() }
        });
        tokio::select! {
            _ = news => {}
            _ = sub.cancelled() => {}
        }
        stop.cancel();
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new(
            "diagnose_process",
            Some("Assemble a watcher's status, stats and recent events for diagnosis"),
            Some(vec![PromptArgument::new("name").with_description("The watcher's name").with_required(true)]),
        )]))
    }

    async fn get_prompt(&self, request: GetPromptRequestParams, _ctx: RequestContext<RoleServer>) -> Result<GetPromptResponse, McpError> {
        if request.name != "diagnose_process" {
            return Err(McpError::invalid_params(format!("unknown prompt '{}'", request.name), None));
        }
        let name = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| McpError::invalid_params("diagnose_process needs the argument 'name'", None))?;
        let text =
            inspect::diagnosis(&self.warden, name).await.map_err(|e| McpError::invalid_params(e.message.clone(), Some(e.to_value())))?;
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
            .with_description(format!("Diagnosis data for watcher '{name}'"))
            .into())
    }
}
