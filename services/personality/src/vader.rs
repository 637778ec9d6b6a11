//! VADER sentiment (Hutto & Gilbert, 2014) scored as the reference implementation,
//! vaderSentiment 3.3.2, scores it: same tokens, same rules, same rounding, so a score
//! here equals the one its users know.
//!
//! The `vader_sentiment` crate supplies the lexicons. Its own scoring departs from the
//! reference (capitals counted in emoticons, a lone `?` amplified, a neutral text with
//! `!` scored negative, `at least` negated, boosters found inside other words, no `no`
//! rule), so the rules are written here, one function per rule of the reference, and
//! the tests hold them to the reference's scores.

use std::{collections::HashMap, sync::LazyLock};

use slough_protocol::personality::Sentiment;

const B_INCR: f64 = 0.293;
const B_DECR: f64 = -0.293;
/// Added to a word in capitals when the rest of the text is not.
const C_INCR: f64 = 0.733;
/// What a negation multiplies a valence by.
const N_SCALAR: f64 = -0.74;

const NEGATE: &[&str] = &[
    "aint",
    "arent",
    "cannot",
    "cant",
    "couldnt",
    "darent",
    "didnt",
    "doesnt",
    "ain't",
    "aren't",
    "can't",
    "couldn't",
    "daren't",
    "didn't",
    "doesn't",
    "dont",
    "hadnt",
    "hasnt",
    "havent",
    "isnt",
    "mightnt",
    "mustnt",
    "neither",
    "don't",
    "hadn't",
    "hasn't",
    "haven't",
    "isn't",
    "mightn't",
    "mustn't",
    "neednt",
    "needn't",
    "never",
    "none",
    "nope",
    "nor",
    "not",
    "nothing",
    "nowhere",
    "oughtnt",
    "shant",
    "shouldnt",
    "uhuh",
    "wasnt",
    "werent",
    "oughtn't",
    "shan't",
    "shouldn't",
    "uh-uh",
    "wasn't",
    "weren't",
    "without",
    "wont",
    "wouldnt",
    "won't",
    "wouldn't",
    "rarely",
    "seldom",
    "despite",
];

/// Degree adverbs: boosters raise the valence of the word they precede, dampeners lower it.
const BOOSTERS: &[&str] = &[
    "absolutely",
    "amazingly",
    "awfully",
    "completely",
    "considerable",
    "considerably",
    "decidedly",
    "deeply",
    "effing",
    "enormous",
    "enormously",
    "entirely",
    "especially",
    "exceptional",
    "exceptionally",
    "extreme",
    "extremely",
    "fabulously",
    "flipping",
    "flippin",
    "frackin",
    "fracking",
    "fricking",
    "frickin",
    "frigging",
    "friggin",
    "fully",
    "fuckin",
    "fucking",
    "fuggin",
    "fugging",
    "greatly",
    "hella",
    "highly",
    "hugely",
    "incredible",
    "incredibly",
    "intensely",
    "major",
    "majorly",
    "more",
    "most",
    "particularly",
    "purely",
    "quite",
    "really",
    "remarkably",
    "so",
    "substantially",
    "thoroughly",
    "total",
    "totally",
    "tremendous",
    "tremendously",
    "uber",
    "unbelievably",
    "unusually",
    "utter",
    "utterly",
    "very",
];
const DAMPENERS: &[&str] = &[
    "almost",
    "barely",
    "hardly",
    "just enough",
    "kind of",
    "kinda",
    "kindof",
    "kind-of",
    "less",
    "little",
    "marginal",
    "marginally",
    "occasional",
    "occasionally",
    "partly",
    "scarce",
    "scarcely",
    "slight",
    "slightly",
    "somewhat",
    "sort of",
    "sorta",
    "sortof",
    "sort-of",
];

/// Phrases whose valence replaces that of the lexicon word in them.
const SPECIAL_CASES: &[(&str, f64)] = &[
    ("the shit", 3.0),
    ("the bomb", 3.0),
    ("bad ass", 1.5),
    ("badass", 1.5),
    ("bus stop", 0.0),
    ("yeah right", -2.0),
    ("kiss of death", -1.5),
    ("to die for", 3.0),
    ("beating heart", 3.5),
];

/// The reference's lexicon, looked up by the lower-cased word as it does. The crate's
/// copy folds case (so `:p` carries `:P`'s rating) and predates `heart` and `hearts`;
/// those three are set to the reference's ratings.
static LEXICON: LazyLock<HashMap<&'static str, f64>> = LazyLock::new(|| {
    let mut lexicon: HashMap<&'static str, f64> = vader_sentiment::LEXICON
        .iter()
        .map(|(word, &valence)| (**word, valence))
        .collect();
    lexicon.extend([(":p", 1.0), ("heart", 3.2), ("hearts", 3.3)]);
    lexicon
});

/// The scores of `text`: `compound` in [-1, 1] rounded to four places, the shares of
/// positive, neutral and negative words rounded to three.
pub fn polarity_scores(text: &str) -> Sentiment {
    let text = describe_emoji(text);
    let words = words_and_emoticons(&text);
    let lower: Vec<String> = words.iter().map(|word| word.to_lowercase()).collect();
    let cap_differs = some_in_capitals(&words);

    let mut sentiments = Vec::with_capacity(words.len());
    for i in 0..words.len() {
        let modifier = booster(&lower[i]).is_some()
            || (lower[i] == "kind" && lower.get(i + 1).is_some_and(|next| next == "of"));
        let valence = if modifier {
            0.0
        } else {
            valence(&words, &lower, i, cap_differs)
        };
        sentiments.push(valence);
    }
    but_check(&lower, &mut sentiments);
    score(&sentiments, &text)
}

/// Each emoji replaced by its description (`😀` → `grinning face`), spaced from the word
/// before it.
fn describe_emoji(text: &str) -> String {
    let mut described = String::with_capacity(text.len());
    let mut after_space = true;
    let mut utf8 = [0; 4];
    for character in text.chars() {
        match vader_sentiment::EMOJI_LEXICON.get(&*character.encode_utf8(&mut utf8)) {
            Some(description) => {
                if !after_space {
                    described.push(' ');
                }
                described.push_str(description);
                after_space = false;
            }
            None => {
                described.push(character);
                after_space = character == ' ';
            }
        }
    }
    described.trim().to_owned()
}

/// Whitespace-separated tokens with leading and trailing ASCII punctuation removed,
/// unless that leaves two characters or fewer (then it is likely an emoticon: `:)`).
fn words_and_emoticons(text: &str) -> Vec<&str> {
    text.split_whitespace()
        .map(|token| {
            let stripped = token.trim_matches(|c: char| c.is_ascii_punctuation());
            if stripped.chars().count() <= 2 {
                token
            } else {
                stripped
            }
        })
        .collect()
}

/// Python's `str.isupper`: at least one cased character, and none in lower case.
fn is_upper(word: &str) -> bool {
    word.chars().any(char::is_uppercase) && !word.chars().any(char::is_lowercase)
}

/// Whether some, but not all, of the words are in capitals.
fn some_in_capitals(words: &[&str]) -> bool {
    let capitals = words.iter().filter(|word| is_upper(word)).count();
    capitals > 0 && capitals < words.len()
}

fn booster(lower: &str) -> Option<f64> {
    if BOOSTERS.contains(&lower) {
        Some(B_INCR)
    } else if DAMPENERS.contains(&lower) {
        Some(B_DECR)
    } else {
        None
    }
}

fn negated(lower: &str) -> bool {
    NEGATE.contains(&lower) || lower.contains("n't")
}

/// The valence of word `i` with the rules about the words around it applied.
fn valence(words: &[&str], lower: &[String], i: usize, cap_differs: bool) -> f64 {
    let Some(&rated) = LEXICON.get(lower[i].as_str()) else {
        return 0.0;
    };
    let mut valence = rated;
    // `no` before a rated word negates it instead of counting on its own.
    if lower[i] == "no" && lower.get(i + 1).is_some_and(|next| in_lexicon(next)) {
        valence = 0.0;
    }
    if (i > 0 && lower[i - 1] == "no")
        || (i > 1 && lower[i - 2] == "no")
        || (i > 2 && lower[i - 3] == "no" && matches!(lower[i - 1].as_str(), "or" | "nor"))
    {
        valence = rated * N_SCALAR;
    }
    if is_upper(words[i]) && cap_differs {
        valence += if valence > 0.0 { C_INCR } else { -C_INCR };
    }
    for start in 0..3 {
        if i <= start || in_lexicon(&lower[i - start - 1]) {
            continue;
        }
        let scalar = scalar_inc_dec(words[i - start - 1], valence, cap_differs);
        valence += match start {
            1 => scalar * 0.95,
            2 => scalar * 0.9,
            _ => scalar,
        };
        valence = negation_check(valence, lower, start, i);
        if start == 2 {
            valence = special_idioms_check(valence, lower, i);
        }
    }
    least_check(valence, lower, i)
}

fn in_lexicon(lower: &str) -> bool {
    LEXICON.contains_key(lower)
}

/// How a booster or dampener before a word changes its valence.
fn scalar_inc_dec(word: &str, valence: f64, cap_differs: bool) -> f64 {
    let Some(mut scalar) = booster(&word.to_lowercase()) else {
        return 0.0;
    };
    if valence < 0.0 {
        scalar = -scalar;
    }
    if is_upper(word) && cap_differs {
        scalar += if valence > 0.0 { C_INCR } else { -C_INCR };
    }
    scalar
}

/// A negation up to three words before flips and shrinks the valence; `never so` and
/// `never this` raise it; `without doubt` leaves it.
fn negation_check(valence: f64, lower: &[String], start: usize, i: usize) -> f64 {
    let at = |back: usize| lower[i - back].as_str();
    let so_or_this = |back: usize| matches!(at(back), "so" | "this");
    match start {
        0 if negated(at(1)) => valence * N_SCALAR,
        1 if at(2) == "never" && so_or_this(1) => valence * 1.25,
        1 if at(2) == "without" && at(1) == "doubt" => valence,
        1 if negated(at(2)) => valence * N_SCALAR,
        // The reference groups this test as written here: `never` need not precede a
        // `so` or `this` right before the word.
        2 if (at(3) == "never" && so_or_this(2)) || so_or_this(1) => valence * 1.25,
        2 if at(3) == "without" && (at(2) == "doubt" || at(1) == "doubt") => valence,
        2 if negated(at(3)) => valence * N_SCALAR,
        _ => valence,
    }
}

/// Phrases around word `i` that carry their own valence, and two-word dampeners
/// (`kind of`, `sort of`) before it.
fn special_idioms_check(mut valence: f64, lower: &[String], i: usize) -> f64 {
    let phrase = |from: usize, to: usize| lower[from..=to].join(" ");
    let special = |phrase: &str| {
        SPECIAL_CASES
            .iter()
            .find(|(case, _)| *case == phrase)
            .map(|&(_, valence)| valence)
    };
    let (three_two_one, three_two, two_one) = (
        phrase(i - 3, i - 1),
        phrase(i - 3, i - 2),
        phrase(i - 2, i - 1),
    );
    let before = [
        phrase(i - 1, i),
        phrase(i - 2, i),
        two_one.clone(),
        three_two_one.clone(),
        three_two.clone(),
    ];
    if let Some(found) = before.iter().find_map(|phrase| special(phrase)) {
        valence = found;
    }
    for after in 1..=2 {
        if i + after < lower.len()
            && let Some(found) = special(&phrase(i, i + after))
        {
            valence = found;
        }
    }
    for n_gram in [three_two_one, three_two, two_one] {
        if let Some(scalar) = booster(&n_gram) {
            valence += scalar;
        }
    }
    valence
}

/// `least` right before a word negates it, except in `at least` and `very least`.
fn least_check(valence: f64, lower: &[String], i: usize) -> f64 {
    if i == 0 || lower[i - 1] != "least" || in_lexicon("least") {
        return valence;
    }
    if i > 1 && matches!(lower[i - 2].as_str(), "at" | "very") {
        valence
    } else {
        valence * N_SCALAR
    }
}

/// `but` halves what comes before it and adds half to what comes after. The reference
/// finds each value's position by searching the list for the value, so when a value
/// repeats it scales the first copy; that is reproduced here.
fn but_check(lower: &[String], sentiments: &mut [f64]) {
    let Some(but) = lower.iter().position(|word| word == "but") else {
        return;
    };
    for k in 0..sentiments.len() {
        let value = sentiments[k];
        let at = sentiments.iter().position(|&v| v == value).unwrap_or(k);
        if at < but {
            sentiments[at] = value * 0.5;
        } else if at > but {
            sentiments[at] = value * 1.5;
        }
    }
}

/// The total, amplified by `!` and `?`, normalised to the compound score; and the
/// shares of positive, negative and neutral words.
fn score(sentiments: &[f64], text: &str) -> Sentiment {
    if sentiments.is_empty() {
        return Sentiment {
            compound: 0.0,
            pos: 0.0,
            neu: 0.0,
            neg: 0.0,
        };
    }
    let amplifier = punctuation_emphasis(text);
    let mut sum: f64 = sentiments.iter().sum();
    if sum > 0.0 {
        sum += amplifier;
    } else if sum < 0.0 {
        sum -= amplifier;
    }
    let compound = (sum / (sum * sum + 15.0).sqrt()).clamp(-1.0, 1.0);

    let mut pos_sum: f64 = sentiments
        .iter()
        .filter(|&&s| s > 0.0)
        .map(|s| s + 1.0)
        .sum();
    let mut neg_sum: f64 = sentiments
        .iter()
        .filter(|&&s| s < 0.0)
        .map(|s| s - 1.0)
        .sum();
    let neutral = sentiments.iter().filter(|&&s| s == 0.0).count() as f64;
    if pos_sum > neg_sum.abs() {
        pos_sum += amplifier;
    } else if pos_sum < neg_sum.abs() {
        neg_sum -= amplifier;
    }
    let total = pos_sum + neg_sum.abs() + neutral;
    Sentiment {
        compound: round(compound, 4),
        pos: round((pos_sum / total).abs(), 3),
        neu: round((neutral / total).abs(), 3),
        neg: round((neg_sum / total).abs(), 3),
    }
}

/// Up to four `!` add 0.292 each; two or three `?` add 0.18 each, more add 0.96.
fn punctuation_emphasis(text: &str) -> f64 {
    let exclamations = text.matches('!').count().min(4);
    let questions = text.matches('?').count();
    let question_emphasis = match questions {
        0 | 1 => 0.0,
        2 | 3 => questions as f64 * 0.18,
        _ => 0.96,
    };
    exclamations as f64 * 0.292 + question_emphasis
}

/// Python's `round(x, places)`: the nearest decimal of `places` digits to the exact
/// value of `x`, which Rust's formatting also computes.
fn round(x: f64, places: usize) -> f64 {
    format!("{x:.places$}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores from vaderSentiment 3.3.2 (`polarity_scores`: compound, pos, neu, neg):
    /// its README's examples, then one sentence per rule where the `vader_sentiment`
    /// crate's scoring differed (capitals beside emoticons, `?`, `!` on a neutral text,
    /// `no`, `least`, idioms, `but` with a repeated value, emoji).
    const REFERENCE: &[(&str, [f64; 4])] = &[
        (
            "VADER is smart, handsome, and funny.",
            [0.8316, 0.746, 0.254, 0.0],
        ),
        (
            "VADER is smart, handsome, and funny!",
            [0.8439, 0.752, 0.248, 0.0],
        ),
        (
            "VADER is very smart, handsome, and funny.",
            [0.8545, 0.701, 0.299, 0.0],
        ),
        (
            "VADER is VERY SMART, handsome, and FUNNY.",
            [0.9227, 0.754, 0.246, 0.0],
        ),
        (
            "VADER is VERY SMART, handsome, and FUNNY!!!",
            [0.9342, 0.767, 0.233, 0.0],
        ),
        (
            "VADER is VERY SMART, uber handsome, and FRIGGIN FUNNY!!!",
            [0.9469, 0.706, 0.294, 0.0],
        ),
        (
            "VADER is not smart, handsome, nor funny.",
            [-0.7424, 0.0, 0.354, 0.646],
        ),
        ("The book was good.", [0.4404, 0.492, 0.508, 0.0]),
        (
            "At least it isn't a horrible book.",
            [0.431, 0.322, 0.678, 0.0],
        ),
        (
            "The book was only kind of good.",
            [0.3832, 0.303, 0.697, 0.0],
        ),
        (
            "The plot was good, but the characters are uncompelling and the dialog is not great.",
            [-0.7042, 0.094, 0.579, 0.327],
        ),
        ("Today SUX!", [-0.5461, 0.0, 0.221, 0.779]),
        (
            "Today only kinda sux! But I'll get by, lol",
            [0.5249, 0.317, 0.556, 0.127],
        ),
        ("Make sure you :) or :D today!", [0.8633, 0.706, 0.294, 0.0]),
        (
            "Catch utf-8 emoji such as such as 💘 and 💋 and 😁",
            [0.875, 0.385, 0.615, 0.0],
        ),
        ("Not bad at all", [0.431, 0.487, 0.513, 0.0]),
        ("The service was fine?", [0.2023, 0.375, 0.625, 0.0]),
        (
            "Is this the way it works??? Nobody knows!!!",
            [0.0, 0.0, 1.0, 0.0],
        ),
        ("Hello there!!!", [0.0, 0.0, 1.0, 0.0]),
        (
            "There is no love lost here, and no good answer either.",
            [-0.5875, 0.125, 0.508, 0.367],
        ),
        (
            "It is the least helpful reply I have seen.",
            [-0.3252, 0.0, 0.774, 0.226],
        ),
        (
            "At the very least the answer was helpful.",
            [0.4215, 0.286, 0.714, 0.0],
        ),
        (
            "That movie was the bomb, a beating heart of a film.",
            [0.9287, 0.614, 0.386, 0.0],
        ),
        (
            "Great food but great prices too, and great staff.",
            [0.9418, 0.698, 0.302, 0.0],
        ),
        (
            "I never so loved a trip; it was without doubt great.",
            [0.9216, 0.604, 0.396, 0.0],
        ),
        (
            "He is kind of nice but really RUDE to the staff :P",
            [-0.2928, 0.269, 0.452, 0.278],
        ),
    ];

    #[test]
    fn scores_equal_the_reference_implementation() {
        let mut misses = Vec::new();
        for (text, [compound, pos, neu, neg]) in REFERENCE {
            let scores = polarity_scores(text);
            let measured = [scores.compound, scores.pos, scores.neu, scores.neg];
            let close = measured
                .iter()
                .zip([compound, pos, neu, neg])
                .all(|(measured, reference)| (measured - reference).abs() < 0.001);
            if !close {
                misses.push(format!(
                    "{text:?}: {measured:?}, reference {:?}",
                    [compound, pos, neu, neg]
                ));
            }
        }
        assert!(misses.is_empty(), "{misses:#?}");
    }

    #[test]
    fn nothing_to_score_is_neutral() {
        for text in ["", "   ", "\n"] {
            let scores = polarity_scores(text);
            assert_eq!(
                [scores.compound, scores.pos, scores.neu, scores.neg],
                [0.0; 4]
            );
        }
    }
}
