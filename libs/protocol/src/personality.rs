//! Messages of the personality service: personas (built-in ones and those stored by
//! operators), composing a persona into a chat, text-style metrics, and how well a text
//! matches its persona (adherence).
//!
//! The personas and style types are also the gateway's `/v1/personas` and
//! `/v1/personality/analyze` bodies (the `openapi` feature derives their OpenAPI schemas).

use serde::{Deserialize, Serialize};

use crate::{
    ServiceKind,
    endpoint::Endpoint,
    inference::{ChatMessage, SamplingParams},
};

/// Every persona, built-in ones first.
pub const LIST_PERSONAS: Endpoint<ListPersonas, PersonaList> =
    Endpoint::new(ServiceKind::Personality, "list_personas");
/// One persona by id.
pub const GET_PERSONA: Endpoint<PersonaRequest, Persona> =
    Endpoint::new(ServiceKind::Personality, "get_persona");
/// Stores a new persona, optionally a copy of another.
pub const CREATE_PERSONA: Endpoint<CreatePersona, Persona> =
    Endpoint::new(ServiceKind::Personality, "create_persona");
/// Changes the given fields of a stored persona.
pub const UPDATE_PERSONA: Endpoint<UpdatePersona, Persona> =
    Endpoint::new(ServiceKind::Personality, "update_persona");
/// Deletes a stored persona (built-in ones cannot be) and answers what it was.
pub const DELETE_PERSONA: Endpoint<PersonaRequest, Persona> =
    Endpoint::new(ServiceKind::Personality, "delete_persona");
/// The system prompt persona `id` would have with `patch` applied; nothing is stored.
pub const PREVIEW_PERSONA: Endpoint<UpdatePersona, PersonaPreview> =
    Endpoint::new(ServiceKind::Personality, "preview_persona");
/// A persona applied to a chat: the messages and sampling to send to inference.
pub const COMPOSE: Endpoint<ComposeRequest, Composed> =
    Endpoint::new(ServiceKind::Personality, "compose");
/// Text-style metrics of a text.
pub const ANALYZE: Endpoint<AnalyzeRequest, StyleMetrics> =
    Endpoint::new(ServiceKind::Personality, "analyze");
/// How well a text matches a persona's trait targets.
pub const ADHERENCE: Endpoint<AdherenceRequest, Adherence> =
    Endpoint::new(ServiceKind::Personality, "adherence");

/// The longest text `analyze` and `adherence` take, in bytes.
pub const MAX_TEXT_BYTES: usize = 200_000;

/// One of a persona's traits, each a target on a 0..1 scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Trait {
    /// 0 cool and matter-of-fact, 1 warm and encouraging.
    Warmth,
    /// 0 casual, 1 formal.
    Formality,
    /// 0 terse, 1 expansive.
    Verbosity,
    /// 0 earnest, 1 playful.
    Humour,
    /// 0 sober or critical, 1 upbeat.
    Optimism,
}

impl Trait {
    /// Every trait, in the order they are listed.
    pub const ALL: [Trait; 5] = [
        Trait::Warmth,
        Trait::Formality,
        Trait::Verbosity,
        Trait::Humour,
        Trait::Optimism,
    ];

    /// The trait's name in messages and metrics (`warmth`).
    pub fn name(self) -> &'static str {
        match self {
            Trait::Warmth => "warmth",
            Trait::Formality => "formality",
            Trait::Verbosity => "verbosity",
            Trait::Humour => "humour",
            Trait::Optimism => "optimism",
        }
    }
}

/// A persona's trait targets, each from 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Traits {
    pub warmth: f64,
    pub formality: f64,
    pub verbosity: f64,
    pub humour: f64,
    pub optimism: f64,
}

impl Traits {
    /// Every trait at `value`.
    pub const fn all(value: f64) -> Traits {
        Traits {
            warmth: value,
            formality: value,
            verbosity: value,
            humour: value,
            optimism: value,
        }
    }

    /// One trait's target.
    pub fn get(&self, which: Trait) -> f64 {
        match which {
            Trait::Warmth => self.warmth,
            Trait::Formality => self.formality,
            Trait::Verbosity => self.verbosity,
            Trait::Humour => self.humour,
            Trait::Optimism => self.optimism,
        }
    }

    /// These targets with those `patch` sets replaced.
    pub fn patched(self, patch: &TraitsPatch) -> Traits {
        Traits {
            warmth: patch.warmth.unwrap_or(self.warmth),
            formality: patch.formality.unwrap_or(self.formality),
            verbosity: patch.verbosity.unwrap_or(self.verbosity),
            humour: patch.humour.unwrap_or(self.humour),
            optimism: patch.optimism.unwrap_or(self.optimism),
        }
    }
}

/// Trait targets to set; unset ones keep their value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct TraitsPatch {
    pub warmth: Option<f64>,
    pub formality: Option<f64>,
    pub verbosity: Option<f64>,
    pub humour: Option<f64>,
    pub optimism: Option<f64>,
}

/// Who the model is: its traits, its style rules, and the system prompt they become.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Persona {
    /// Lowercase letters, digits, `-` and `_`, starting with a letter or digit.
    pub id: String,
    pub name: String,
    pub description: String,
    /// The kind of character (`sage`, `jester`, ...; free text for stored personas).
    pub archetype: String,
    pub traits: Traits,
    /// Plain-language rules the system prompt lists (`Use short sentences.`).
    pub style_rules: Vec<String>,
    /// A minijinja template rendered into the system prompt; it sees `name`,
    /// `description`, `archetype`, `traits` (each 0..1) and `style_rules`.
    pub system_template: String,
    /// Sampling used when the request does not set the parameter itself.
    pub sampling: SamplingParams,
    /// Built-in personas are always there and cannot be changed or deleted; copy one
    /// to change it.
    pub builtin: bool,
    /// RFC 3339; absent for built-in personas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// RFC 3339; absent for built-in personas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// Lists every persona.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListPersonas {}

/// Every persona, built-in ones first, then stored ones by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PersonaList {
    pub personas: Vec<Persona>,
}

/// Names one persona.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonaRequest {
    pub id: String,
}

/// A new persona: `id`, and every field it does not give taken from `from` (another
/// persona, built-in or stored) or, without `from`, from the `assistant` persona.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreatePersona {
    /// Lowercase letters, digits, `-` and `_` (at most 64), starting with a letter or
    /// digit; not a built-in persona's id.
    pub id: String,
    /// The persona to copy.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub archetype: Option<String>,
    #[serde(default)]
    pub traits: Option<TraitsPatch>,
    #[serde(default)]
    pub style_rules: Option<Vec<String>>,
    #[serde(default)]
    pub system_template: Option<String>,
    #[serde(default)]
    pub sampling: Option<SamplingParams>,
}

impl CreatePersona {
    /// The fields it sets, as a patch on the persona it starts from.
    pub fn patch(&self) -> PersonaPatch {
        PersonaPatch {
            name: self.name.clone(),
            description: self.description.clone(),
            archetype: self.archetype.clone(),
            traits: self.traits.clone(),
            style_rules: self.style_rules.clone(),
            system_template: self.system_template.clone(),
            sampling: self.sampling.clone(),
        }
    }
}

/// Fields to change; unset ones keep their value. `sampling` replaces the whole set of
/// defaults; `traits` only the targets it names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct PersonaPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub archetype: Option<String>,
    pub traits: Option<TraitsPatch>,
    pub style_rules: Option<Vec<String>>,
    pub system_template: Option<String>,
    pub sampling: Option<SamplingParams>,
}

/// Changes a stored persona.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePersona {
    pub id: String,
    pub patch: PersonaPatch,
}

/// A persona's system prompt as its template renders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PersonaPreview {
    /// The persona's id.
    pub persona: String,
    /// The system prompt a chat with it would start with.
    pub system_prompt: String,
}

/// A chat to which a persona is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComposeRequest {
    /// The persona's id.
    pub persona: String,
    /// The conversation as the caller sent it.
    pub messages: Vec<ChatMessage>,
    /// The parameters the caller set; they always win over the persona's defaults.
    #[serde(default)]
    pub sampling: SamplingParams,
}

/// What to send to inference: the persona's system prompt merged into the messages (see
/// the personality service's `compose` for the rule) and the sampling with the
/// persona's defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Composed {
    pub persona: String,
    pub messages: Vec<ChatMessage>,
    pub sampling: SamplingParams,
}

/// A text to measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AnalyzeRequest {
    /// At most 200 000 bytes of text.
    pub text: String,
    /// A classifier model (made by a fine-tuning job with `method.type` `classifier`)
    /// to score the text with as well.
    #[serde(default)]
    pub classifier: Option<String>,
}

/// A text's style, measured by rules (no model involved).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StyleMetrics {
    /// Words (whitespace-separated tokens with a letter or digit).
    pub words: u32,
    /// Sentences (runs of `.`, `!` or `?`; a text without any is one sentence).
    pub sentences: u32,
    /// VADER sentiment.
    pub sentiment: Sentiment,
    /// Flesch reading ease: 206.835 − 1.015 × words/sentence − 84.6 × syllables/word;
    /// higher is easier (90–100 a 5th grader, 0–30 a graduate).
    pub flesch_reading_ease: f64,
    /// Flesch–Kincaid grade: 0.39 × words/sentence + 11.8 × syllables/word − 15.59.
    pub flesch_kincaid_grade: f64,
    /// 0 casual to 1 formal (see the personality service's `style` module).
    pub formality: f64,
    /// Emoji per word.
    pub emoji_density: f64,
    /// Words per sentence.
    pub avg_sentence_length: f64,
    /// Distinct words over words (type–token ratio, case-insensitive), 0 to 1.
    pub lexical_diversity: f64,
    /// The share of sentences that end with `?`.
    pub question_ratio: f64,
    /// The share of sentences that end with `!`.
    pub exclamation_ratio: f64,
    /// With `classifier`: the learned model's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<Classification>,
}

/// What a learned classifier says of a text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Classification {
    pub model: String,
    /// The most probable label.
    pub label: String,
    /// Every label's probability (they sum to 1).
    pub probabilities: std::collections::BTreeMap<String, f64>,
}

/// VADER's sentiment scores: the shares of positive, neutral and negative weight, and
/// the normalized sum, `compound`, from −1 (most negative) to 1 (most positive).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sentiment {
    pub compound: f64,
    pub pos: f64,
    pub neu: f64,
    pub neg: f64,
}

/// A response to score against its persona.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdherenceRequest {
    pub persona: String,
    pub text: String,
}

/// How well a text matches a persona: per trait the target, what the text measured on
/// the same 0..1 scale, and `1 − |target − measured|`; `score` is their mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Adherence {
    pub persona: String,
    /// 0 (opposite of every target) to 1 (on every target).
    pub score: f64,
    pub traits: TraitScores,
    /// The metrics the traits were measured from.
    pub metrics: StyleMetrics,
}

/// Each trait's adherence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraitScores {
    pub warmth: TraitScore,
    pub formality: TraitScore,
    pub verbosity: TraitScore,
    pub humour: TraitScore,
    pub optimism: TraitScore,
}

impl TraitScores {
    /// One trait's adherence.
    pub fn get(&self, which: Trait) -> TraitScore {
        match which {
            Trait::Warmth => self.warmth,
            Trait::Formality => self.formality,
            Trait::Verbosity => self.verbosity,
            Trait::Humour => self.humour,
            Trait::Optimism => self.optimism,
        }
    }
}

/// One trait: the persona's target, the text's measure, and how close they are.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraitScore {
    pub target: f64,
    pub measured: f64,
    /// `1 − |target − measured|`.
    pub score: f64,
}
