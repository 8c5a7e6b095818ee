//! The MCP edge, and the only module that uses rmcp's API (which moves between releases).
//! It maps MCP tools, resources and prompts onto [`crate::request`], and every failure of a
//! tool onto a result with `isError: true` and a structured reason: protocol errors are left
//! to rmcp for malformed JSON-RPC.

pub mod http;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, Implementation, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, Prompt, PromptArgument, PromptMessage, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate, Role,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value;

use crate::request::{inspect, tools, ToolError, Warden};

/// Who is calling, attached by the HTTP edge from the bearer token (stdio has one identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(pub String);

/// The rmcp server handler: a thin adapter over [`Warden`].
#[derive(Clone)]
pub struct Server {
    warden: Warden,
    /// The identity of callers that bring none (the stdio session).
    default_identity: Identity,
}

impl Server {
    pub fn new(warden: Warden, default_identity: Identity) -> Server {
        Server { warden, default_identity }
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
                .with_annotations(
                    ToolAnnotations::with_title(t.title).read_only(!t.mutates).destructive(t.destructive),
                )
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
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_resources().enable_prompts().build())
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

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
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
            _ => match uri.strip_prefix("process://").and_then(|r| r.strip_suffix("/info")) {
                Some(name) => inspect::info(&self.warden, name).await,
                None => return Err(McpError::resource_not_found(format!("no resource at {uri}"), None)),
            },
        };
        body.map(|v| json_resource(uri, &v)).map_err(|e| read_error(uri, e))
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

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if request.name != "diagnose_process" {
            return Err(McpError::invalid_params(format!("unknown prompt '{}'", request.name), None));
        }
        let name = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| McpError::invalid_params("diagnose_process needs the argument 'name'", None))?;
        let text = inspect::diagnosis(&self.warden, name)
            .await
            .map_err(|e| McpError::invalid_params(e.message.clone(), Some(e.to_value())))?;
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
            .with_description(format!("Diagnosis data for watcher '{name}'"))
            .into())
    }
}
