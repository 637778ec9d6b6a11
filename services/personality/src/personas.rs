//! Personas: the built-in ones (in code, always there, read-only), those operators
//! store (the `personas` table), the rules every persona's fields follow, and rendering
//! a persona's system-prompt template.

use chrono::Utc;
use sea_orm::{ActiveModelTrait as _, EntityTrait as _, QueryOrder as _, Set};
use slough_protocol::{
    ErrorBody, ErrorCode,
    inference::SamplingParams,
    names::check_name,
    personality::{CreatePersona, Persona, PersonaPatch, PersonaPreview, Trait, Traits},
};
use slough_store::{Store, entities::persona};

/// The template the built-in personas share; copies may change it. It sees `name`,
/// `description`, `archetype`, `traits` and `style_rules`.
pub const DEFAULT_TEMPLATE: &str = "\
You are {{ name }}, {{ description }}
{%- if traits.warmth >= 0.7 %} You are warm, kind and encouraging.
{%- elif traits.warmth <= 0.3 %} You are cool and matter-of-fact.{% endif %}
{%- if traits.formality >= 0.7 %} You write formally, in complete sentences, without slang or emoji.
{%- elif traits.formality <= 0.3 %} You write casually, like a friend.{% endif %}
{%- if traits.verbosity >= 0.7 %} You explain at length, with details and examples.
{%- elif traits.verbosity <= 0.3 %} You answer in one or two sentences.{% endif %}
{%- if traits.humour >= 0.7 %} You joke, make puns and use exclamation marks!
{%- elif traits.humour <= 0.3 %} You stay serious.{% endif %}
{%- if traits.optimism >= 0.7 %} You are upbeat and look on the bright side.
{%- elif traits.optimism <= 0.3 %} You are sober and point out risks.{% endif %}
{%- for rule in style_rules %} {{ rule }}{% endfor %}";

/// Why a persona could not be read, stored or rendered.
#[derive(Debug, thiserror::Error)]
pub enum PersonaError {
    /// A field breaks its rule; `param` names it.
    #[error("{message}")]
    Invalid { param: String, message: String },
    #[error("persona `{0}` does not exist")]
    NotFound(String),
    /// The id is taken, or names a built-in persona, which never changes.
    #[error("{message}")]
    Conflict {
        param: Option<&'static str>,
        message: String,
    },
    #[error("the persona store is not available")]
    Store(#[source] sea_orm::DbErr),
    /// A stored persona does not read back, or does not encode.
    #[error("{0}")]
    Corrupt(String),
    /// The rendering thread ended without an answer (a bug, not a template's fault).
    #[error("rendering stopped: {0}")]
    RenderStopped(String),
}

impl PersonaError {
    fn invalid(param: impl Into<String>, message: impl Into<String>) -> PersonaError {
        PersonaError::Invalid {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// The wire answer for a persona error: the one place its codes are chosen.
impl From<PersonaError> for ErrorBody {
    fn from(error: PersonaError) -> ErrorBody {
        let message = error.to_string();
        match error {
            PersonaError::Invalid { param, message } => ErrorBody::invalid(param, message),
            PersonaError::NotFound(_) => ErrorBody::new(ErrorCode::NotFound, message),
            PersonaError::Conflict { param, .. } => ErrorBody {
                param: param.map(str::to_owned),
                ..ErrorBody::new(ErrorCode::Conflict, message)
            },
            PersonaError::Store(err) => {
                tracing::warn!("persona store: {err}");
                ErrorBody::new(ErrorCode::Unavailable, message)
            }
            PersonaError::Corrupt(_) | PersonaError::RenderStopped(_) => {
                ErrorBody::new(ErrorCode::Internal, message)
            }
        }
    }
}

/// A protocol check's refusal, as a persona error naming the same field.
fn refused(body: ErrorBody) -> PersonaError {
    PersonaError::Invalid {
        param: body.param.unwrap_or_default(),
        message: body.message,
    }
}

/// The persona a new one starts from when it names none.
pub const DEFAULT_BASE: &str = "assistant";

const MAX_NAME: usize = 100;
const MAX_DESCRIPTION: usize = 1_000;
const MAX_ARCHETYPE: usize = 64;
const MAX_RULES: usize = 20;
const MAX_RULE: usize = 300;
const MAX_TEMPLATE: usize = 8_000;

struct Builtin {
    id: &'static str,
    name: &'static str,
    description: &'static str,
    traits: Traits,
    style_rules: &'static [&'static str],
    temperature: Option<f32>,
}

const BUILTINS: [Builtin; 6] = [
    Builtin {
        id: "assistant",
        name: "Assistant",
        description: "a helpful assistant that answers clearly and accurately.",
        traits: Traits {
            warmth: 0.6,
            formality: 0.6,
            verbosity: 0.5,
            humour: 0.2,
            optimism: 0.6,
        },
        style_rules: &[],
        temperature: None,
    },
    Builtin {
        id: "sage",
        name: "Sage",
        description: "a wise sage who answers with calm insight.",
        traits: Traits {
            warmth: 0.6,
            formality: 0.8,
            verbosity: 0.6,
            humour: 0.1,
            optimism: 0.6,
        },
        style_rules: &[
            "Speak calmly and thoughtfully.",
            "End with a short piece of wisdom.",
        ],
        temperature: Some(0.7),
    },
    Builtin {
        id: "mentor",
        name: "Mentor",
        description: "a patient mentor who teaches step by step.",
        traits: Traits {
            warmth: 0.8,
            formality: 0.5,
            verbosity: 0.7,
            humour: 0.3,
            optimism: 0.8,
        },
        style_rules: &["Explain step by step.", "Encourage the learner."],
        temperature: Some(0.6),
    },
    Builtin {
        id: "jester",
        name: "Jester",
        description: "a playful jester who turns every answer into a joke.",
        traits: Traits {
            warmth: 0.8,
            formality: 0.1,
            verbosity: 0.4,
            humour: 0.95,
            optimism: 0.9,
        },
        style_rules: &[
            "Make a joke or a pun in every answer.",
            "Use exclamation marks and emoji, like this: \"Ha! Great question! 😄 The sky \
             is blue because air scatters blue light, like a disco ball for sunbeams! 🌞\"",
        ],
        temperature: Some(0.9),
    },
    Builtin {
        id: "analyst",
        name: "Analyst",
        description: "a precise analyst who reports facts and figures.",
        traits: Traits {
            warmth: 0.2,
            formality: 0.9,
            verbosity: 0.6,
            humour: 0.0,
            optimism: 0.4,
        },
        style_rules: &[
            "State facts precisely and neutrally, like this: \"The sky appears blue \
             because of Rayleigh scattering: shorter wavelengths of sunlight are scattered \
             more strongly by the molecules of the atmosphere.\"",
            "Never use exclamation marks, emoji or jokes.",
        ],
        temperature: Some(0.2),
    },
    Builtin {
        id: "companion",
        name: "Companion",
        description: "a friendly companion who chats like a close friend.",
        traits: Traits {
            warmth: 0.95,
            formality: 0.2,
            verbosity: 0.4,
            humour: 0.6,
            optimism: 0.8,
        },
        style_rules: &["Be supportive and personal.", "Ask how the user feels."],
        temperature: Some(0.8),
    },
];

impl Builtin {
    fn persona(&self) -> Persona {
        Persona {
            id: self.id.to_owned(),
            name: self.name.to_owned(),
            description: self.description.to_owned(),
            archetype: self.id.to_owned(),
            traits: self.traits,
            style_rules: self
                .style_rules
                .iter()
                .map(|&rule| rule.to_owned())
                .collect(),
            system_template: DEFAULT_TEMPLATE.to_owned(),
            sampling: SamplingParams {
                temperature: self.temperature,
                ..SamplingParams::default()
            },
            builtin: true,
            created_at: None,
            updated_at: None,
        }
    }
}

/// The built-in personas.
pub fn builtins() -> Vec<Persona> {
    BUILTINS.iter().map(Builtin::persona).collect()
}

fn builtin(id: &str) -> Option<Persona> {
    BUILTINS
        .iter()
        .find(|builtin| builtin.id == id)
        .map(Builtin::persona)
}

/// The most template instructions one render may run: the built-in template takes a
/// few hundred, and a template that loops over large ranges (nested, say) is stopped
/// here rather than holding a thread for seconds.
pub const RENDER_FUEL: u64 = 100_000;

/// Renders `persona`'s system prompt, within [`RENDER_FUEL`]. It is CPU work: call it
/// from a blocking thread ([`checked`]), not from the async runtime.
pub fn render(persona: &Persona) -> Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(RENDER_FUEL));
    let context = minijinja::context! {
        name => persona.name.as_str(),
        description => persona.description.as_str(),
        archetype => persona.archetype.as_str(),
        traits => minijinja::Value::from_pairs(
            Trait::ALL.map(|which| (which.name(), persona.traits.get(which)))
        ),
        style_rules => persona.style_rules.clone(),
    };
    Ok(env
        .render_str(&persona.system_template, context)?
        .trim()
        .to_owned())
}

/// Checks every field of `persona`, naming the first that breaks its rule; answers the
/// system prompt it renders to.
pub fn validate(persona: &Persona) -> Result<String, PersonaError> {
    check_name("id", &persona.id).map_err(refused)?;
    check_text("name", &persona.name, MAX_NAME, false)?;
    check_text("description", &persona.description, MAX_DESCRIPTION, true)?;
    check_text("archetype", &persona.archetype, MAX_ARCHETYPE, false)?;
    for which in Trait::ALL {
        let value = persona.traits.get(which);
        if !(0.0..=1.0).contains(&value) {
            return Err(PersonaError::invalid(
                format!("traits.{}", which.name()),
                format!("traits.{} must be from 0 to 1, got {value}", which.name()),
            ));
        }
    }
    if persona.style_rules.len() > MAX_RULES {
        return Err(PersonaError::invalid(
            "style_rules",
            format!(
                "style_rules holds at most {MAX_RULES} rules, got {}",
                persona.style_rules.len()
            ),
        ));
    }
    for (index, rule) in persona.style_rules.iter().enumerate() {
        check_text(&format!("style_rules[{index}]"), rule, MAX_RULE, false)?;
    }
    if persona.system_template.len() > MAX_TEMPLATE {
        return Err(PersonaError::invalid(
            "system_template",
            format!("system_template must be at most {MAX_TEMPLATE} bytes"),
        ));
    }
    let prompt = match render(persona) {
        Ok(prompt) if prompt.is_empty() => Err(PersonaError::invalid(
            "system_template",
            "system_template renders to an empty system prompt",
        )),
        Ok(prompt) => Ok(prompt),
        Err(err) if err.kind() == minijinja::ErrorKind::OutOfFuel => Err(PersonaError::invalid(
            "system_template",
            format!(
                "system_template takes more than {RENDER_FUEL} steps to render; loops over \
                 large ranges are not allowed"
            ),
        )),
        Err(err) => Err(PersonaError::invalid(
            "system_template",
            format!("system_template does not render: {err:#}"),
        )),
    }?;
    persona
        .sampling
        .validate()
        .map_err(|invalid| PersonaError::invalid(invalid.field.wire_name(), invalid.message))?;
    Ok(prompt)
}

/// [`validate`] on a blocking thread (rendering is CPU work, however bounded): the
/// persona back with its system prompt.
pub async fn checked(persona: Persona) -> Result<(Persona, String), PersonaError> {
    tokio::task::spawn_blocking(move || validate(&persona).map(|prompt| (persona, prompt)))
        .await
        .map_err(|err| PersonaError::RenderStopped(err.to_string()))?
}

fn check_text(
    field: &str,
    value: &str,
    max: usize,
    may_be_empty: bool,
) -> Result<(), PersonaError> {
    if !may_be_empty && value.trim().is_empty() {
        return Err(PersonaError::invalid(
            field,
            format!("{field} must not be empty"),
        ));
    }
    let length = value.chars().count();
    if length > max {
        return Err(PersonaError::invalid(
            field,
            format!("{field} must be at most {max} characters, got {length}"),
        ));
    }
    Ok(())
}

/// `persona` with `patch` applied (and nothing else changed).
fn patched(mut persona: Persona, patch: PersonaPatch) -> Persona {
    if let Some(name) = patch.name {
        persona.name = name;
    }
    if let Some(description) = patch.description {
        persona.description = description;
    }
    if let Some(archetype) = patch.archetype {
        persona.archetype = archetype;
    }
    if let Some(traits) = patch.traits {
        persona.traits = persona.traits.patched(&traits);
    }
    if let Some(rules) = patch.style_rules {
        persona.style_rules = rules;
    }
    if let Some(template) = patch.system_template {
        persona.system_template = template;
    }
    if let Some(sampling) = patch.sampling {
        persona.sampling = sampling;
    }
    persona
}

/// The personas, built-in and stored.
#[derive(Clone)]
pub struct Personas {
    store: Store,
}

impl Personas {
    pub fn new(store: Store) -> Personas {
        Personas { store }
    }

    /// Built-in personas, then stored ones by id.
    pub async fn list(&self) -> Result<Vec<Persona>, PersonaError> {
        let stored = persona::Entity::find()
            .order_by_asc(persona::Column::Id)
            .all(self.store.connection())
            .await
            .map_err(PersonaError::Store)?;
        let mut personas = builtins();
        for row in stored {
            personas.push(from_row(row)?);
        }
        Ok(personas)
    }

    /// One persona, or `not_found` naming it.
    pub async fn get(&self, id: &str) -> Result<Persona, PersonaError> {
        if let Some(persona) = builtin(id) {
            return Ok(persona);
        }
        let row = persona::Entity::find_by_id(id.to_owned())
            .one(self.store.connection())
            .await
            .map_err(PersonaError::Store)?;
        match row {
            Some(row) => from_row(row),
            None => Err(not_found(id)),
        }
    }

    /// Stores a new persona built from `request` (see [`CreatePersona`]).
    pub async fn create(&self, request: CreatePersona) -> Result<Persona, PersonaError> {
        check_name("id", &request.id).map_err(refused)?;
        if builtin(&request.id).is_some() {
            return Err(PersonaError::Conflict {
                param: Some("id"),
                message: format!("`{}` is a built-in persona's id", request.id),
            });
        }
        let base_id = request.from.as_deref().unwrap_or(DEFAULT_BASE);
        let base = self.get(base_id).await.map_err(|err| match err {
            PersonaError::NotFound(_) => PersonaError::invalid(
                "from",
                format!("from names persona `{base_id}`, which does not exist"),
            ),
            other => other,
        })?;
        let now = stamp(Utc::now());
        let persona = Persona {
            id: request.id.clone(),
            builtin: false,
            created_at: Some(now.clone()),
            updated_at: Some(now),
            ..patched(base, request.patch())
        };
        let (persona, _) = checked(persona).await?;
        let row = to_row(&persona)?;
        match persona::Entity::insert(row)
            .exec(self.store.connection())
            .await
        {
            Ok(_) => Ok(persona),
            Err(err) if self.exists(&persona.id).await => {
                tracing::debug!("create persona {}: {err}", persona.id);
                Err(PersonaError::Conflict {
                    param: Some("id"),
                    message: format!("persona `{}` already exists", persona.id),
                })
            }
            Err(err) => Err(PersonaError::Store(err)),
        }
    }

    /// Applies `patch` to stored persona `id`.
    pub async fn update(&self, id: &str, patch: PersonaPatch) -> Result<Persona, PersonaError> {
        refuse_builtin(id, "changed")?;
        let current = self.get(id).await?;
        let persona = Persona {
            updated_at: Some(stamp(Utc::now())),
            ..patched(current, patch)
        };
        let (persona, _) = checked(persona).await?;
        let mut row: persona::ActiveModel = to_row(&persona)?;
        row.created_at = sea_orm::ActiveValue::NotSet;
        row.update(self.store.connection())
            .await
            .map_err(|err| match err {
                sea_orm::DbErr::RecordNotUpdated => not_found(id),
                other => PersonaError::Store(other),
            })?;
        Ok(persona)
    }

    /// The system prompt persona `id` (built-in or stored) would have with `patch`
    /// applied, checked as `update` checks it; nothing is stored.
    pub async fn preview(
        &self,
        id: &str,
        patch: PersonaPatch,
    ) -> Result<PersonaPreview, PersonaError> {
        let (persona, system_prompt) = checked(patched(self.get(id).await?, patch)).await?;
        Ok(PersonaPreview {
            persona: persona.id,
            system_prompt,
        })
    }

    /// Deletes stored persona `id` and answers what it was.
    pub async fn delete(&self, id: &str) -> Result<Persona, PersonaError> {
        refuse_builtin(id, "deleted")?;
        let persona = self.get(id).await?;
        let result = persona::Entity::delete_by_id(id.to_owned())
            .exec(self.store.connection())
            .await
            .map_err(PersonaError::Store)?;
        if result.rows_affected == 0 {
            return Err(not_found(id));
        }
        Ok(persona)
    }

    async fn exists(&self, id: &str) -> bool {
        persona::Entity::find_by_id(id.to_owned())
            .one(self.store.connection())
            .await
            .is_ok_and(|row| row.is_some())
    }
}

fn refuse_builtin(id: &str, what: &str) -> Result<(), PersonaError> {
    if builtin(id).is_some() {
        return Err(PersonaError::Conflict {
            param: None,
            message: format!(
                "`{id}` is a built-in persona and cannot be {what}; create a copy with \
                 `from: \"{id}\"` and change that"
            ),
        });
    }
    Ok(())
}

/// A time as personas show it: RFC 3339 to the second, which every store keeps exactly.
fn stamp(time: chrono::DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn not_found(id: &str) -> PersonaError {
    PersonaError::NotFound(id.to_owned())
}

fn to_row(persona: &Persona) -> Result<persona::ActiveModel, PersonaError> {
    let json = |value: serde_json::Result<String>| {
        value.map_err(|err| PersonaError::Corrupt(err.to_string()))
    };
    let time = |stamp: &Option<String>| {
        stamp
            .as_deref()
            .and_then(|stamp| chrono::DateTime::parse_from_rfc3339(stamp).ok())
            .map_or_else(Utc::now, |stamp| stamp.with_timezone(&Utc))
    };
    Ok(persona::ActiveModel {
        id: Set(persona.id.clone()),
        name: Set(persona.name.clone()),
        description: Set(persona.description.clone()),
        archetype: Set(persona.archetype.clone()),
        traits: Set(json(serde_json::to_string(&persona.traits))?),
        style_rules: Set(json(serde_json::to_string(&persona.style_rules))?),
        system_template: Set(persona.system_template.clone()),
        sampling: Set(json(serde_json::to_string(&persona.sampling))?),
        created_at: Set(time(&persona.created_at)),
        updated_at: Set(time(&persona.updated_at)),
    })
}

fn from_row(row: persona::Model) -> Result<Persona, PersonaError> {
    let corrupt = |field: &str, err: serde_json::Error| {
        PersonaError::Corrupt(format!(
            "stored persona `{}` has an unreadable {field}: {err}",
            row.id
        ))
    };
    Ok(Persona {
        traits: serde_json::from_str(&row.traits).map_err(|err| corrupt("traits", err))?,
        style_rules: serde_json::from_str(&row.style_rules)
            .map_err(|err| corrupt("style_rules", err))?,
        sampling: serde_json::from_str(&row.sampling).map_err(|err| corrupt("sampling", err))?,
        id: row.id,
        name: row.name,
        description: row.description,
        archetype: row.archetype,
        system_template: row.system_template,
        builtin: false,
        created_at: Some(stamp(row.created_at)),
        updated_at: Some(stamp(row.updated_at)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_render_their_traits() {
        let personas = builtins();
        let ids: Vec<&str> = personas.iter().map(|persona| persona.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "assistant",
                "sage",
                "mentor",
                "jester",
                "analyst",
                "companion"
            ]
        );
        for persona in &personas {
            validate(persona).unwrap();
        }
        let jester = render(&personas[3]).unwrap();
        assert!(
            jester.starts_with("You are Jester, a playful jester"),
            "{jester}"
        );
        assert!(jester.contains("You joke"), "{jester}");
        assert!(
            jester.contains("Use exclamation marks and emoji, like this"),
            "{jester}"
        );
        let analyst = render(&personas[4]).unwrap();
        assert!(analyst.contains("You write formally"), "{analyst}");
        assert!(analyst.contains("You stay serious."), "{analyst}");
    }

    #[test]
    fn a_template_that_loops_too_long_is_refused_within_its_budget() {
        let mut persona = builtins().remove(0);
        persona.id = "copy".to_owned();
        persona.system_template =
            "{% for i in range(100000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}x"
                .to_owned();
        let started = std::time::Instant::now();
        let err = ErrorBody::from(validate(&persona).unwrap_err());
        let took = started.elapsed();
        assert_eq!(err.param.as_deref(), Some("system_template"));
        assert!(err.message.contains("steps to render"), "{}", err.message);
        assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
        // The built-in template is far inside the budget.
        assert!(validate(&builtins().remove(0)).is_ok());
    }

    #[test]
    fn each_rule_names_its_field() {
        type Spoil = fn(&mut Persona);
        let cases: [(Spoil, &str); 9] = [
            (|p| p.id = "Has Space".to_owned(), "id"),
            (|p| p.id = "-lead".to_owned(), "id"),
            (|p| p.name = "  ".to_owned(), "name"),
            (|p| p.traits.humour = 1.5, "traits.humour"),
            (|p| p.traits.warmth = f64::NAN, "traits.warmth"),
            (|p| p.style_rules = vec![String::new()], "style_rules[0]"),
            (
                |p| p.system_template = "{{ nope }}".to_owned(),
                "system_template",
            ),
            (
                |p| p.system_template = "{% if %}".to_owned(),
                "system_template",
            ),
            (
                |p| p.sampling.temperature = Some(3.0),
                "sampling.temperature",
            ),
        ];
        for (spoil, field) in cases {
            let mut persona = builtins().remove(0);
            persona.id = "copy".to_owned();
            spoil(&mut persona);
            let err = ErrorBody::from(validate(&persona).unwrap_err());
            assert_eq!(err.code, ErrorCode::InvalidRequest);
            assert_eq!(err.param.as_deref(), Some(field), "{err}");
        }
    }
}
