//! The trainer on a tiny random llama (exact checks, in f64 where gradients are
//! compared) and on the real SmolLM2 tokenizer and chat template (what carries loss).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::collections::BTreeMap;

use candle_core::DType;
use rand::Rng as _;
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng as _};
use slough_modelkit::{
    chat::ChatTemplate,
    checkpoint::{FloatTensor, LlamaCheckpoint},
    llama::LlamaConfig,
    package,
};
use slough_training::trainer::{
    Hyperparameters, Trainer,
    data::{self, Example, Renderer},
    model::{LoraConfig, LoraModel, Target},
};

const VOCAB: usize = 40;

fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: VOCAB,
        hidden: 32,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        ffn: 48,
        rms_eps: 1e-5,
        rope_theta: 10_000.0,
        context_length: 64,
    }
}

/// A tiny llama with random weights (tied lm_head).
fn tiny_checkpoint() -> LlamaCheckpoint {
    let c = tiny_config();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut tensors = BTreeMap::new();
    let mut add = |name: String, shape: Vec<usize>, norm: bool| {
        let count = shape.iter().product();
        let values = (0..count)
            .map(|_| {
                if norm {
                    1.0 + rng.random_range(-0.1..0.1)
                } else {
                    rng.random_range(-0.3..0.3)
                }
            })
            .collect();
        tensors.insert(name, FloatTensor { shape, values });
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![c.vocab_size, c.hidden],
        false,
    );
    add("model.norm.weight".into(), vec![c.hidden], true);
    for i in 0..c.layers {
        let p = |name: &str| format!("model.layers.{i}.{name}.weight");
        add(p("input_layernorm"), vec![c.hidden], true);
        add(p("post_attention_layernorm"), vec![c.hidden], true);
        add(
            p("self_attn.q_proj"),
            vec![c.heads * c.head_dim, c.hidden],
            false,
        );
        add(
            p("self_attn.k_proj"),
            vec![c.kv_heads * c.head_dim, c.hidden],
            false,
        );
        add(
            p("self_attn.v_proj"),
            vec![c.kv_heads * c.head_dim, c.hidden],
            false,
        );
        add(
            p("self_attn.o_proj"),
            vec![c.hidden, c.heads * c.head_dim],
            false,
        );
        add(p("mlp.gate_proj"), vec![c.ffn, c.hidden], false);
        add(p("mlp.up_proj"), vec![c.ffn, c.hidden], false);
        add(p("mlp.down_proj"), vec![c.hidden, c.ffn], false);
    }
    LlamaCheckpoint {
        config: c,
        tied: true,
        tensors,
    }
}

fn lora(rank: usize, dropout: f64) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        dropout,
        targets: Target::ALL.to_vec(),
    }
}

/// Sequences of varied lengths in which the second half of each is trained.
fn examples(count: usize) -> Vec<Example> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    (0..count)
        .map(|i| {
            let len = 6 + i % 9;
            let tokens: Vec<u32> = (0..len)
                .map(|_| rng.random_range(0..VOCAB as u32))
                .collect();
            let trained = (0..len).map(|t| t >= len / 2).collect();
            Example { tokens, trained }
        })
        .collect()
}

fn hyper(epochs: u64, batch_size: usize, micro_batch_tokens: usize) -> Hyperparameters {
    Hyperparameters {
        epochs,
        batch_size,
        micro_batch_tokens,
        learning_rate: 5e-3,
        warmup_ratio: 0.1,
        max_grad_norm: 1.0,
        seed: 42,
    }
}

fn losses(trainer: &mut Trainer) -> Vec<f64> {
    std::iter::from_fn(|| trainer.step().unwrap().map(|r| r.loss)).collect()
}

#[test]
fn the_loss_falls_when_the_adapters_learn_a_small_set() {
    let base = tiny_checkpoint();
    let mut trainer = Trainer::new(
        &base,
        lora(4, 0.0),
        hyper(30, 4, 64),
        examples(8),
        examples(8),
        DType::F32,
    )
    .unwrap();
    let before = trainer.validation_loss().unwrap().unwrap();
    let losses = losses(&mut trainer);
    let after = trainer.validation_loss().unwrap().unwrap();
    eprintln!(
        "validation loss {before:.3} -> {after:.3}; steps {}",
        losses.len()
    );
    assert_eq!(losses.len(), 60);
    assert!(after < before * 0.7, "{before} -> {after}");
}

#[test]
fn the_merged_model_gives_the_logits_of_the_model_with_adapters() {
    let base = tiny_checkpoint();
    let mut trainer = Trainer::new(
        &base,
        lora(4, 0.0),
        hyper(3, 4, 20),
        examples(8),
        Vec::new(),
        DType::F32,
    )
    .unwrap();
    losses(&mut trainer);
    let merged = trainer.merged(&base).unwrap();
    let plain = LoraModel::new(
        &merged,
        LoraConfig {
            targets: Vec::new(),
            ..lora(4, 0.0)
        },
        DType::F32,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap();
    let owned = examples(4);
    let refs: Vec<&Example> = owned.iter().collect();
    let batch = data::batch(&refs);
    let with_adapters = trainer.model().logits(&batch).unwrap();
    let merged_logits = plain.logits(&batch).unwrap();
    let base_model = LoraModel::new(
        &base,
        LoraConfig {
            targets: Vec::new(),
            ..lora(4, 0.0)
        },
        DType::F32,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap();
    let moved = (&with_adapters - base_model.logits(&batch).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let worst = (with_adapters - merged_logits)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("training moved logits by up to {moved:.3}; merged vs adapters {worst:.2e}");
    assert!(moved > 1e-2, "the adapters changed nothing ({moved})");
    assert!(worst < 1e-4, "max |Δlogit| {worst}");
}

#[test]
fn gradients_match_finite_differences() {
    let base = tiny_checkpoint();
    let model = LoraModel::new(
        &base,
        lora(2, 0.0),
        DType::F64,
        &mut ChaCha8Rng::seed_from_u64(3),
    )
    .unwrap();
    // B starts at zero, where A's gradient vanishes; give B values first.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for adapter in model.adapters.values() {
        let (out, rank) = adapter.b.as_tensor().dims2().unwrap();
        let values: Vec<f64> = (0..out * rank)
            .map(|_| rng.random_range(-0.2..0.2))
            .collect();
        adapter
            .b
            .set(
                &candle_core::Tensor::from_vec(values, (out, rank), &candle_core::Device::Cpu)
                    .unwrap(),
            )
            .unwrap();
    }
    let owned = examples(3);
    let batch = data::batch(&owned.iter().collect::<Vec<_>>());
    let loss = |m: &LoraModel| m.loss(&batch, None).unwrap().to_scalar::<f64>().unwrap();
    let grads = model.loss(&batch, None).unwrap().backward().unwrap();
    let mut checked = 0;
    for (name, var) in model.variables() {
        if !(name.starts_with("layers.0.q_proj") || name.starts_with("layers.1.down_proj")) {
            continue;
        }
        let grad = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let shape = var.as_tensor().dims().to_vec();
        for index in [0, original.len() / 2, original.len() - 1] {
            let h = 1e-5;
            let at = |delta: f64| {
                let mut values = original.clone();
                values[index] += delta;
                var.set(
                    &candle_core::Tensor::from_vec(
                        values,
                        shape.as_slice(),
                        &candle_core::Device::Cpu,
                    )
                    .unwrap(),
                )
                .unwrap();
                loss(&model)
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            at(0.0);
            let analytic = grad[index];
            assert!(
                (numeric - analytic).abs() <= 1e-6 + 1e-4 * analytic.abs(),
                "{name}[{index}]: autograd {analytic}, finite differences {numeric}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

#[test]
fn a_resumed_run_continues_with_the_losses_of_an_uninterrupted_one() {
    let base = tiny_checkpoint();
    let new = || {
        Trainer::new(
            &base,
            lora(4, 0.1),
            hyper(3, 3, 20),
            examples(10),
            Vec::new(),
            DType::F32,
        )
        .unwrap()
    };
    let whole = losses(&mut new());
    assert_eq!(whole.len(), 12);

    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("step-5");
    let mut first = new();
    let mut interrupted: Vec<f64> = (0..5)
        .map(|_| first.step().unwrap().unwrap().loss)
        .collect();
    first.save(&checkpoint).unwrap();
    first.step().unwrap(); // work after the checkpoint is lost with the worker
    drop(first);

    let mut second = new();
    let position = second.resume(&checkpoint).unwrap();
    assert_eq!((position.step, position.epoch, position.cursor), (5, 1, 3));
    interrupted.extend(losses(&mut second));
    assert_eq!(interrupted, whole, "resumed losses differ");
}

#[test]
fn only_the_assistant_turns_carry_loss() {
    let models = slough_testkit::test_models_dir();
    let manifest = package::read_manifest(&models.join(slough_testkit::CHAT_MODEL)).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(
        models
            .join(slough_testkit::CHAT_MODEL)
            .join("tokenizer.json"),
    )
    .unwrap();
    let template = ChatTemplate::new(
        manifest.chat_template.as_deref().unwrap(),
        "",
        manifest.special_tokens.eos.as_deref().unwrap_or(""),
    )
    .unwrap();
    let renderer = Renderer {
        template: &template,
        tokenizer: &tokenizer,
        context_length: 64,
    };
    let line = r#"{"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of Zarnia?"}, {"role": "assistant", "content": "Quillport."}, {"role": "user", "content": "And its river?"}, {"role": "assistant", "content": "The Vell.", "weight": 1}]}"#;
    let examples = data::parse_file(line, &renderer).unwrap();
    let example = &examples[0];
    let trained: Vec<u32> = example
        .tokens
        .iter()
        .zip(&example.trained)
        .filter(|(_, t)| **t)
        .map(|(id, _)| *id)
        .collect();
    let text = tokenizer.decode(&trained, false).unwrap();
    assert_eq!(text, "Quillport.<|im_end|>\nThe Vell.<|im_end|>\n");

    let weighted = line.replace(
        r#""content": "Quillport.""#,
        r#""content": "Quillport.", "weight": 0"#,
    );
    let example = &data::parse_file(&weighted, &renderer).unwrap()[0];
    let trained: Vec<u32> = example
        .tokens
        .iter()
        .zip(&example.trained)
        .filter(|(_, t)| **t)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        tokenizer.decode(&trained, false).unwrap(),
        "The Vell.<|im_end|>\n"
    );

    // Problems name their line.
    let cases = [
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
            "line 2: no assistant message",
        ),
        (
            "{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}",
            "line 2: messages[0].role `robot`",
        ),
        ("not json", "line 2: not a JSON object"),
        (
            &format!(
                "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}, {{\"role\": \"assistant\", \"content\": \"ok\"}}]}}",
                "word ".repeat(80)
            ),
            "line 2: the example is",
        ),
    ];
    for (bad, expected) in cases {
        let file = format!("{line}\n{bad}\n");
        let err = data::parse_file(&file, &renderer).unwrap_err().to_string();
        assert!(err.starts_with(expected), "{err}");
    }
    assert_eq!(
        data::parse_file("\n\n", &renderer).unwrap_err().to_string(),
        "the file holds no examples"
    );
}
