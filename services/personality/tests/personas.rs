//! The personality service over a real nats-server and a real store (SQLite, then
//! PostgreSQL): personas kept, copied, changed and refused; compose, analyze and
//! adherence as the gateway calls them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::net::SocketAddr;

use secrecy::SecretString;
use slough_bus::{Bus, BusError};
use slough_protocol::{
    Endpoint, ErrorBody, ErrorCode, ServiceKind,
    inference::{ChatMessage, Role, SamplingParams},
    personality::{
        self, AdherenceRequest, AnalyzeRequest, ComposeRequest, CreatePersona, ListPersonas,
        Persona, PersonaPatch, PersonaRequest, TraitsPatch, UpdatePersona,
    },
};
use slough_service::{CommonConfig, ServiceContext};
use slough_testkit::TestNats;
use tokio_util::sync::CancellationToken;

struct Personality {
    _nats: TestNats,
    bus: Bus,
    admin: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Personality {
    async fn start(common: CommonConfig) -> Personality {
        let nats = TestNats::start();
        let ctx = ServiceContext::start(
            ServiceKind::Personality,
            slough_personality::VERSION,
            &common,
            &nats.url(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
        .expect("context");
        let admin = ctx.admin_url().to_owned();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            slough_personality::run(ctx, slough_personality::Config::default(), stop)
                .await
                .expect("personality runs");
        });
        let bus = slough_bus::connect(&nats.url(), "test", common.nats.bus_options())
            .await
            .expect("bus");
        for _ in 0..200 {
            if bus
                .call(&personality::LIST_PERSONAS, &ListPersonas {})
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Personality {
            _nats: nats,
            bus,
            admin,
            shutdown,
            task,
        }
    }

    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        endpoint: &Endpoint<Req, Resp>,
        request: &Req,
    ) -> Result<Resp, ErrorBody> {
        self.bus
            .call(endpoint, request)
            .await
            .map_err(|err: BusError| err.to_body())
    }

    async fn ids(&self) -> Vec<String> {
        let list = self
            .call(&personality::LIST_PERSONAS, &ListPersonas {})
            .await
            .unwrap();
        list.personas
            .into_iter()
            .map(|persona| persona.id)
            .collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

fn create(id: &str) -> CreatePersona {
    CreatePersona {
        id: id.to_owned(),
        from: None,
        name: None,
        description: None,
        archetype: None,
        traits: None,
        style_rules: None,
        system_template: None,
        sampling: None,
    }
}

fn refused(result: Result<Persona, ErrorBody>, code: ErrorCode, param: Option<&str>) {
    let err = result.expect_err("refused");
    assert_eq!(err.code, code, "{err}");
    assert_eq!(err.param.as_deref(), param, "{err}");
}

async fn personas_lifecycle(common: CommonConfig) {
    let service = Personality::start(common).await;
    let builtins = [
        "assistant",
        "sage",
        "mentor",
        "jester",
        "analyst",
        "companion",
    ];
    assert_eq!(service.ids().await, builtins);

    // A copy of the jester, a little less funny.
    let pirate = service
        .call(
            &personality::CREATE_PERSONA,
            &CreatePersona {
                from: Some("jester".to_owned()),
                name: Some("Pirate".to_owned()),
                description: Some("a pirate who talks like one.".to_owned()),
                traits: Some(TraitsPatch {
                    humour: Some(0.5),
                    ..TraitsPatch::default()
                }),
                ..create("pirate")
            },
        )
        .await
        .unwrap();
    assert!(!pirate.builtin);
    assert_eq!(pirate.archetype, "jester");
    assert_eq!(pirate.traits.humour, 0.5);
    assert_eq!(pirate.traits.warmth, 0.8, "copied from the jester");
    assert_eq!(pirate.sampling.temperature, Some(0.9));
    assert!(pirate.created_at.is_some());

    // Refusals name their field, and store nothing.
    let svc = &service;
    let creating = move |request: CreatePersona| async move {
        svc.call(&personality::CREATE_PERSONA, &request).await
    };
    refused(
        creating(create("pirate")).await,
        ErrorCode::Conflict,
        Some("id"),
    );
    refused(
        creating(create("jester")).await,
        ErrorCode::Conflict,
        Some("id"),
    );
    refused(
        creating(create("Bad Id")).await,
        ErrorCode::InvalidRequest,
        Some("id"),
    );
    refused(
        creating(CreatePersona {
            from: Some("nobody".to_owned()),
            ..create("orphan")
        })
        .await,
        ErrorCode::InvalidRequest,
        Some("from"),
    );
    refused(
        creating(CreatePersona {
            system_template: Some("You are {{ nmae }}.".to_owned()),
            ..create("typo")
        })
        .await,
        ErrorCode::InvalidRequest,
        Some("system_template"),
    );
    refused(
        creating(CreatePersona {
            sampling: Some(SamplingParams {
                top_p: Some(0.0),
                ..SamplingParams::default()
            }),
            ..create("greedy")
        })
        .await,
        ErrorCode::InvalidRequest,
        Some("sampling.top_p"),
    );
    let mut expected: Vec<String> = builtins.iter().map(|&id| id.to_owned()).collect();
    expected.push("pirate".to_owned());
    assert_eq!(service.ids().await, expected);

    // Changes are kept; a bad change leaves the persona as it was.
    let update = move |id: &'static str, patch: PersonaPatch| async move {
        let request = UpdatePersona {
            id: id.to_owned(),
            patch,
        };
        svc.call(&personality::UPDATE_PERSONA, &request).await
    };
    let renamed = update(
        "pirate",
        PersonaPatch {
            name: Some("Captain".to_owned()),
            style_rules: Some(vec!["Say arr.".to_owned()]),
            ..PersonaPatch::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(renamed.name, "Captain");
    assert_eq!(renamed.created_at, pirate.created_at);
    refused(
        update(
            "pirate",
            PersonaPatch {
                name: Some("Ghost".to_owned()),
                traits: Some(TraitsPatch {
                    warmth: Some(-0.1),
                    ..TraitsPatch::default()
                }),
                ..PersonaPatch::default()
            },
        )
        .await,
        ErrorCode::InvalidRequest,
        Some("traits.warmth"),
    );
    refused(
        update("sage", PersonaPatch::default()).await,
        ErrorCode::Conflict,
        None,
    );
    refused(
        update("nobody", PersonaPatch::default()).await,
        ErrorCode::NotFound,
        None,
    );
    let stored = service
        .call(
            &personality::GET_PERSONA,
            &PersonaRequest {
                id: "pirate".to_owned(),
            },
        )
        .await
        .unwrap();
    assert_eq!(stored, renamed);

    // A preview renders the persona as the patch would leave it, built-in ones too,
    // refuses what an update would refuse, and stores nothing.
    let preview = |id: &str, patch: PersonaPatch| {
        let request = UpdatePersona {
            id: id.to_owned(),
            patch,
        };
        async move { svc.call(&personality::PREVIEW_PERSONA, &request).await }
    };
    let previewed = preview(
        "pirate",
        PersonaPatch {
            name: Some("Bosun".to_owned()),
            ..PersonaPatch::default()
        },
    )
    .await
    .unwrap();
    assert!(
        previewed
            .system_prompt
            .starts_with("You are Bosun, a pirate"),
        "{}",
        previewed.system_prompt
    );
    assert!(previewed.system_prompt.contains("Say arr."));
    let sage = preview("sage", PersonaPatch::default()).await.unwrap();
    assert!(!sage.system_prompt.is_empty());
    let typo = service
        .call(
            &personality::PREVIEW_PERSONA,
            &UpdatePersona {
                id: "pirate".to_owned(),
                patch: PersonaPatch {
                    system_template: Some("You are {{ nmae }}.".to_owned()),
                    ..PersonaPatch::default()
                },
            },
        )
        .await
        .unwrap_err();
    assert_eq!(typo.code, ErrorCode::InvalidRequest);
    assert_eq!(typo.param.as_deref(), Some("system_template"));
    let unchanged = service
        .call(
            &personality::GET_PERSONA,
            &PersonaRequest {
                id: "pirate".to_owned(),
            },
        )
        .await
        .unwrap();
    assert_eq!(unchanged, renamed);

    // Compose: the persona's prompt merged before the caller's own system message; the
    // caller's temperature wins, the persona's fills the rest.
    let composed = service
        .call(
            &personality::COMPOSE,
            &ComposeRequest {
                persona: "pirate".to_owned(),
                messages: vec![
                    ChatMessage::new(Role::System, "Answer in French."),
                    ChatMessage::new(Role::User, "Where is the treasure?"),
                ],
                sampling: SamplingParams {
                    top_k: Some(5),
                    ..SamplingParams::default()
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(composed.messages.len(), 2);
    let system = &composed.messages[0].content;
    assert!(
        system.starts_with("You are Captain, a pirate who talks like one."),
        "{system}"
    );
    assert!(system.contains("Say arr."), "{system}");
    assert!(system.ends_with("\n\nAnswer in French."), "{system}");
    assert_eq!(composed.sampling.temperature, Some(0.9));
    assert_eq!(composed.sampling.top_k, Some(5));

    // Analyze and adherence.
    let metrics = service
        .call(
            &personality::ANALYZE,
            &AnalyzeRequest {
                text: "The book was good.".to_owned(),
                classifier: None,
            },
        )
        .await
        .unwrap();
    assert!((metrics.sentiment.compound - 0.4404).abs() < 1e-3);
    let too_long = service
        .call(
            &personality::ANALYZE,
            &AnalyzeRequest {
                text: "a".repeat(personality::MAX_TEXT_BYTES + 1),
                classifier: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(too_long.param.as_deref(), Some("text"));
    let adherence = service
        .call(
            &personality::ADHERENCE,
            &AdherenceRequest {
                persona: "analyst".to_owned(),
                text: "Revenue rose 4% in the third quarter.".to_owned(),
            },
        )
        .await
        .unwrap();
    assert!((0.0..=1.0).contains(&adherence.score), "{adherence:?}");
    assert_eq!(adherence.traits.formality.target, 0.9);
    let observed = slough_testkit::scrape_metric(
        &service.admin,
        "slough_personality_adherence_ratio_count{persona=\"analyst\"}",
    )
    .await;
    assert_eq!(observed, Some(1.0));

    // Delete: built-ins stay; a deleted persona is gone for compose too.
    let deleting = move |id: &'static str| async move {
        let request = PersonaRequest { id: id.to_owned() };
        svc.call(&personality::DELETE_PERSONA, &request).await
    };
    refused(deleting("jester").await, ErrorCode::Conflict, None);
    assert_eq!(deleting("pirate").await.unwrap().name, "Captain");
    refused(deleting("pirate").await, ErrorCode::NotFound, None);
    let gone = service
        .call(
            &personality::COMPOSE,
            &ComposeRequest {
                persona: "pirate".to_owned(),
                messages: vec![ChatMessage::new(Role::User, "hi")],
                sampling: SamplingParams::default(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(gone.code, ErrorCode::NotFound);
    assert_eq!(gone.param.as_deref(), Some("persona"));
    assert_eq!(service.ids().await, builtins);
    service.stop().await;
}

#[tokio::test]
async fn personas_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    personas_lifecycle(CommonConfig {
        data_dir: dir.path().to_owned(),
        ..CommonConfig::default()
    })
    .await;
}

#[tokio::test]
async fn personas_on_postgres() {
    let database = slough_testkit::TestPostgres::create().await;
    let dir = tempfile::tempdir().unwrap();
    personas_lifecycle(CommonConfig {
        data_dir: dir.path().to_owned(),
        database_url: Some(SecretString::from(database.url().to_owned())),
        ..CommonConfig::default()
    })
    .await;
    database.drop_database().await;
}

/// A template that would loop a hundred million times, previewed twice at once (as an
/// inference-only key could): both are refused within the render budget, naming
/// `system_template`, and the service answers other requests meanwhile. On a
/// single-threaded runtime, as here, a render on the runtime would stall them all.
#[tokio::test]
async fn a_hostile_template_is_refused_while_other_requests_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let service = Personality::start(CommonConfig {
        data_dir: dir.path().to_owned(),
        ..CommonConfig::default()
    })
    .await;
    let hostile = UpdatePersona {
        id: "assistant".to_owned(),
        patch: PersonaPatch {
            system_template: Some(
                "{% for i in range(100000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}x"
                    .to_owned(),
            ),
            ..PersonaPatch::default()
        },
    };
    let started = std::time::Instant::now();
    let listed = async {
        let asked = std::time::Instant::now();
        let ids = service.ids().await;
        (ids, asked.elapsed())
    };
    let (first, second, (ids, list_took)) = tokio::join!(
        service.call(&personality::PREVIEW_PERSONA, &hostile),
        service.call(&personality::PREVIEW_PERSONA, &hostile),
        listed
    );
    for refused in [first, second] {
        let err = refused.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert_eq!(
            err.param.as_deref(),
            Some("system_template"),
            "{}",
            err.message
        );
    }
    assert!(ids.contains(&"assistant".to_owned()));
    assert!(
        list_took < std::time::Duration::from_secs(1),
        "the list waited {list_took:?} behind the renders"
    );
    eprintln!(
        "two hostile previews refused in {:?}; a list meanwhile took {list_took:?}",
        started.elapsed()
    );
    let created = service
        .call(
            &personality::CREATE_PERSONA,
            &CreatePersona {
                system_template: hostile.patch.system_template.clone(),
                ..create("loops")
            },
        )
        .await
        .unwrap_err();
    assert_eq!(created.param.as_deref(), Some("system_template"));
    service.stop().await;
}
