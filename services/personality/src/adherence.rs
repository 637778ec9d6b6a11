//! Persona adherence: what a text's style metrics say about each trait, on the same 0..1
//! scale as the persona's targets, and how close that is.
//!
//! The mapping, from [`StyleMetrics`] (`compound`, `pos`, `neg` are VADER's):
//!
//! | trait     | measured as |
//! |-----------|-------------|
//! | warmth    | `(compound + 1) / 2` |
//! | formality | `formality` |
//! | verbosity | `0.7 × words / (words + 80) + 0.3 × min(1, words per sentence / 30)`: about 0.35 for two short sentences, 0.6 for a 100-word paragraph, 0.8 for 300 words |
//! | humour    | `0.45 × exclamation ratio + 0.35 × min(1, 10 × emoji per word) + 0.2 × (1 − formality)` |
//! | optimism  | `pos / (pos + neg)`, 0.5 when the text has neither |
//!
//! Each trait scores `1 − |target − measured|`; the adherence is their mean. Rules read
//! surface features only: warmth and optimism both come from sentiment, and humour from
//! its markers (exclamations, emoji, casual register), not from whether a joke lands.

use slough_protocol::personality::{Adherence, StyleMetrics, TraitScore, TraitScores, Traits};

/// What `metrics` measure on each trait's scale.
pub fn measure(metrics: &StyleMetrics) -> Traits {
    let sentiment = metrics.sentiment;
    let words = f64::from(metrics.words);
    let polar = sentiment.pos + sentiment.neg;
    Traits {
        warmth: ((sentiment.compound + 1.0) / 2.0).clamp(0.0, 1.0),
        formality: metrics.formality,
        verbosity: 0.7 * words / (words + 80.0)
            + 0.3 * (metrics.avg_sentence_length / 30.0).min(1.0),
        humour: 0.45 * metrics.exclamation_ratio
            + 0.35 * (10.0 * metrics.emoji_density).min(1.0)
            + 0.2 * (1.0 - metrics.formality),
        optimism: if polar > 0.0 {
            sentiment.pos / polar
        } else {
            0.5
        },
    }
}

/// Scores `metrics` against `persona`'s `targets`.
pub fn score(persona: &str, targets: &Traits, metrics: StyleMetrics) -> Adherence {
    let measured = measure(&metrics);
    let trait_score = |target: f64, measured: f64| TraitScore {
        target,
        measured,
        score: 1.0 - (target - measured).abs(),
    };
    let traits = TraitScores {
        warmth: trait_score(targets.warmth, measured.warmth),
        formality: trait_score(targets.formality, measured.formality),
        verbosity: trait_score(targets.verbosity, measured.verbosity),
        humour: trait_score(targets.humour, measured.humour),
        optimism: trait_score(targets.optimism, measured.optimism),
    };
    let all = [
        traits.warmth,
        traits.formality,
        traits.verbosity,
        traits.humour,
        traits.optimism,
    ];
    Adherence {
        persona: persona.to_owned(),
        score: all.iter().map(|one| one.score).sum::<f64>() / all.len() as f64,
        traits,
        metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::style::analyze;

    const JESTER: Traits = Traits {
        warmth: 0.8,
        formality: 0.1,
        verbosity: 0.4,
        humour: 0.95,
        optimism: 0.9,
    };
    const ANALYST: Traits = Traits {
        warmth: 0.2,
        formality: 0.9,
        verbosity: 0.6,
        humour: 0.0,
        optimism: 0.4,
    };

    const PLAYFUL: &str = "Haha, great question! Paris, of course! 🥖🗼 The city of love \
                           and croissants! You'll adore it!";
    const SOBER: &str = "The capital of France is Paris. It is the seat of the national \
                         government and the largest city in the country, with a population \
                         of approximately two million inhabitants within its administrative \
                         boundaries.";

    #[test]
    fn each_persona_prefers_the_text_in_its_style() {
        let jester_on_playful = score("jester", &JESTER, analyze(PLAYFUL));
        let jester_on_sober = score("jester", &JESTER, analyze(SOBER));
        let analyst_on_playful = score("analyst", &ANALYST, analyze(PLAYFUL));
        let analyst_on_sober = score("analyst", &ANALYST, analyze(SOBER));
        assert!(
            jester_on_playful.score > jester_on_sober.score + 0.15,
            "{jester_on_playful:#?}\n{jester_on_sober:#?}"
        );
        assert!(
            analyst_on_sober.score > analyst_on_playful.score + 0.15,
            "{analyst_on_sober:#?}\n{analyst_on_playful:#?}"
        );
    }

    #[test]
    fn measured_traits_move_the_expected_way() {
        let playful = measure(&analyze(PLAYFUL));
        let sober = measure(&analyze(SOBER));
        assert!(playful.humour > sober.humour + 0.3, "{playful:?} {sober:?}");
        assert!(
            sober.formality > playful.formality + 0.4,
            "{playful:?} {sober:?}"
        );
        assert!(sober.verbosity > playful.verbosity, "{playful:?} {sober:?}");
        assert!(playful.warmth > sober.warmth, "{playful:?} {sober:?}");
        for traits in [playful, sober] {
            for value in [
                traits.warmth,
                traits.formality,
                traits.verbosity,
                traits.humour,
                traits.optimism,
            ] {
                assert!((0.0..=1.0).contains(&value), "{traits:?}");
            }
        }
    }

    #[test]
    fn a_text_on_every_target_scores_one() {
        let metrics = analyze("Fine.");
        let targets = measure(&metrics);
        let adherence = score("exact", &targets, metrics);
        assert!((adherence.score - 1.0).abs() < 1e-12, "{adherence:?}");
    }

    #[test]
    fn scores_are_one_minus_the_distance() {
        let metrics = analyze("");
        let adherence = score("p", &Traits::all(1.0), metrics);
        // Empty text: warmth 0.5, formality 0.5, verbosity 0, humour 0.1, optimism 0.5.
        assert!((adherence.traits.warmth.score - 0.5).abs() < 1e-12);
        assert!((adherence.traits.verbosity.score - 0.0).abs() < 1e-12);
        assert!((adherence.traits.humour.score - 0.1).abs() < 1e-12);
        assert!((adherence.score - (0.5 + 0.5 + 0.0 + 0.1 + 0.5) / 5.0).abs() < 1e-12);
    }
}
