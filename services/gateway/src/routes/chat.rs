//! `POST /v1/chat/completions`: OpenAI's chat completions, plain or streamed, on a chat
//! model served by inference.

use actix_web::post;
use actix_web::{HttpResponse, web, web::Bytes};
use serde::{Deserialize, Serialize};
use slough_protocol::{
    inference::{
        self as protocol, ChatMessage, FinishReason, GenerateChunk, GenerateRequest, PromptInput,
        TokenLogprob,
    },
    personality::Adherence,
};
use utoipa::ToSchema;

use crate::{
    error::ApiError,
    generation::{self, Answer, ChunkFormat, event_data},
    http::{Caller, Connection, JsonBody},
    keys::Scope,
    openai::{
        self, Finish, Stop, StreamOptions, TokenUsage, end_user, generation_body, now_unix,
        response_id,
    },
    ownership,
    pipeline::{ChatPipeline, ChatTurn, Citation, Keep, Retrieval, Retrieved},
    privacy,
    state::AppState,
};

generation_body! {
/// A chat completion request. Fields OpenAI defines that SloughGPT does not support
/// (tools, response formats, ...) are refused by name rather than ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    /// The model's id (see `GET /v1/models`).
    pub model: String,
    /// The conversation so far; at least one message.
    #[schema(min_items = 1)]
    pub messages: Vec<RequestMessage>,
    /// Most tokens to generate (deprecated by OpenAI in favour of `max_completion_tokens`).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Most tokens to generate; default: what is left of the context.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Choices to generate, 1 to 16.
    #[serde(default)]
    pub n: Option<u32>,
    /// Up to 4 sequences that end a choice; they are not returned.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Return each token's log probability.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// With `logprobs`: the 0 to 20 most likely alternatives at each position.
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    /// Answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// The end user the request is for (1 to 256 characters; OpenAI suggests a hash
    /// of their id): kept with the request's usage and stored completion, so that an
    /// admin can export or erase them (`/v1/end_users/{user}`).
    #[serde(default)]
    pub safety_identifier: Option<String>,
    /// The older name of `safety_identifier`, used when that is absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Keep the request and its first choice for the key that made it, to take feedback
    /// (`POST /v1/chat/completions/{id}/feedback`) and become fine-tuning data.
    #[serde(default)]
    pub store: Option<bool>,
    /// Key-value pairs; accepted for compatibility.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Extension: the persona to answer as (see `GET /v1/personas`); also chosen by a
    /// model alias `<model>:<persona>`. The answer then carries `persona_adherence`.
    #[serde(default)]
    pub persona: Option<String>,
    /// Extension: answer from a collection's chunks (`{"collection": "docs", "top_k":
    /// 4, "mode": "hybrid"}`); the answer then carries `citations`.
    #[serde(default)]
    pub rag: Option<Retrieval>,
}
}

/// One message of the conversation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestMessage {
    pub role: Role,
    pub content: MessageContent,
    /// A participant's name; accepted and not used.
    #[serde(default)]
    pub name: Option<String>,
}

/// Who speaks. `developer` is read as `system`.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
}

/// Text, or a list of text parts joined in order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// A part of a message's content; only text is supported.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContentPart {
    Text { text: String },
}

impl ChatCompletionRequest {
    /// The served model and the persona this request names: `model` may be an alias
    /// `<model>:<persona>`, and `persona` may name one too, but not a different one.
    fn model_and_persona(&self) -> Result<(String, Option<String>), ApiError> {
        let (model, Some(alias)) = slough_protocol::names::split_model_alias(&self.model) else {
            return Ok((self.model.clone(), self.persona.clone()));
        };
        match &self.persona {
            Some(persona) if persona != alias => Err(ApiError::invalid(
                "persona",
                format!(
                    "persona `{persona}` differs from the persona `{alias}` of the model \
                     alias `{}`",
                    self.model
                ),
            )),
            _ => Ok((model.to_owned(), Some(alias.to_owned()))),
        }
    }

    /// The generation this request asks for, its fields checked.
    fn to_generate(&self, model: &str) -> Result<GenerateRequest, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "messages must hold at least one message",
            ));
        }
        let messages = self
            .messages
            .iter()
            .map(|message| ChatMessage {
                role: match message.role {
                    Role::System | Role::Developer => protocol::Role::System,
                    Role::User => protocol::Role::User,
                    Role::Assistant => protocol::Role::Assistant,
                },
                content: match &message.content {
                    MessageContent::Text(text) => text.clone(),
                    MessageContent::Parts(parts) => parts
                        .iter()
                        .map(|ContentPart::Text { text }| text.as_str())
                        .collect(),
                },
            })
            .collect();
        openai::check_stream_options(self.stream, self.stream_options.as_ref())?;
        let mut request = GenerateRequest::new(model, PromptInput::Messages(messages));
        request.max_tokens = self.max_completion_tokens.or(self.max_tokens);
        request.sampling = self.sampling();
        request.stop = Stop::into_list(self.stop.clone());
        request.n = self.n.unwrap_or(1);
        request.logprobs = self.logprobs.unwrap_or(false);
        request.top_logprobs = self.top_logprobs.unwrap_or(0);
        let max_tokens_param = if self.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        openai::validate(&request, max_tokens_param)?;
        Ok(request)
    }
}

/// A chat completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: TokenUsage,
    /// Extension, with `rag`: the sources the model was given, as numbered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub citations: Option<Vec<Citation>>,
    /// Extension, with `rag`: how many chunks were found and how many were left out to
    /// fit the context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<RetrievalSummary>,
}

/// How many retrieved chunks made it into the prompt.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetrievalSummary {
    pub found: usize,
    pub used: usize,
    /// Left out, lowest-ranked first, so that the prompt and the answer fit.
    pub dropped_for_context: usize,
}

impl RetrievalSummary {
    fn of(retrieved: &Retrieved) -> RetrievalSummary {
        RetrievalSummary {
            found: retrieved.found,
            used: retrieved.citations.len(),
            dropped_for_context: retrieved.dropped,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ResponseMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<Finish>,
    /// Extension, with a persona: how well the answer matched it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persona_adherence: Option<Adherence>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResponseMessage {
    /// Always `assistant`.
    pub role: String,
    pub content: String,
}

/// Log probabilities of a choice's tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<LogprobEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogprobEntry {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprobEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopLogprobEntry {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

fn chat_logprobs(tokens: Vec<TokenLogprob>) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .into_iter()
            .map(|token| LogprobEntry {
                token: token.token,
                logprob: token.logprob,
                bytes: token.bytes,
                top_logprobs: token
                    .top_logprobs
                    .into_iter()
                    .map(|top| TopLogprobEntry {
                        token: top.token,
                        logprob: top.logprob,
                        bytes: top.bytes,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// One server-sent event of a streamed chat completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: String,
    pub created: u64,
    pub model: String,
    /// Empty in the final usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only in the final chunk, with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
    /// Extension, with `rag`: in one chunk after every choice finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub citations: Option<Vec<Citation>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<RetrievalSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<Finish>,
    /// Extension, with a persona: how well the choice matched it, in one chunk per
    /// choice after every choice finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persona_adherence: Option<Adherence>,
}

/// What a chunk adds to a choice's message.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// Writes chat completion chunks.
struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    n: u32,
    logprobs: bool,
    /// What runs the steps after the answer, with what they need: the completion to
    /// keep (`store`), the persona to score against, and each choice's text so far.
    pipeline: ChatPipeline,
    keep: Option<Keep>,
    persona: Option<String>,
    texts: Vec<String>,
    /// With `rag`: the sources, sent at the end.
    retrieved: Option<Retrieved>,
}

impl ChatChunks {
    fn event(&self, choices: Vec<ChunkChoice>, usage: Option<TokenUsage>) -> Bytes {
        event_data(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            citations: None,
            retrieval: None,
        })
    }
}

impl ChunkFormat for ChatChunks {
    fn opening(&self) -> Vec<Bytes> {
        (0..self.n)
            .map(|index| {
                let delta = Delta {
                    role: Some("assistant".to_owned()),
                    content: Some(String::new()),
                };
                self.event(
                    vec![ChunkChoice {
                        index,
                        delta,
                        logprobs: None,
                        finish_reason: None,
                        persona_adherence: None,
                    }],
                    None,
                )
            })
            .collect()
    }

    fn chunk(&mut self, chunk: GenerateChunk) -> Bytes {
        if (self.keep.is_some() || self.persona.is_some())
            && let Some(text) = self.texts.get_mut(chunk.index as usize)
        {
            text.push_str(&chunk.text);
        }
        let logprobs = self.logprobs.then(|| chat_logprobs(chunk.logprobs));
        self.event(
            vec![ChunkChoice {
                index: chunk.index,
                delta: Delta {
                    role: None,
                    content: Some(chunk.text),
                },
                logprobs,
                finish_reason: None,
                persona_adherence: None,
            }],
            None,
        )
    }

    fn finished(&mut self, index: u32, reason: FinishReason) -> Bytes {
        self.event(
            vec![ChunkChoice {
                index,
                delta: Delta::default(),
                logprobs: None,
                finish_reason: Some(reason.into()),
                persona_adherence: None,
            }],
            None,
        )
    }

    fn usage(&self, usage: TokenUsage) -> Bytes {
        self.event(Vec::new(), Some(usage))
    }

    async fn closing(&mut self) -> Vec<Bytes> {
        let scores = self
            .pipeline
            .after_answer(self.keep.as_ref(), self.persona.as_deref(), &self.texts)
            .await;
        let mut closing = Vec::new();
        if let Some(retrieved) = self.retrieved.take() {
            closing.push(event_data(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".to_owned(),
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: None,
                retrieval: Some(RetrievalSummary::of(&retrieved)),
                citations: Some(retrieved.citations),
            }));
        }
        closing.extend(
            scores
                .into_iter()
                .zip(0..)
                .filter_map(|(adherence, index)| {
                    let choice = ChunkChoice {
                        index,
                        delta: Delta::default(),
                        logprobs: None,
                        finish_reason: None,
                        persona_adherence: Some(adherence?),
                    };
                    Some(self.event(vec![choice], None))
                }),
        );
        closing
    }
}

/// Creates a chat completion.
#[utoipa::path(
    tag = "OpenAI",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion, or with `stream` a stream of \
            `ChatCompletionChunk` events ending with `data: [DONE]`",
            content(
                (ChatCompletion = "application/json"),
                (ChatCompletionChunk = "text/event-stream"),
            )),
    ),
    security(("api_key" = [])),
)]
#[post("/v1/chat/completions")]
pub async fn create(
    state: web::Data<AppState>,
    Caller(key): Caller,
    connection: Connection,
    JsonBody(body): JsonBody<ChatCompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    key.require(Scope::Inference)?;
    let (model, persona) = body.model_and_persona()?;
    let mut request = body.to_generate(&model)?;
    ownership::check_model(&state, &key, &model).await?;
    let texts = match &mut request.input {
        protocol::PromptInput::Messages(messages) => messages.iter_mut().collect(),
        _ => Vec::new(),
    };
    let texts = texts
        .into_iter()
        .enumerate()
        .map(|(index, message)| (format!("messages[{index}]"), &mut message.content));
    let masked = privacy::screen(key.pii, &state.metrics, texts)?;
    let end_user = end_user(body.safety_identifier.as_deref(), body.user.as_deref())?;
    let id = response_id("chatcmpl");
    let created = now_unix();
    let stream = (body.stream == Some(true)).then(|| body.stream_options.unwrap_or_default());
    let pipeline = ChatPipeline::new(state.bus.clone(), state.replicas.clone());
    let keep = (body.store == Some(true)).then(|| Keep {
        store: state.store.clone(),
        owner: key.id.to_string(),
        end_user: end_user.clone(),
        id: id.clone(),
        model: body.model.clone(),
        messages: match &request.input {
            protocol::PromptInput::Messages(messages) => messages
                .iter()
                .map(|m| (m.role.as_str().to_owned(), m.content.clone()))
                .collect(),
            _ => Vec::new(),
        },
        mask_pii: state.mask_stored_pii,
    });
    let mut metered = state
        .admission
        .admit(&key, "chat.completions", &model)
        .await?;
    metered.pii_masked(&masked);
    metered.end_user(end_user);
    let turn = ChatTurn {
        generation: request.clone(),
        persona: persona.clone(),
        retrieval: body.rag.clone(),
        reader: key.owner_filter(),
    };
    let (generation, retrieved) = pipeline
        .run(turn)
        .await
        .map_err(|err| metered.failed(err))?;
    let retrieved = body.rag.is_some().then_some(retrieved);
    let format = ChatChunks {
        id: id.clone(),
        created,
        model: body.model.clone(),
        n: request.n,
        logprobs: request.logprobs,
        pipeline: pipeline.clone(),
        keep: keep.clone(),
        persona: persona.clone(),
        texts: vec![String::new(); request.n as usize],
        retrieved: retrieved.clone(),
    };
    let answer = generation::answer(generation, connection, metered, stream.as_ref(), format);
    let (choices, usage) = match answer.await? {
        Answer::Streamed(response) => return Ok(response),
        Answer::Collected(choices, usage) => (choices, usage),
    };
    let texts: Vec<String> = choices.iter().map(|choice| choice.text.clone()).collect();
    let mut scores = pipeline
        .after_answer(keep.as_ref(), persona.as_deref(), &texts)
        .await
        .into_iter();
    let choices = choices
        .into_iter()
        .zip(0..)
        .map(|(choice, index)| ChatChoice {
            index,
            message: ResponseMessage {
                role: "assistant".to_owned(),
                content: choice.text,
            },
            logprobs: request.logprobs.then(|| chat_logprobs(choice.logprobs)),
            finish_reason: choice.finish_reason.map(Finish::from),
            persona_adherence: scores.next().flatten(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(ChatCompletion {
        id,
        object: "chat.completion".to_owned(),
        created,
        model: body.model,
        choices,
        usage: usage.into(),
        retrieval: retrieved.as_ref().map(RetrievalSummary::of),
        citations: retrieved.map(|retrieved| retrieved.citations),
    }))
}
