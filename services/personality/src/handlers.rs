//! The NATS endpoints: decode, check, answer. Personas live in the store (a connection
//! pool) and in code, the metrics are pure functions, so there is no actor to talk to.

use slough_bus::{BusError, ServiceHost};
use slough_protocol::{
    ErrorBody,
    personality::{
        self, Adherence, AdherenceRequest, AnalyzeRequest, ComposeRequest, Composed, CreatePersona,
        ListPersonas, MAX_TEXT_BYTES, Persona, PersonaList, PersonaPreview, PersonaRequest,
        StyleMetrics, UpdatePersona,
    },
};

use crate::{adherence, compose, metrics::Metrics, personas, personas::Personas, style};

/// What the handlers share.
#[derive(Clone)]
pub struct Personality {
    pub personas: Personas,
    pub metrics: Metrics,
    pub classifiers: crate::classifiers::Classifiers,
}

/// Adds every personality endpoint to `host`.
pub async fn add(host: &mut ServiceHost, state: Personality) -> Result<(), BusError> {
    host.serve(&personality::LIST_PERSONAS, state.clone(), list)
        .await?;
    host.serve(&personality::GET_PERSONA, state.clone(), get)
        .await?;
    host.serve(&personality::CREATE_PERSONA, state.clone(), create)
        .await?;
    host.serve(&personality::UPDATE_PERSONA, state.clone(), update)
        .await?;
    host.serve(&personality::DELETE_PERSONA, state.clone(), delete)
        .await?;
    host.serve(&personality::PREVIEW_PERSONA, state.clone(), preview)
        .await?;
    host.serve(&personality::COMPOSE, state.clone(), compose)
        .await?;
    host.serve(&personality::ANALYZE, state.clone(), analyze)
        .await?;
    host.serve(&personality::ADHERENCE, state, score).await?;
    Ok(())
}

async fn list(state: Personality, _: ListPersonas) -> Result<PersonaList, ErrorBody> {
    Ok(PersonaList {
        personas: state.personas.list().await?,
    })
}

async fn get(state: Personality, request: PersonaRequest) -> Result<Persona, ErrorBody> {
    Ok(state.personas.get(&request.id).await?)
}

async fn create(state: Personality, request: CreatePersona) -> Result<Persona, ErrorBody> {
    let persona = state.personas.create(request).await?;
    tracing::info!(persona = %persona.id, "persona created");
    Ok(persona)
}

async fn update(state: Personality, request: UpdatePersona) -> Result<Persona, ErrorBody> {
    let persona = state.personas.update(&request.id, request.patch).await?;
    tracing::info!(persona = %persona.id, "persona updated");
    Ok(persona)
}

async fn delete(state: Personality, request: PersonaRequest) -> Result<Persona, ErrorBody> {
    let persona = state.personas.delete(&request.id).await?;
    tracing::info!(persona = %persona.id, "persona deleted");
    Ok(persona)
}

async fn preview(state: Personality, request: UpdatePersona) -> Result<PersonaPreview, ErrorBody> {
    Ok(state.personas.preview(&request.id, request.patch).await?)
}

async fn compose(state: Personality, request: ComposeRequest) -> Result<Composed, ErrorBody> {
    let persona = persona_named(&state, &request.persona).await?;
    // Stored templates were checked when saved; a failure here is a bug. Rendering is
    // CPU work: off the async runtime.
    let rendered = {
        let persona = persona.clone();
        tokio::task::spawn_blocking(move || personas::render(&persona)).await
    };
    let system_prompt = rendered
        .map_err(|err| err.to_string())
        .and_then(|rendered| rendered.map_err(|err| format!("{err:#}")))
        .map_err(|err| {
            ErrorBody::new(
                slough_protocol::ErrorCode::Internal,
                format!("persona `{}` does not render: {err}", persona.id),
            )
        })?;
    Ok(compose::compose(
        &persona.id,
        &system_prompt,
        &persona.sampling,
        request.messages,
        &request.sampling,
    ))
}

async fn analyze(state: Personality, request: AnalyzeRequest) -> Result<StyleMetrics, ErrorBody> {
    check_text(&request.text)?;
    let classification = match &request.classifier {
        Some(id) => Some(state.classifiers.classify(id, &request.text).await?),
        None => None,
    };
    let mut metrics = measure(request.text).await;
    metrics.classification = classification;
    Ok(metrics)
}

async fn score(state: Personality, request: AdherenceRequest) -> Result<Adherence, ErrorBody> {
    check_text(&request.text)?;
    let persona = persona_named(&state, &request.persona).await?;
    let metrics = measure(request.text).await;
    let adherence = adherence::score(&persona.id, &persona.traits, metrics);
    state.metrics.scored(&adherence);
    Ok(adherence)
}

/// The persona a compose or adherence request names; `persona` is the field at fault.
async fn persona_named(state: &Personality, id: &str) -> Result<Persona, ErrorBody> {
    state.personas.get(id).await.map_err(|err| ErrorBody {
        param: Some("persona".to_owned()),
        ..err.into()
    })
}

fn check_text(text: &str) -> Result<(), ErrorBody> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ErrorBody::invalid(
            "text",
            format!(
                "text must be at most {MAX_TEXT_BYTES} bytes, got {}",
                text.len()
            ),
        ));
    }
    Ok(())
}

/// Measures off the async workers: a long text takes milliseconds.
async fn measure(text: String) -> StyleMetrics {
    match tokio::task::spawn_blocking(move || style::analyze(&text)).await {
        Ok(metrics) => metrics,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}
