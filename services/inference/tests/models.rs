//! Embeddings, the tokenizer endpoints and model management over a real nats-server
//! with the real packages: a batch equals one-by-one, truncation is reported, bad input
//! is named, and models load and unload on request and on events.

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
        ChatMessage, DetokenizeRequest, DetokenizeResponse, EmbedRequest, EmbedResponse,
        ModelEvent, ModelInfo, ModelKind, ModelRequest, ModelsRequest, ModelsResponse, PromptInput,
        TokenizeRequest, TokenizeResponse,
    },
    subjects::{self, inference as endpoints},
};
use support::{CHAT, EMBED, Inference};

fn code(err: &BusError) -> Option<ErrorCode> {
    match err {
        BusError::Service(body) => Some(body.code),
        _ => None,
    }
}

async fn embed(inference: &Inference, inputs: &[&str]) -> Result<EmbedResponse, BusError> {
    inference
        .call(
            endpoints::EMBED,
            &EmbedRequest {
                model: EMBED.to_owned(),
                inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
            },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_in_a_batch_equal_one_by_one_and_truncation_is_reported() {
    let inference = Inference::start(Config::default()).await;
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(60);
    let texts = [
        "A cat sits on the mat.",
        "Paris is the capital of France, a country in Western Europe.",
        "hi",
        long.as_str(),
        "Rust is a systems programming language focused on safety.",
    ];
    let batch = embed(&inference, &texts).await.unwrap();
    assert_eq!(batch.embeddings.len(), texts.len());
    assert_eq!(batch.truncated, [3], "only the long text is cut");
    assert_eq!(batch.context_length, 256);
    let mut tokens = 0;
    for (i, text) in texts.iter().enumerate() {
        let single = embed(&inference, &[text]).await.unwrap();
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
            endpoints::EMBED,
            &EmbedRequest {
                model: CHAT.to_owned(),
                inputs: vec!["x".to_owned()],
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
        .call(endpoints::MODELS, &ModelsRequest {})
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
            endpoints::TOKENIZE,
            &TokenizeRequest {
                model: CHAT.to_owned(),
                input: PromptInput::Messages(vec![ChatMessage {
                    role: "user".to_owned(),
                    content: "Hello world".to_owned(),
                }]),
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
            endpoints::TOKENIZE,
            &TokenizeRequest {
                model: CHAT.to_owned(),
                input: PromptInput::Text("Hello world! 123".to_owned()),
            },
        )
        .await
        .unwrap();
    assert_eq!(plain.tokens, [19556, 905, 17, 216, 33, 34, 35]);
    let text: DetokenizeResponse = inference
        .call(
            endpoints::DETOKENIZE,
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
            endpoints::DETOKENIZE,
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
            endpoints::UNLOAD,
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
            endpoints::LOAD,
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
            endpoints::LOAD,
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
        (subjects::events::MODELS_REMOVED, false),
        (subjects::events::MODELS_ADDED, true),
    ] {
        inference
            .bus
            .publish(
                &subjects::event(topic),
                &ModelEvent {
                    model: EMBED.to_owned(),
                },
            )
            .await
            .unwrap();
        let mut followed = false;
        for _ in 0..100 {
            let listed: ModelsResponse = inference
                .call(endpoints::MODELS, &ModelsRequest {})
                .await
                .unwrap();
            if served(listed) == expected {
                followed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(followed, "{topic} was not followed");
    }
    inference.stop().await;
}
