//! Text-style metrics, measured by rules: VADER sentiment (scored as the reference
//! implementation does, in [`crate::vader`]), Flesch reading ease and
//! Flesch–Kincaid grade (`textstat`), and the counts below, written here.
//!
//! Formality has no lexicon-only standard. It approximates Heylighen & Dewaele's
//! F-score, which weighs non-deictic word classes (nouns, adjectives, prepositions,
//! articles) against deictic ones (pronouns, verbs, adverbs, interjections). Without a
//! part-of-speech tagger only the closed classes can be counted exactly, so:
//!
//! - formal: articles, prepositions, and long words (three or more syllables, mostly
//!   Latinate nouns and adjectives);
//! - informal: pronouns, interjections and chat words (`hey`, `lol`, `gonna`),
//!   contractions (`you're`), emoji, and `!`-ended sentences;
//!
//! `formality = clamp(0.5 + 0.6 × (formal − informal) / words, 0, 1)`: a memo scores
//! about 0.9, a chat message full of pronouns and emoji near 0, plain prose in between.

use std::{collections::HashSet, sync::LazyLock};

use slough_protocol::personality::StyleMetrics;
use unicode_segmentation::UnicodeSegmentation as _;

const ARTICLES: &[&str] = &["a", "an", "the"];

const PREPOSITIONS: &[&str] = &[
    "about",
    "above",
    "across",
    "after",
    "against",
    "along",
    "among",
    "around",
    "at",
    "before",
    "behind",
    "below",
    "beneath",
    "beside",
    "between",
    "beyond",
    "by",
    "concerning",
    "despite",
    "during",
    "except",
    "for",
    "from",
    "in",
    "including",
    "inside",
    "into",
    "of",
    "on",
    "onto",
    "over",
    "per",
    "regarding",
    "since",
    "through",
    "throughout",
    "to",
    "toward",
    "towards",
    "under",
    "upon",
    "via",
    "with",
    "within",
    "without",
];

const PRONOUNS: &[&str] = &[
    "i",
    "me",
    "my",
    "mine",
    "myself",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "we",
    "us",
    "our",
    "ours",
    "ourselves",
    "he",
    "him",
    "his",
    "himself",
    "she",
    "her",
    "hers",
    "herself",
    "it",
    "its",
    "itself",
    "they",
    "them",
    "their",
    "theirs",
    "themselves",
    "this",
    "that",
    "these",
    "those",
    "ya",
    "u",
];

const INTERJECTIONS: &[&str] = &[
    "ah", "aha", "aw", "awesome", "bye", "cool", "dude", "gonna", "gotta", "haha", "hahaha",
    "hehe", "hey", "hi", "hmm", "huh", "kinda", "lol", "nah", "nope", "oh", "ok", "okay", "omg",
    "oops", "ouch", "sorta", "uh", "um", "wanna", "wow", "yay", "yeah", "yep", "yup",
];

static FORMAL: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| ARTICLES.iter().chain(PREPOSITIONS).copied().collect());
static INFORMAL: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| PRONOUNS.iter().chain(INTERJECTIONS).copied().collect());

/// Measures `text`.
pub fn analyze(text: &str) -> StyleMetrics {
    let sentiment = crate::vader::polarity_scores(text);

    let words: Vec<String> = text.unicode_words().map(str::to_lowercase).collect();
    let word_count = textstat::lexicon_count(text);
    let sentences = textstat::sentence_count(text);
    let endings = sentence_endings(text);
    let emoji = text
        .graphemes(true)
        .filter(|grapheme| emojis::get(grapheme).is_some())
        .count();
    let per_word = |count: usize| ratio(count, word_count);
    let per_sentence = |count: usize| ratio(count, sentences).min(1.0);
    let distinct: HashSet<&str> = words.iter().map(String::as_str).collect();

    let (readability, grade) = if word_count == 0 {
        (0.0, 0.0)
    } else {
        (
            textstat::flesch_reading_ease(text),
            textstat::flesch_kincaid_grade(text),
        )
    };
    StyleMetrics {
        words: saturating_u32(word_count),
        sentences: saturating_u32(sentences),
        sentiment,
        flesch_reading_ease: readability,
        flesch_kincaid_grade: grade,
        formality: formality(&words, emoji, endings.exclamations),
        emoji_density: per_word(emoji),
        avg_sentence_length: ratio(word_count, sentences),
        lexical_diversity: ratio(distinct.len(), words.len()),
        question_ratio: per_sentence(endings.questions),
        exclamation_ratio: per_sentence(endings.exclamations),
        classification: None,
    }
}

/// The F-score approximation described at the top of this module.
fn formality(words: &[String], emoji: usize, exclamations: usize) -> f64 {
    if words.is_empty() {
        return 0.5;
    }
    let mut formal = 0usize;
    let mut informal = emoji + exclamations;
    for word in words {
        if FORMAL.contains(word.as_str()) || textstat::syllables(word) >= 3 {
            formal += 1;
        }
        if INFORMAL.contains(word.as_str()) {
            informal += 1;
        }
        if word.contains(['\'', '’']) {
            informal += 1;
        }
    }
    let balance = (formal as f64 - informal as f64) / words.len() as f64;
    (0.5 + 0.6 * balance).clamp(0.0, 1.0)
}

/// How many sentences end as questions and as exclamations.
#[derive(Debug, Default, PartialEq)]
struct Endings {
    questions: usize,
    exclamations: usize,
}

/// Counts runs of terminal punctuation: a run holding `?` ends a question (`?!` too),
/// one holding `!` and no `?` an exclamation.
fn sentence_endings(text: &str) -> Endings {
    let mut endings = Endings::default();
    let mut run = (false, false);
    for c in text.chars().chain(std::iter::once(' ')) {
        match c {
            '?' => run.0 = true,
            '!' => run.1 = true,
            '.' | '…' => {}
            _ => {
                match run {
                    (true, _) => endings.questions += 1,
                    (false, true) => endings.exclamations += 1,
                    (false, false) => {}
                }
                run = (false, false);
            }
        }
    }
    endings
}

fn ratio(count: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        count as f64 / of as f64
    }
}

fn saturating_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each of VADER's rules moves the score the way its README's examples show:
    /// punctuation, a booster, capitals, more of both raise it; negation flips it; a
    /// dampener and `but` lower it.
    #[test]
    fn vader_rules_move_the_score_as_documented() {
        let compound = |text: &str| analyze(text).sentiment.compound;
        let rising = [
            "VADER is smart, handsome, and funny.",
            "VADER is smart, handsome, and funny!",
            "VADER is very smart, handsome, and funny.",
            "VADER is VERY SMART, handsome, and FUNNY.",
            "VADER is VERY SMART, handsome, and FUNNY!!!",
            "VADER is VERY SMART, uber handsome, and FRIGGIN FUNNY!!!",
        ];
        for pair in rising.windows(2) {
            assert!(compound(pair[1]) > compound(pair[0]), "{pair:?}");
        }
        assert!(compound("VADER is not smart, handsome, nor funny.") < -0.5);
        assert!(compound("The book was only kind of good.") < compound("The book was good."));
        assert!(compound("The plot was good, but the characters are boring.") < 0.0);
    }

    #[test]
    fn flesch_follows_its_definition_on_hand_counted_texts() {
        // (text, words, sentences, syllables)
        let texts = [
            ("The cat sat on the mat.", 6.0, 1.0, 6.0),
            // Wikipedia's example for the reading ease, which it gives as 69.
            (
                "This sentence, taken as a reading passage unto itself, is being used to \
                 prove a point.",
                16.0,
                1.0,
                23.0,
            ),
            (
                "The committee approved the proposal. Everyone was happy with the result.",
                11.0,
                2.0,
                20.0,
            ),
        ];
        for (text, words, sentences, syllables) in texts {
            let reading_ease = 206.835 - 1.015 * words / sentences - 84.6 * syllables / words;
            let grade = 0.39 * words / sentences + 11.8 * syllables / words - 15.59;
            let metrics = analyze(text);
            assert_eq!(f64::from(metrics.words), words, "{text}");
            assert_eq!(f64::from(metrics.sentences), sentences, "{text}");
            // The syllable counter is a heuristic: one syllable off per ten words moves
            // the reading ease by 8.5 and the grade by 1.2.
            assert!(
                (metrics.flesch_reading_ease - reading_ease).abs() <= 8.5,
                "{text}: {} vs {reading_ease}",
                metrics.flesch_reading_ease
            );
            assert!(
                (metrics.flesch_kincaid_grade - grade).abs() <= 1.2,
                "{text}: {} vs {grade}",
                metrics.flesch_kincaid_grade
            );
        }
        // Exact where the counter counts exactly.
        let cat = analyze("The cat sat on the mat.");
        assert!((cat.flesch_reading_ease - 116.145).abs() < 1e-9);
        assert!((cat.flesch_kincaid_grade - -1.45).abs() < 1e-9);
    }

    #[test]
    fn easy_text_reads_easier_than_academic_text() {
        let easy = analyze("I like my dog. He is fun. We play all day.");
        let hard = analyze(
            "Notwithstanding considerable methodological heterogeneity, the \
             investigators demonstrated statistically significant improvements in \
             cardiovascular outcomes.",
        );
        assert!(easy.flesch_reading_ease > 90.0, "{easy:?}");
        assert!(hard.flesch_reading_ease < 10.0, "{hard:?}");
        assert!(hard.flesch_kincaid_grade > easy.flesch_kincaid_grade + 10.0);
    }

    #[test]
    fn formality_orders_registers() {
        let memo = analyze(
            "The committee approved the proposal after a careful review of the budget \
             for the coming year.",
        );
        let prose = analyze("I think you should try the new version, it works well.");
        let chat = analyze("hey!! lol you're gonna love this 😂 omg");
        assert!(memo.formality > 0.8, "{memo:?}");
        assert!((0.25..0.6).contains(&prose.formality), "{prose:?}");
        assert!(chat.formality < 0.1, "{chat:?}");
    }

    #[test]
    fn counts_emoji_questions_exclamations_and_distinct_words() {
        let metrics = analyze("Is it raining? Yes! It is raining 🌧️ today. Really?!");
        assert_eq!(metrics.sentences, 4);
        assert!((metrics.question_ratio - 0.5).abs() < 1e-9, "{metrics:?}");
        assert!(
            (metrics.exclamation_ratio - 0.25).abs() < 1e-9,
            "{metrics:?}"
        );
        // 9 words, one emoji (a grapheme with its variation selector).
        assert_eq!(metrics.words, 9);
        assert!(
            (metrics.emoji_density - 1.0 / 9.0).abs() < 1e-9,
            "{metrics:?}"
        );
        // is, it, raining, yes, today, really: 6 distinct of 9.
        assert!(
            (metrics.lexical_diversity - 6.0 / 9.0).abs() < 1e-9,
            "{metrics:?}"
        );
        assert!((metrics.avg_sentence_length - 9.0 / 4.0).abs() < 1e-9);
    }

    #[test]
    fn empty_text_measures_nothing() {
        let metrics = analyze("");
        assert_eq!(metrics.words, 0);
        assert_eq!(metrics.sentences, 0);
        assert_eq!(metrics.flesch_reading_ease, 0.0);
        assert_eq!(metrics.sentiment.compound, 0.0);
        assert_eq!(metrics.formality, 0.5);
    }
}
