//! `slough eval perplexity` on the real SmolLM2 package and real text (Cranfield's
//! abstracts from `../shared/data`): its figure equals a perplexity computed here
//! independently, from each window's full logits with a plain log-sum-exp, and a
//! package compared with itself has no KL divergence and agrees on every top token.
//! The command itself runs too, as a person would run it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::process::Command;

use slough_inference::{config::RuntimeConfig, runtime::Runtime};
use slough_testkit::{
    CHAT_MODEL, eval_data_dir, onnxruntime_library, setup_data_dir, test_models_dir,
};
use slough_tools::eval_perplexity::{Scorer, evaluate, read_text};

const CONTEXT: usize = 64;
const WINDOWS: usize = 3;

#[test]
fn perplexity_matches_an_independent_computation_and_a_self_reference_agrees() {
    let Some(data) =
        eval_data_dir("perplexity_matches_an_independent_computation_and_a_self_reference_agrees")
    else {
        return;
    };
    let corpus = || data.join("retrieval/cranfield/corpus.jsonl");
    let runtime = Runtime::load(
        &RuntimeConfig {
            library: Some(onnxruntime_library()),
            ..RuntimeConfig::default()
        },
        &setup_data_dir(),
    )
    .unwrap();
    let models = test_models_dir();
    let mut model = Scorer::open(&models, CHAT_MODEL, &runtime, CONTEXT).unwrap();
    let mut reference = Scorer::open(&models, CHAT_MODEL, &runtime, CONTEXT).unwrap();
    let text = read_text(&corpus()).unwrap();
    assert!(text.len() > 100_000, "the abstracts are joined");
    let (tokens, bos) = model.tokenize(&text).unwrap();

    let hidden = indicatif::ProgressBar::hidden();
    let (tally, windows) = evaluate(
        &mut model,
        Some(&mut reference),
        &tokens,
        bos,
        CONTEXT,
        Some(WINDOWS),
        &hidden,
    )
    .unwrap();
    assert_eq!(windows, WINDOWS);
    assert_eq!(hidden.position(), WINDOWS as u64);
    let (ppl, error) = tally.perplexity();

    // Independently: the mean negative log-likelihood of each window's second half,
    // each position's logits from a prefill of the window up to it (no decode steps, no
    // cache carried over), with a plain log-sum-exp.
    let vocab = model.vocab();
    let mut nll = 0.0f64;
    let mut count = 0usize;
    for index in 0..WINDOWS {
        let mut window = tokens[index * CONTEXT..(index + 1) * CONTEXT].to_vec();
        if let Some(bos) = bos {
            window[0] = bos;
        }
        for position in CONTEXT / 2..CONTEXT - 1 {
            let row = model.last_logits(&window[..=position]).unwrap();
            assert_eq!(row.len(), vocab);
            let max = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let log_sum = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += log_sum - row[window[position + 1] as usize] as f64;
            count += 1;
        }
    }
    let expected = (nll / count as f64).exp();
    eprintln!("PPL {ppl:.4} ± {error:.4} (independently {expected:.4}) over {count} tokens");
    assert_eq!(tally.scored(), count);
    // The same figure up to float rounding (decode and prefill sum in other orders).
    assert!(
        (ppl - expected).abs() / expected < 1e-4,
        "{ppl} vs {expected}"
    );
    assert!(error > 0.0 && error < ppl);
    // A language model on English prose: far better than chance, far from perfect.
    assert!(ppl > 2.0 && ppl < 200.0, "{ppl}");
    // The same package as its own reference: the same distributions.
    let compared = tally.compared(CHAT_MODEL);
    assert!(compared.mean_kl_divergence < 1e-6, "{compared:?}");
    assert_eq!(compared.top1_agreement, 1.0);
    assert!((compared.perplexity - ppl).abs() < 1e-6 * ppl);

    // The command prints the same figure, and records it in a package's manifest.
    let scratch = tempfile::tempdir().unwrap();
    // A copy of the package, so that recording leaves the shared one alone.
    let own_models = scratch.path().join("models");
    let copy = own_models.join(CHAT_MODEL);
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(models.join(CHAT_MODEL)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_slough-tools"))
        .args(["eval", "perplexity", "--model", CHAT_MODEL])
        .args([
            "--context",
            &CONTEXT.to_string(),
            "--chunks",
            &WINDOWS.to_string(),
        ])
        .arg(corpus())
        .env("SLOUGH_DATA_DIR", scratch.path())
        .env("SLOUGH_MODELS_DIR", &models)
        .env("SLOUGH_INFERENCE__RUNTIME__LIBRARY", onnxruntime_library())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains(&format!("PPL = {ppl:.4} ± {error:.4}")),
        "{printed}"
    );
}
