//! Personal data in text: where it is ([`analyze`]) and the text without it
//! ([`anonymize`]), in the shapes of Microsoft Presidio's analyzer and anonymizer.
//!
//! Each recognizer finds candidates with a pattern and keeps those that pass the check
//! that type has, so look-alikes are left alone:
//!
//! | type | candidates | kept when |
//! |---|---|---|
//! | `EMAIL_ADDRESS` | `local@domain.tld` | always |
//! | `PHONE_NUMBER` | digits written as a phone number: a leading `+`, an area code in parentheses, or groups split by spaces, dots or dashes | libphonenumber (the `phonenumber` crate) says it is valid: as written with `+`; with a leading `0`, as a British, German, French, Indian or Australian national number; else only as a ten-digit North American one |
//! | `CREDIT_CARD` | 13–19 digits, in groups or not | the Luhn checksum holds and the number starts as a card network's do |
//! | `IBAN_CODE` | two letters, two digits, then letters and digits in groups or not | its country's format and the mod-97 checksum hold (`iban_validate`) |
//! | `IP_ADDRESS` | dotted quads and colon-separated hex groups | it parses as an IPv4 or IPv6 address, and a dotted quad is not a version (`v1.2.3.4`, `version 1.2.3.4`) |
//! | `US_SSN` | `123-45-6789` or `123 45 6789` | the area is not 000, 666 or 900–999, the group not 00, the serial not 0000 |
//! | `SECRET` | private key blocks, AWS access keys, GitHub, Slack, Stripe, Google and OpenAI-style (`sk-…`) keys, JSON web tokens | always |
//!
//! Names and postal addresses are not found: that needs a named-entity model, and
//! none is available to this platform's registries.
//!
//! Offsets are in characters (Unicode scalar values), as Python's are, so a client
//! slices the text it sent with them.

use std::{collections::BTreeMap, net::IpAddr, sync::LazyLock};

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What kind of personal data a finding is (Presidio's entity names).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PiiType {
    EmailAddress,
    PhoneNumber,
    CreditCard,
    IbanCode,
    IpAddress,
    UsSsn,
    Secret,
}

impl PiiType {
    pub const ALL: [PiiType; 7] = [
        PiiType::EmailAddress,
        PiiType::PhoneNumber,
        PiiType::CreditCard,
        PiiType::IbanCode,
        PiiType::IpAddress,
        PiiType::UsSsn,
        PiiType::Secret,
    ];

    /// `EMAIL_ADDRESS`, ...
    pub fn name(self) -> &'static str {
        match self {
            PiiType::EmailAddress => "EMAIL_ADDRESS",
            PiiType::PhoneNumber => "PHONE_NUMBER",
            PiiType::CreditCard => "CREDIT_CARD",
            PiiType::IbanCode => "IBAN_CODE",
            PiiType::IpAddress => "IP_ADDRESS",
            PiiType::UsSsn => "US_SSN",
            PiiType::Secret => "SECRET",
        }
    }
}

/// One piece of personal data in a text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    #[serde(rename = "type")]
    pub kind: PiiType,
    /// Where it starts, in characters.
    pub start: usize,
    /// Where it ends (exclusive), in characters.
    pub end: usize,
    /// How sure the recognizer is, 0..1: 1 for a passed checksum or an unambiguous
    /// format, less where a look-alike remains possible.
    pub score: f64,
    /// The text found.
    pub text: String,
}

/// What [`anonymize`] puts in place of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// `<EMAIL_ADDRESS>`.
    Replace,
    /// Nothing: the finding is cut out.
    Redact,
    /// The SHA-256 of the finding's text, in hex: equal values stay equal.
    Hash,
}

/// One replacement [`anonymize`] made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Replaced {
    #[serde(rename = "type")]
    pub kind: PiiType,
    /// Where the replacement starts in the anonymized text, in characters.
    pub start: usize,
    /// Where it ends (exclusive).
    pub end: usize,
    pub operator: Operator,
    /// What now stands there.
    pub text: String,
}

/// The personal data in `text` of the `types` asked for (all when empty), in order,
/// without overlaps (where two recognizers claim the same characters, the surer one,
/// then the longer one, keeps them).
pub fn analyze(text: &str, types: &[PiiType]) -> Vec<Finding> {
    let wanted = |kind: PiiType| types.is_empty() || types.contains(&kind);
    // Byte spans first; characters at the end.
    let mut found: Vec<(PiiType, usize, usize, f64)> = Vec::new();
    for kind in PiiType::ALL.into_iter().filter(|&kind| wanted(kind)) {
        let recognize = match kind {
            PiiType::EmailAddress => emails,
            PiiType::PhoneNumber => phones,
            PiiType::CreditCard => cards,
            PiiType::IbanCode => ibans,
            PiiType::IpAddress => ip_addresses,
            PiiType::UsSsn => ssns,
            PiiType::Secret => secrets,
        };
        found.extend(
            recognize(text)
                .into_iter()
                .map(|(start, end, score)| (kind, start, end, score)),
        );
    }
    // Surest first, then longest; each keeps its span unless a kept one overlaps it.
    found.sort_by(|a, b| {
        b.3.total_cmp(&a.3)
            .then((b.2 - b.1).cmp(&(a.2 - a.1)))
            .then(a.1.cmp(&b.1))
    });
    let mut kept: Vec<(PiiType, usize, usize, f64)> = Vec::new();
    for candidate in found {
        if kept
            .iter()
            .all(|k| candidate.2 <= k.1 || candidate.1 >= k.2)
        {
            kept.push(candidate);
        }
    }
    kept.sort_by_key(|k| k.1);
    // Byte offsets to characters, counting each stretch of the text once.
    let (mut bytes, mut chars) = (0, 0);
    let mut to_chars = |offset: usize| {
        chars += text[bytes..offset].chars().count();
        bytes = offset;
        chars
    };
    kept.into_iter()
        .map(|(kind, start, end, score)| Finding {
            kind,
            start: to_chars(start),
            end: to_chars(end),
            score,
            text: text[start..end].to_owned(),
        })
        .collect()
}

/// `text` with each of `findings` (from [`analyze`] on the same text) replaced as
/// `operators` says for its type (`Replace` for a type it does not name), and where
/// each replacement stands in the result.
pub fn anonymize(
    text: &str,
    findings: &[Finding],
    operators: &BTreeMap<PiiType, Operator>,
) -> (String, Vec<Replaced>) {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut out_chars = 0;
    let mut replaced = Vec::with_capacity(findings.len());
    let mut at = 0;
    for finding in findings {
        if finding.start < at || finding.end > chars.len() || finding.start > finding.end {
            continue;
        }
        let before: String = chars[at..finding.start].iter().collect();
        out_chars += finding.start - at;
        out.push_str(&before);
        let operator = operators
            .get(&finding.kind)
            .copied()
            .unwrap_or(Operator::Replace);
        let original: String = chars[finding.start..finding.end].iter().collect();
        let instead = match operator {
            Operator::Replace => format!("<{}>", finding.kind.name()),
            Operator::Redact => String::new(),
            Operator::Hash => Sha256::digest(original.as_bytes())
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
        };
        let length = instead.chars().count();
        replaced.push(Replaced {
            kind: finding.kind,
            start: out_chars,
            end: out_chars + length,
            operator,
            text: instead.clone(),
        });
        out.push_str(&instead);
        out_chars += length;
        at = finding.end;
    }
    out.extend(&chars[at..]);
    (out, replaced)
}

// --- recognizers: each returns byte spans with a score ------------------------------

type Spans = Vec<(usize, usize, f64)>;

#[expect(
    clippy::expect_used,
    reason = "the patterns are constants of this file, each compiled by the tests"
)]
fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a recognizer's pattern compiles")
}

/// Whether the characters around `start..end` are not letters or digits, so a match
/// is a whole token (the `regex` crate has no look-around).
fn stands_alone(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
}

fn emails(text: &str) -> Spans {
    static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
        regex(
            r"[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,63})@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}",
        )
    });
    EMAIL
        .find_iter(text)
        .filter(|m| stands_alone(text, m.start(), m.end()))
        .map(|m| (m.start(), m.end(), 1.0))
        .collect()
}

fn phones(text: &str) -> Spans {
    static PHONE: LazyLock<Regex> = LazyLock::new(|| {
        regex(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,5}(?:[ .-]\d{1,8}){1,5}|\+\d{7,15}")
    });
    use phonenumber::country::Id;
    const NATIONAL: [Id; 5] = [Id::GB, Id::DE, Id::FR, Id::IN, Id::AU];
    PHONE
        .find_iter(text)
        .filter(|m| stands_alone(text, m.start(), m.end()))
        .filter_map(|m| {
            let candidate = m.as_str();
            let digits = candidate.chars().filter(char::is_ascii_digit).count();
            // Dates and times (2024-01-15, 12.05.2024, 10:30) are not numbers to call.
            if !(7..=15).contains(&digits) || looks_like_date(candidate) {
                return None;
            }
            let valid_in = |region| {
                phonenumber::parse(region, candidate).is_ok_and(|n| phonenumber::is_valid(&n))
            };
            let first = candidate.trim_start_matches('(').chars().next();
            let valid = if candidate.starts_with('+') {
                valid_in(None)
            } else if first == Some('0') {
                // Written nationally with its trunk prefix, as Europe, India and
                // Australia write numbers.
                NATIONAL.iter().any(|&region| valid_in(Some(region)))
            } else {
                // Without a prefix only a North American number is recognisable; any
                // shorter run of digits is valid somewhere (an SSN is a French mobile).
                digits == 10 && valid_in(Some(Id::US))
            };
            let score = if candidate.starts_with('+') {
                0.9
            } else {
                0.75
            };
            valid.then_some((m.start(), m.end(), score))
        })
        .collect()
}

/// `2024-01-15`, `15.01.2024`, `01/15/2024`: a year of four digits among two others.
fn looks_like_date(candidate: &str) -> bool {
    static DATE: LazyLock<Regex> = LazyLock::new(|| {
        regex(
            r"^(?:(?:19|20)\d\d[-./ ]\d{1,2}[-./ ]\d{1,2}|\d{1,2}[-./ ]\d{1,2}[-./ ](?:19|20)\d\d)$",
        )
    });
    DATE.is_match(candidate)
}

fn cards(text: &str) -> Spans {
    static CARD: LazyLock<Regex> = LazyLock::new(|| regex(r"\d(?:[ -]?\d){12,18}"));
    CARD.find_iter(text)
        .filter(|m| stands_alone(text, m.start(), m.end()))
        .filter_map(|m| {
            let digits: Vec<u32> = m.as_str().chars().filter_map(|c| c.to_digit(10)).collect();
            (card_network(&digits) && luhn(&digits)).then_some((m.start(), m.end(), 1.0))
        })
        .collect()
}

/// The Luhn checksum every payment card number carries in its last digit.
fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, d * 2) {
            (0, _) => d,
            (_, doubled) if doubled > 9 => doubled - 9,
            (_, doubled) => doubled,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether the number starts and is as long as a network's cards: Visa, Mastercard,
/// American Express, Discover, JCB, Diners Club, UnionPay, Maestro.
fn card_network(digits: &[u32]) -> bool {
    let prefix = |n: usize| digits.iter().take(n).fold(0, |acc, d| acc * 10 + d);
    let length = digits.len();
    match digits.first() {
        Some(4) => matches!(length, 13 | 16 | 19),
        Some(5) => (51..=55).contains(&prefix(2)) && length == 16 || prefix(2) == 50,
        Some(2) => (2221..=2720).contains(&prefix(4)) && length == 16,
        Some(3) => {
            matches!(prefix(2), 34 | 37) && length == 15
                || (3528..=3589).contains(&prefix(4)) && (16..=19).contains(&length)
                || matches!(prefix(2), 36 | 38 | 39) && (14..=19).contains(&length)
                || (300..=305).contains(&prefix(3)) && (14..=19).contains(&length)
        }
        Some(6) => {
            prefix(4) == 6011
                || prefix(2) == 65
                || (644..=649).contains(&prefix(3))
                || prefix(2) == 62
                || matches!(prefix(2), 63 | 67)
        }
        _ => false,
    }
}

fn ibans(text: &str) -> Spans {
    static IBAN: LazyLock<Regex> =
        LazyLock::new(|| regex(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?"));
    IBAN.find_iter(text)
        .filter(|m| stands_alone(text, m.start(), m.end()))
        .filter_map(|m| {
            let compact: String = m.as_str().chars().filter(|c| *c != ' ').collect();
            compact
                .parse::<iban::Iban>()
                .is_ok()
                .then_some((m.start(), m.end(), 1.0))
        })
        .collect()
}

fn ip_addresses(text: &str) -> Spans {
    static V4: LazyLock<Regex> = LazyLock::new(|| regex(r"\d{1,3}(?:\.\d{1,3}){3}"));
    static V6: LazyLock<Regex> =
        LazyLock::new(|| regex(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%[0-9A-Za-z]+)?"));
    static VERSION: LazyLock<Regex> = LazyLock::new(|| regex(r"(?i)(?:\bv|version\s*)$"));
    let v4 = V4
        .find_iter(text)
        .filter(|m| {
            stands_alone(text, m.start(), m.end())
                && !continues_dotted(&text[m.end()..])
                && !VERSION.is_match(&text[..m.start()])
                && m.as_str().parse::<IpAddr>().is_ok()
        })
        .map(|m| (m.start(), m.end(), 0.8));
    let v6 = V6
        .find_iter(text)
        .filter(|m| {
            let address = m.as_str().split('%').next().unwrap_or_default();
            // Two groups at least, not a time (10:30:00 is no address anyway).
            address.matches(':').count() >= 2
                && address.chars().any(|c| c.is_ascii_hexdigit())
                && stands_alone(text, m.start(), m.end())
                && address.parse::<IpAddr>().is_ok()
        })
        .map(|m| (m.start(), m.end(), 0.9));
    v4.chain(v6).collect()
}

/// Whether the text after a dotted quad goes on with `.` and a digit (`1.2.3.4.5`).
fn continues_dotted(rest: &str) -> bool {
    rest.strip_prefix('.')
        .is_some_and(|after| after.starts_with(|c: char| c.is_ascii_digit()))
}

fn ssns(text: &str) -> Spans {
    static SSN: LazyLock<Regex> = LazyLock::new(|| regex(r"(\d{3})([- ])(\d{2})([- ])(\d{4})"));
    SSN.captures_iter(text)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let (area, group, serial) = (&c[1], &c[3], &c[5]);
            let issued = area != "000"
                && area != "666"
                && !area.starts_with('9')
                && group != "00"
                && serial != "0000";
            (issued && c[2] == c[4] && stands_alone(text, whole.start(), whole.end())).then_some((
                whole.start(),
                whole.end(),
                0.85,
            ))
        })
        .collect()
}

fn secrets(text: &str) -> Spans {
    static SECRET: LazyLock<Regex> = LazyLock::new(|| {
        regex(concat!(
            r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z]+ )?PRIVATE KEY-----",
            r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
            r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b",
            r"|\bgithub_pat_[A-Za-z0-9_]{60,}\b",
            r"|\bxox[abprs]-[A-Za-z0-9-]{10,}\b",
            r"|\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b",
            r"|\bAIza[0-9A-Za-z_-]{35}\b",
            r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b",
            r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b",
        ))
    });
    SECRET
        .find_iter(text)
        .map(|m| (m.start(), m.end(), 1.0))
        .collect()
}
