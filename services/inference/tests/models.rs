//! Embeddings, the tokenizer endpoints and model management over a real nats-server
//! with the real packages: a batch equals one-by-one, a text over the limit is refused
//! (or cut and reported when asked), bad input is named, message text never becomes a
//! special token, and models load and unload on request and on events.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use std::time::Duration;

use slough_bus::BusError;
use slough_inference::Config;
use slough_protocol::{
    ErrorCode,
    inference::{
        self as endpoints, ChatMessage, DetokenizeRequest, DetokenizeResponse, EmbedRequest,
        EmbedResponse, ModelEvent, ModelInfo, ModelKind, ModelRequest, ModelsRequest,
        ModelsResponse, PromptInput, Role, TokenizeRequest, TokenizeResponse,
    },
};
use support::{CHAT, EMBED, Inference};

fn code(err: &BusError) -> Option<ErrorCode> {
    match err {
        BusError::Service(body) => Some(body.code),
        _ => None,
    }
}

async fn embed(inference: &Inference, inputs: &[&str]) -> Result<EmbedResponse, BusError> {
    embed_cut(inference, inputs, false).await
}

async fn embed_cut(
    inference: &Inference,
    inputs: &[&str],
    truncate: bool,
) -> Result<EmbedResponse, BusError> {
    inference
        .call(
            &endpoints::EMBED,
            &EmbedRequest {
                model: EMBED.to_owned(),
                inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
                truncate,
            },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_in_a_batch_equal_one_by_one_and_long_texts_are_refused_or_cut() {
    let inference = Inference::start(Config::default()).await;
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(60);
    let texts = [
        "A cat sits on the mat.",
        "Paris is the capital of France, a country in Western Europe.",
        "hi",
        long.as_str(),
        "Rust is a systems programming language focused on safety.",
    ];
    // Over the limit: refused, naming the input and both lengths.
    let err = embed(&inference, &texts).await.unwrap_err();
    let BusError::Service(body) = &err else {
        panic!("expected a refusal, got {err:?}")
    };
    assert_eq!(body.code, ErrorCode::InvalidRequest);
    assert_eq!(body.param.as_deref(), Some("inputs[3]"));
    let length: u32 = body
        .message
        .split_whitespace()
        .skip_while(|word| *word != "is")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        length > 500 && body.message.contains("256-token limit"),
        "{}",
        body.message
    );
    // Cut when asked, and reported.
    let batch = embed_cut(&inference, &texts, true).await.unwrap();
    assert_eq!(batch.embeddings.len(), texts.len());
    assert_eq!(batch.truncated, [3], "only the long text is cut");
    assert_eq!(batch.context_length, 256);
    let mut tokens = 0;
    for (i, text) in texts.iter().enumerate() {
        let single = embed_cut(&inference, &[text], true).await.unwrap();
        tokens += single.usage.prompt_tokens;
        let (a, b) = (&batch.embeddings[i], &single.embeddings[0]);
        assert_eq!(a.len(), 384);
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "text {i}: batch and single differ by {worst}");
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
    }
    assert_eq!(batch.usage.prompt_tokens, tokens);

    let err = embed(&inference, &[]).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::InvalidRequest));
    let err = embed(&inference, &["fine", ""]).await.unwrap_err();
    assert!(err.to_string().contains("inputs[1]"), "{err}");
    let err: BusError = inference
        .call::<_, EmbedResponse>(
            &endpoints::EMBED,
            &EmbedRequest {
                model: CHAT.to_owned(),
                inputs: vec!["x".to_owned()],
                truncate: false,
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("chat model"), "{err}");
    inference.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_endpoints_and_model_management() {
    let inference = Inference::start(Config::default()).await;
    let listed: ModelsResponse = inference
        .call(&endpoints::MODELS, &ModelsRequest {})
        .await
        .unwrap();
    let kinds: Vec<(String, ModelKind, String)> = listed
        .models
        .iter()
        .filter(|m| m.id == CHAT || m.id == EMBED)
        .map(|m| (m.id.clone(), m.kind, m.provider.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (EMBED.to_owned(), ModelKind::Embedding, "cpu".to_owned()),
            (CHAT.to_owned(), ModelKind::Chat, "cpu".to_owned()),
        ]
    );

    let rendered: TokenizeResponse = inference
        .call(
            &endpoints::TOKENIZE,
            &TokenizeRequest {
                model: CHAT.to_owned(),
                input: PromptInput::Messages(vec![ChatMessage::new(Role::User, "Hello world")]),
            },
        )
        .await
        .unwrap();
    assert!(
        rendered.prompt.starts_with("<|im_start|>system"),
        "{}",
        rendered.prompt
    );
    assert!(rendered.prompt.ends_with("<|im_start|>assistant\n"));
    assert_eq!(rendered.context_length, 2048);
    let plain: TokenizeResponse = inference
        .call(
            &endpoints::TOKENIZE,
            &TokenizeRequest {
                model: CHAT.to_owned(),
                input: PromptInput::Text("Hello world! 123".to_owned()),
            },
        )
        .await
        .unwrap();
    assert_eq!(plain.tokens, [19556, 905, 17, 216, 33, 34, 35]);

    // The text of a message is text: every special token's spelling in a message yields
    // none of the special ids; only the template's own markers are special.
    // SmolLM2's special tokens are ids 0 to 16 (<|endoftext|>, <|im_start|>, ...).
    let spelled = tokenize_spellings(&inference, 0..17).await;
    let hostile = format!("Hi{}there", spelled.concat());
    let with_specials = tokenize_chat(&inference, &hostile).await;
    let harmless = tokenize_chat(&inference, "Hi").await;
    let special_ids = |tokens: &[u32]| tokens.iter().filter(|&&id| id < 17).count();
    assert_eq!(
        special_ids(&with_specials.tokens),
        special_ids(&harmless.tokens),
        "message text became special tokens: {:?}",
        with_specials.tokens
    );
    assert!(with_specials.prompt.contains(&hostile));
    // Ordinary messages tokenize as the whole prompt would.
    let whole: TokenizeResponse = inference
        .call(
            &endpoints::TOKENIZE,
            &TokenizeRequest {
                model: CHAT.to_owned(),
                input: PromptInput::Text(harmless.prompt.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(whole.tokens, harmless.tokens);
    let text: DetokenizeResponse = inference
        .call(
            &endpoints::DETOKENIZE,
            &DetokenizeRequest {
                model: CHAT.to_owned(),
                tokens: plain.tokens.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(text.text, "Hello world! 123");
    let err = inference
        .call::<_, DetokenizeResponse>(
            &endpoints::DETOKENIZE,
            &DetokenizeRequest {
                model: CHAT.to_owned(),
                tokens: vec![1, 999_999],
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tokens[1] = 999999"), "{err}");

    // Unload and load on request.
    let unloaded: ModelInfo = inference
        .call(
            &endpoints::UNLOAD,
            &ModelRequest {
                model: EMBED.to_owned(),
            },
        )
        .await
        .unwrap();
    assert_eq!(unloaded.id, EMBED);
    let err = embed(&inference, &["x"]).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::ModelNotFound), "{err}");
    let loaded: ModelInfo = inference
        .call(
            &endpoints::LOAD,
            &ModelRequest {
                model: EMBED.to_owned(),
            },
        )
        .await
        .unwrap();
    assert_eq!(loaded.kind, ModelKind::Embedding);
    embed(&inference, &["x"]).await.unwrap();
    let err = inference
        .call::<_, ModelInfo>(
            &endpoints::LOAD,
            &ModelRequest {
                model: "nope".to_owned(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::ModelNotFound), "{err}");

    // And on events.
    let served = |listed: ModelsResponse| listed.models.iter().any(|m| m.id == EMBED);
    for (topic, expected) in [
        (&endpoints::MODEL_REMOVED, false),
        (&endpoints::MODEL_ADDED, true),
    ] {
        inference
            .bus
            .emit(
                topic,
                &ModelEvent {
                    model: EMBED.to_owned(),
                },
            )
            .await
            .unwrap();
        let mut followed = false;
        for _ in 0..100 {
            let listed: ModelsResponse = inference
                .call(&endpoints::MODELS, &ModelsRequest {})
                .await
                .unwrap();
            if served(listed) == expected {
                followed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(followed, "{topic:?} was not followed");
    }
    inference.stop().await;
}

/// The spellings of the special tokens `ids` (detokenized without skipping them).
async fn tokenize_spellings(inference: &Inference, ids: std::ops::Range<u32>) -> Vec<String> {
    let mut spellings = Vec::new();
    for id in ids {
        let prompt: TokenizeResponse = inference
            .call(
                &endpoints::TOKENIZE,
                &TokenizeRequest {
                    model: CHAT.to_owned(),
                    input: PromptInput::Tokens(vec![id]),
                },
            )
            .await
            .unwrap();
        spellings.push(prompt.prompt);
    }
    spellings
}

/// A one-message chat as the model reads it.
async fn tokenize_chat(inference: &Inference, content: &str) -> TokenizeResponse {
    inference
        .call(
            &endpoints::TOKENIZE,
            &TokenizeRequest {
                model: CHAT.to_owned(),
                input: PromptInput::Messages(vec![ChatMessage::new(Role::User, content)]),
            },
        )
        .await
        .unwrap()
}
