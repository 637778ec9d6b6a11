//! `POST /v1/completions`: OpenAI's (legacy) text completions: a raw prompt, or several,
//! continued by a chat model without its chat template.

use std::collections::BTreeMap;

use actix_web::post;
use actix_web::{HttpResponse, web, web::Bytes};
use serde::{Deserialize, Serialize};
use slough_protocol::inference::{
    FinishReason, GenerateChunk, GenerateRequest, PromptInput, TokenLogprob,
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
    ownership, privacy,
    state::AppState,
};

/// Choices one request may ask for in all (prompts × n).
const MAX_CHOICES: u32 = 64;

generation_body! {
/// A text completion request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    /// A prompt, a list of prompts, or the same as token ids.
    pub prompt: Prompt,
    /// Most tokens to generate per choice (OpenAI's default: 16).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Choices per prompt, 1 to 16.
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Return the log probabilities of this many (0 to 5) most likely tokens per position.
    #[schema(maximum = 5)]
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Not supported: `true` is refused.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Only `n` (or unset) is supported.
    #[serde(default)]
    pub best_of: Option<u32>,
    /// Not supported: a non-empty suffix is refused.
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// The end user the request is for, as on chat completions.
    #[serde(default)]
    pub safety_identifier: Option<String>,
    /// The older name of `safety_identifier`, used when that is absent.
    #[serde(default)]
    pub user: Option<String>,
}
}

/// One or more prompts, as text or token ids.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl CompletionRequest {
    /// One generation per prompt, fields checked.
    fn to_generate(&self) -> Result<Vec<GenerateRequest>, ApiError> {
        let inputs: Vec<PromptInput> = match &self.prompt {
            Prompt::Text(text) => vec![PromptInput::Text(text.clone())],
            Prompt::Texts(texts) => texts.iter().cloned().map(PromptInput::Text).collect(),
            Prompt::Tokens(tokens) => vec![PromptInput::Tokens(tokens.clone())],
            Prompt::TokenLists(lists) => lists.iter().cloned().map(PromptInput::Tokens).collect(),
        };
        if inputs.is_empty() {
            return Err(ApiError::invalid(
                "prompt",
                "prompt must hold at least one prompt",
            ));
        }
        if self.echo == Some(true) {
            return Err(ApiError::invalid("echo", "echo is not supported"));
        }
        if self
            .suffix
            .as_deref()
            .is_some_and(|suffix| !suffix.is_empty())
        {
            return Err(ApiError::invalid("suffix", "suffix is not supported"));
        }
        let n = self.n.unwrap_or(1);
        if self.best_of.is_some_and(|best_of| best_of != n) {
            return Err(ApiError::invalid(
                "best_of",
                "best_of is only supported equal to n",
            ));
        }
        if self.logprobs.is_some_and(|logprobs| logprobs > 5) {
            return Err(ApiError::invalid(
                "logprobs",
                "logprobs must be between 0 and 5",
            ));
        }
        openai::check_stream_options(self.stream, self.stream_options.as_ref())?;
        let choices = u32::try_from(inputs.len())
            .unwrap_or(u32::MAX)
            .saturating_mul(n);
        if choices > MAX_CHOICES {
            return Err(ApiError::invalid(
                "prompt",
                format!("prompts times n must be at most {MAX_CHOICES}, got {choices}"),
            ));
        }
        let mut template = GenerateRequest::new(&self.model, PromptInput::Text(String::new()));
        template.max_tokens = Some(self.max_tokens.unwrap_or(16));
        template.sampling = self.sampling();
        template.stop = Stop::into_list(self.stop.clone());
        template.n = n;
        template.logprobs = self.logprobs.is_some();
        template.top_logprobs = self.logprobs.unwrap_or(0);
        openai::validate(&template, "max_tokens")?;
        Ok(inputs
            .into_iter()
            .map(|input| GenerateRequest {
                input,
                ..template.clone()
            })
            .collect())
    }
}

/// A text completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    /// Always `text_completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    /// Prompt `i`'s choices are `i * n` to `i * n + n - 1`.
    pub choices: Vec<CompletionChoice>,
    /// Left out of stream chunks but the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub text: String,
    pub index: u32,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<Finish>,
}

/// OpenAI's legacy log probability layout, one entry per token.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    /// The alternatives at each position, token to log probability.
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    /// Where each token starts in the choice's text, in characters.
    pub text_offset: Vec<u32>,
}

impl CompletionLogprobs {
    /// Lays `tokens` out, the first starting at character `offset`; returns the offset
    /// after the last.
    fn from_tokens(tokens: Vec<TokenLogprob>, mut offset: u32) -> (CompletionLogprobs, u32) {
        let mut out = CompletionLogprobs::default();
        for token in tokens {
            out.text_offset.push(offset);
            offset += u32::try_from(token.token.chars().count()).unwrap_or(0);
            out.token_logprobs.push(token.logprob);
            out.top_logprobs.push(
                token
                    .top_logprobs
                    .into_iter()
                    .map(|top| (top.token, top.logprob))
                    .collect(),
            );
            out.tokens.push(token.token);
        }
        (out, offset)
    }
}

/// Writes completion chunks, tracking each choice's character offset for logprobs.
struct CompletionChunks {
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
    offsets: Vec<u32>,
}

impl CompletionChunks {
    fn event(&self, choices: Vec<CompletionChoice>, usage: Option<TokenUsage>) -> Bytes {
        event_data(&Completion {
            id: self.id.clone(),
            object: "text_completion".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkFormat for CompletionChunks {
    fn chunk(&mut self, chunk: GenerateChunk) -> Bytes {
        let logprobs = if self.logprobs {
            let slot = chunk.index as usize;
            if self.offsets.len() <= slot {
                self.offsets.resize(slot + 1, 0);
            }
            let (logprobs, next) =
                CompletionLogprobs::from_tokens(chunk.logprobs, self.offsets[slot]);
            self.offsets[slot] = next;
            Some(logprobs)
        } else {
            None
        };
        self.event(
            vec![CompletionChoice {
                text: chunk.text,
                index: chunk.index,
                logprobs,
                finish_reason: None,
            }],
            None,
        )
    }

    fn finished(&mut self, index: u32, reason: FinishReason) -> Bytes {
        self.event(
            vec![CompletionChoice {
                text: String::new(),
                index,
                logprobs: None,
                finish_reason: Some(reason.into()),
            }],
            None,
        )
    }

    fn usage(&self, usage: TokenUsage) -> Bytes {
        self.event(Vec::new(), Some(usage))
    }
}

/// Creates a text completion.
#[utoipa::path(
    tag = "OpenAI",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion, or with `stream` a stream of \
            `Completion` chunks ending with `data: [DONE]`",
            content(
                (Completion = "application/json"),
                (Completion = "text/event-stream"),
            )),
    ),
    security(("api_key" = [])),
)]
#[post("/v1/completions")]
pub async fn create(
    state: web::Data<AppState>,
    Caller(key): Caller,
    connection: Connection,
    JsonBody(body): JsonBody<CompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    key.require(Scope::Inference)?;
    let mut requests = body.to_generate()?;
    ownership::check_model(&state, &key, &body.model).await?;
    let several = requests.len() > 1;
    let texts = requests
        .iter_mut()
        .enumerate()
        .filter_map(|(index, request)| match &mut request.input {
            PromptInput::Text(text) => {
                let param = if several {
                    format!("prompt[{index}]")
                } else {
                    "prompt".to_owned()
                };
                Some((param, text))
            }
            _ => None,
        });
    let masked = privacy::screen(key.pii, &state.metrics, texts)?;
    let end_user = end_user(body.safety_identifier.as_deref(), body.user.as_deref())?;
    let id = response_id("cmpl");
    let created = now_unix();
    let logprobs = body.logprobs.is_some();
    let stream = (body.stream == Some(true)).then(|| body.stream_options.unwrap_or_default());
    let format = CompletionChunks {
        id: id.clone(),
        created,
        model: body.model.clone(),
        logprobs,
        offsets: Vec::new(),
    };
    let mut metered = state
        .admission
        .admit(&key, "completions", &body.model)
        .await?;
    metered.pii_masked(&masked);
    metered.end_user(end_user);
    let generation = generation::open_all(&state.bus, &state.replicas, &requests)
        .await
        .map_err(|err| metered.failed(ApiError::from_bus(&err)))?;
    let answer = generation::answer(generation, connection, metered, stream.as_ref(), format);
    let (choices, usage) = match answer.await? {
        Answer::Streamed(response) => return Ok(response),
        Answer::Collected(choices, usage) => (choices, usage),
    };
    let choices = choices
        .into_iter()
        .zip(0..)
        .map(|(choice, index)| CompletionChoice {
            text: choice.text,
            index,
            logprobs: logprobs.then(|| CompletionLogprobs::from_tokens(choice.logprobs, 0).0),
            finish_reason: choice.finish_reason.map(Finish::from),
        })
        .collect();
    Ok(HttpResponse::Ok().json(Completion {
        id,
        object: "text_completion".to_owned(),
        created,
        model: body.model,
        choices,
        usage: Some(usage.into()),
    }))
}
