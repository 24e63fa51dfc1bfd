//! The guide for models over MCP: the prompt `ghost_patch_guide` and the resource
//! `ghost://guide`, both the long version of [`crate::guide`].

use rmcp::ErrorData as McpError;
use rmcp::model::{
    GetPromptResult, ListPromptsResult, ListResourcesResult, Prompt, PromptMessage,
    ReadResourceResult, Resource, ResourceContents, Role,
};

use crate::guide::{self, Version};

/// The prompt's name.
pub const PROMPT: &str = "ghost_patch_guide";
/// The resource's URI.
pub const RESOURCE_URI: &str = "ghost://guide";

const DESCRIPTION: &str = "How to write Ghost Runner patches that apply: the format with an example of every edit op, choosing an op (the matching ladder), reading failures and diagnostics, resubmitting, dry run, long poll, revert.";

fn long() -> String {
    guide::render(guide::SOURCE, Version::Long)
}

/// The one prompt.
pub fn prompts() -> ListPromptsResult {
    ListPromptsResult::with_all_items(vec![
        Prompt::new(PROMPT, Some(DESCRIPTION), None).with_title("Ghost Runner patch guide"),
    ])
}

/// The prompt `name`: the guide as one user message.
pub fn prompt(name: &str) -> Result<GetPromptResult, McpError> {
    if name != PROMPT {
        return Err(McpError::invalid_params(
            format!(
                "no prompt named {:?}; the only one is {PROMPT}",
                name.chars().take(64).collect::<String>()
            ),
            None,
        ));
    }
    let mut result = GetPromptResult::new(vec![PromptMessage::new_text(Role::User, long())]);
    result.description = Some(DESCRIPTION.to_owned());
    Ok(result)
}

/// The one resource.
pub fn resources() -> ListResourcesResult {
    let text = long();
    ListResourcesResult::with_all_items(vec![
        Resource::new(RESOURCE_URI, "guide")
            .with_title("Ghost Runner patch guide")
            .with_description(DESCRIPTION)
            .with_mime_type("text/markdown")
            .with_size(text.len() as u64),
    ])
}

/// The resource at `uri`.
pub fn resource(uri: &str) -> Result<ReadResourceResult, McpError> {
    if uri != RESOURCE_URI {
        return Err(McpError::resource_not_found(
            format!(
                "no resource at {:?}; the only one is {RESOURCE_URI}",
                uri.chars().take(128).collect::<String>()
            ),
            None,
        ));
    }
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(long(), RESOURCE_URI).with_mime_type("text/markdown"),
    ]))
}
