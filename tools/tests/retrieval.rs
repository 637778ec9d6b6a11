//! Retrieval quality that CI can afford: a sample of Cranfield (the first 20 judged
//! queries, the documents judged for them and every tenth other abstract, read from
//! `../shared/data/retrieval`), ingested through the gateway with a streamed upload into
//! a collection on the real MiniLM, scored by `slough eval retrieval`'s own code. Each
//! mode must find relevant abstracts (nDCG@10 floors well above chance), and hybrid must
//! be at least as good as the better of dense and sparse, as on the full datasets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use slough::{Platform, Settings, gateway_client::GatewayClient, up::bootstrap_admin_key};
use slough_modelkit::package::{self, ImportOptions, Quiet};
use slough_protocol::ServiceKind;
use slough_testkit::{TestNats, eval_data_dir, onnxruntime_library, setup_data_dir};
use slough_tools::eval_retrieval::{Dataset, evaluate};

const EMBED: &str = "minilm";

fn settings(nats: &TestNats, models: &Path) -> Settings {
    let mut settings = Settings::default();
    settings.common.data_dir = nats.dir().join("data");
    settings.common.nats_url = Some(nats.url());
    settings.inference.runtime.library = Some(onnxruntime_library());
    settings.common.models_dir = Some(models.to_path_buf());
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    settings.gateway.listen = any;
    settings.gateway.admin_listen = any;
    settings.inference.admin_listen = any;
    settings.rag.admin_listen = any;
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_retrieval_on_a_cranfield_sample() {
    let Some(data) = eval_data_dir("hybrid_retrieval_on_a_cranfield_sample") else {
        return;
    };
    let cranfield = data.join("retrieval/cranfield");
    let dataset = Dataset::read(&cranfield, "test").unwrap().sample(20, 10);
    assert!(dataset.corpus.len() > 150, "{}", dataset.corpus.len());

    let nats = TestNats::start();
    let models = nats.dir().join("models");
    package::import(
        &setup_data_dir().join("cache/sources/all-MiniLM-L6-v2"),
        &models,
        &ImportOptions {
            id: Some(EMBED.to_owned()),
            ..ImportOptions::default()
        },
        &Quiet,
    )
    .unwrap();
    let settings = settings(&nats, &models);
    let key = bootstrap_admin_key(&settings).await.unwrap().unwrap();
    let platform = Platform::start(
        &[
            ServiceKind::Inference,
            ServiceKind::Rag,
            ServiceKind::Gateway,
        ],
        &settings,
        &nats.url(),
    )
    .await
    .unwrap();
    let api = platform.gateway_api().await.unwrap();
    let client = GatewayClient::new(&format!("http://{api}"), &key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.first_model("embedding").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the embedding model is not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let progress = indicatif::ProgressBar::hidden();
    let report = evaluate(&client, &dataset, EMBED, None, &progress)
        .await
        .unwrap();
    eprintln!(
        "{}: {} documents, {} chunks in {:.0} s, {} queries",
        report.dataset, report.documents, report.chunks, report.ingest_seconds, report.queries
    );
    for (mode, scores) in &report.modes {
        eprintln!(
            "  {mode:<6} nDCG@10 {:.3}  MRR@10 {:.3}  recall@10 {:.3}",
            scores.ndcg_at_10, scores.mrr_at_10, scores.recall_at_10
        );
    }
    assert_eq!(progress.position(), progress.length().unwrap());
    let ndcg = |mode: &str| report.modes[mode].ndcg_at_10;
    for mode in ["dense", "sparse", "hybrid"] {
        assert!(ndcg(mode) > 0.5, "{mode}: {:?}", report.modes[mode]);
    }
    assert!(
        ndcg("hybrid") >= ndcg("dense").max(ndcg("sparse")) - 0.01,
        "{:?}",
        report.modes
    );
    let errors = platform.stop().await;
    assert!(errors.is_empty(), "{errors:?}");
}
