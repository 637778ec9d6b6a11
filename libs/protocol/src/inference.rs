//! Messages of the inference service: generation (streamed), embeddings, the models it
//! serves, and tokenizer helpers the gateway uses to count tokens without a model.
//!
//! Generation is a stream (see [`crate::stream`]): a [`GenerateRequest`] inside a
//! `StreamRequest`, then [`GenerateChunk`]s and one [`GenerateEnd`].

use serde::{Deserialize, Serialize};

use crate::{
    ServiceKind,
    endpoint::{Endpoint, Event, StreamEndpoint},
};

/// Streamed generation from a chat model.
pub const GENERATE: StreamEndpoint<GenerateRequest, GenerateChunk, GenerateEnd> =
    StreamEndpoint::new(ServiceKind::Inference, "generate");
/// Embeddings from an embedding model.
pub const EMBED: Endpoint<EmbedRequest, EmbedResponse> =
    Endpoint::new(ServiceKind::Inference, "embed");
/// The models an instance serves.
pub const MODELS: Endpoint<ModelsRequest, ModelsResponse> =
    Endpoint::new(ServiceKind::Inference, "models");
/// Load a package from the models directory.
pub const LOAD: Endpoint<ModelRequest, ModelInfo> = Endpoint::new(ServiceKind::Inference, "load");
/// Unload a package.
pub const UNLOAD: Endpoint<ModelRequest, ModelInfo> =
    Endpoint::new(ServiceKind::Inference, "unload");
/// Render and tokenize a prompt as generation would.
pub const TOKENIZE: Endpoint<TokenizeRequest, TokenizeResponse> =
    Endpoint::new(ServiceKind::Inference, "tokenize");
/// Token ids back to text.
pub const DETOKENIZE: Endpoint<DetokenizeRequest, DetokenizeResponse> =
    Endpoint::new(ServiceKind::Inference, "detokenize");
/// Each inference replica's load, published a few times a second while it changes and
/// every second otherwise, so callers can send work where there is room.
pub const LOAD_REPORTS: Event<InstanceLoad> = Event::new("inference.load");
/// A model package was added to the models directory.
pub const MODEL_ADDED: Event<ModelEvent> = Event::new("models.added");
/// A model package was removed from the models directory.
pub const MODEL_REMOVED: Event<ModelEvent> = Event::new("models.removed");

/// A chat message. The content is plain text (the gateway flattens text parts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

/// Who speaks in a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role as chat templates name it (`system`, `user`, `assistant`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// What to generate from: chat messages rendered with the model's chat template, a raw
/// prompt used as it is, or token ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptInput {
    Messages(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// How tokens are chosen. Unset fields take the model's defaults; temperature 0 is
/// greedy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 picks the most likely token. The allowed range of this and every other field
    /// is in [`crate::bounds`].
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens (0: off).
    pub top_k: Option<u32>,
    /// Drop tokens less likely than this fraction of the most likely one.
    pub min_p: Option<f32>,
    /// Divides positive (multiplies negative) logits of tokens already seen; 1 is off.
    pub repetition_penalty: Option<f32>,
    /// −2 to 2, subtracted once from the logit of each token already generated.
    pub presence_penalty: Option<f32>,
    /// −2 to 2, times how often each token has been generated.
    pub frequency_penalty: Option<f32>,
    /// The same seed and request give the same tokens.
    pub seed: Option<u64>,
}

/// Generate text from a chat model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// The model's id.
    pub model: String,
    pub input: PromptInput,
    /// At most this many tokens per choice (default: what is left of the context).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Strings that end a choice (at most four); matched on text, never emitted.
    #[serde(default)]
    pub stop: Vec<String>,
    /// How many choices (default 1).
    #[serde(default = "one")]
    pub n: u32,
    /// Return the log probability of each emitted token.
    #[serde(default)]
    pub logprobs: bool,
    /// With `logprobs`: also the most likely alternatives at each position (0 to 20).
    #[serde(default)]
    pub top_logprobs: u32,
    /// Keep generating past the model's stop tokens (benchmarks); stop strings and
    /// `max_tokens` still apply.
    #[serde(default)]
    pub ignore_eos: bool,
}

fn one() -> u32 {
    1
}

impl GenerateRequest {
    /// One choice from `input` with the model's defaults: no stop strings, no logprobs,
    /// `max_tokens` up to the end of the context. Set the other fields as needed.
    pub fn new(model: impl Into<String>, input: PromptInput) -> GenerateRequest {
        GenerateRequest {
            model: model.into(),
            input,
            max_tokens: None,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            n: 1,
            logprobs: false,
            top_logprobs: 0,
            ignore_eos: false,
        }
    }
}

/// A piece of one choice's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GenerateChunk {
    /// Which choice (0 to n − 1).
    pub index: u32,
    /// New text, valid UTF-8 (a character split across tokens arrives whole).
    pub text: String,
    /// Per token behind `text`, when asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
    /// On a stream's first chunk only: the prompt's tokens, so a caller that leaves
    /// before the final frame (which carries the usage) can still account for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
}

/// The log probability of a chosen token, and of its best alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes (a token may hold part of a character).
    pub bytes: Vec<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative at a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` or the context's end.
    Length,
}

/// Token counts of a request.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

/// Usage of several requests adds up (several prompts of one API request).
impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, more: Usage) {
        self.prompt_tokens += more.prompt_tokens;
        self.completion_tokens += more.completion_tokens;
        self.total_tokens += more.total_tokens;
    }
}

/// The final frame of a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GenerateEnd {
    /// Why each choice ended, by index.
    pub finish_reasons: Vec<FinishReason>,
    pub usage: Usage,
}

/// Embed texts with an embedding model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    pub model: String,
    /// One or more texts (at most 2048).
    pub inputs: Vec<String>,
    /// Cut inputs longer than the model's limit instead of refusing them; the response
    /// lists which were cut.
    #[serde(default)]
    pub truncate: bool,
}

/// L2-normalized vectors, one per input, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EmbedResponse {
    pub model: String,
    pub embeddings: Vec<Vec<f32>>,
    /// Indices of inputs cut to the model's limit of `context_length` tokens (only with
    /// `truncate`; otherwise a longer input is refused).
    pub truncated: Vec<u32>,
    pub context_length: u32,
    pub usage: Usage,
}

/// What a served model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Embedding,
}

/// A model an instance serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelInfo {
    pub id: String,
    pub kind: ModelKind,
    pub architecture: String,
    /// Longest prompt plus completion, in tokens, as served (may be below the model's).
    pub context_length: u32,
    pub quantization: String,
    /// When the package was built (RFC 3339).
    pub created_at: String,
    /// The execution provider the model runs on (`cpu`, `cuda`, `tensorrt`).
    pub provider: String,
    /// Embedding models: the length of their vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// Fine-tuned models: the model they were fine-tuned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// Asks for the served models; empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelsRequest {}

/// The models an instance serves, sorted by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelsResponse {
    pub models: Vec<ModelInfo>,
}

/// Load or unload a package by id (from the models directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRequest {
    pub model: String,
}

/// Render and count a prompt as generation would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub model: String,
    pub input: PromptInput,
}

/// The rendered prompt and its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenizeResponse {
    /// The text the model reads (the chat template applied).
    pub prompt: String,
    pub tokens: Vec<u32>,
    pub context_length: u32,
}

/// Turn token ids back into text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    pub model: String,
    pub tokens: Vec<u32>,
}

/// The text of some tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DetokenizeResponse {
    pub text: String,
}

/// Published on `slough.v1.events.models.added|removed` when a package appears in or
/// leaves the models directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelEvent {
    pub model: String,
}

/// How loaded one inference replica is (see [`LOAD_REPORTS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InstanceLoad {
    /// The replica's instance id; its streamed endpoints also answer on
    /// `<subject>.<instance_id>` (see `StreamEndpoint::instance_subject`).
    pub instance_id: String,
    /// Its models.
    pub models: Vec<ModelLoad>,
}

/// The load of one model on one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelLoad {
    pub model: String,
    /// Requests running or queued.
    pub pending: u32,
    /// How many run at once (a chat model's batch size; 1 for an embedding model).
    pub capacity: u32,
}
