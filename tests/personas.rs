//! Personas measured end to end: the platform as `slough up` runs it (real NATS,
//! SmolLM2, the personality service), the same prompts answered as the jester and as the
//! analyst through the gateway, exactly as `slough eval persona` does. The answers'
//! measured style must differ in the direction of the two personas' targets, over
//! enough prompts that the difference is clear of the prompt-to-prompt spread.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use slough::{Platform, gateway_client::GatewayClient, up::bootstrap_admin_key};
use slough_protocol::ServiceKind;
use slough_testkit::TestNats;
use slough_tools::eval_persona::{self, PersonaSummary};
use support::settings;

mod support;

fn print(summary: &PersonaSummary) {
    eprintln!(
        "{}: adherence {:.3} ± {:.3} over {} answers",
        summary.persona, summary.adherence.mean, summary.adherence.sd, summary.answers
    );
    for (name, one) in &summary.traits {
        eprintln!(
            "  {name:<10} target {:.2}  measured {:.3} ± {:.3}  score {:.3}",
            one.target, one.measured.mean, one.measured.sd, one.score.mean
        );
    }
    for (name, stat) in &summary.metrics {
        eprintln!("  {name:<20} {:.3} ± {:.3}", stat.mean, stat.sd);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jester_and_analyst_answers_measure_apart_in_the_direction_of_their_traits() {
    let nats = TestNats::start();
    let mut settings = settings(&nats);
    settings.common.models_dir = Some(slough_testkit::test_models_dir());
    let key = bootstrap_admin_key(&settings)
        .await
        .unwrap()
        .expect("a fresh store makes an admin key");
    let kinds = [
        ServiceKind::Inference,
        ServiceKind::Personality,
        ServiceKind::Gateway,
    ];
    let platform = Platform::start(&kinds, &settings, &nats.url())
        .await
        .unwrap();
    let api = platform.gateway_api().await.unwrap();
    let client = GatewayClient::new(&format!("http://{api}"), &key).unwrap();
    let mut model = None;
    for _ in 0..600 {
        if let Ok(found) = client.first_model("chat").await {
            model = Some(found);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    model.expect("the gateway lists a chat model");
    // The base test model by name: the shared test models directory may hold others.
    let model = slough_testkit::CHAT_MODEL.to_owned();

    let prompts = eval_persona::read_prompts(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/persona-prompts.txt"),
    )
    .unwrap();
    // Prompt i runs with seed i, so the figures repeat from run to run (the same with
    // one prompt at a time as with four batched together).
    let hidden = indicatif::ProgressBar::hidden();
    let mut summaries = Vec::new();
    for persona in ["jester", "analyst"] {
        let summary = eval_persona::evaluate(&client, &model, persona, &prompts, 48, 4, &hidden)
            .await
            .unwrap();
        print(&summary);
        summaries.push(summary);
    }
    let (jester, analyst) = (&summaries[0], &summaries[1]);

    // The difference of means against their spread: the standard error of the
    // difference over n prompts each.
    let apart = |trait_name: &str| {
        let (a, b) = (
            jester.traits[trait_name].measured,
            analyst.traits[trait_name].measured,
        );
        let n = prompts.len() as f64;
        let error = ((a.sd.powi(2) + b.sd.powi(2)) / n).sqrt();
        (a.mean - b.mean) / error.max(1e-9)
    };
    let humour = apart("humour");
    let formality = apart("formality");
    eprintln!("jester − analyst, in standard errors: humour {humour:.1}, formality {formality:.1}");
    assert!(
        humour > 2.0,
        "the jester's answers should measure more humorous"
    );
    assert!(
        formality < -2.0,
        "the analyst's answers should measure more formal"
    );
    assert!(
        jester.metrics["exclamation_ratio"].mean > analyst.metrics["exclamation_ratio"].mean,
        "the jester should exclaim more"
    );
    platform.stop().await;
}
