//! The recognizers on a labelled set written for them: real formats (test card numbers,
//! documented example IBANs and phone numbers) and the look-alikes that must be left
//! alone (failed checksums, order numbers, versions, dates, times). Prints precision
//! and recall per type, and holds every type to 0.95 of both.

use std::collections::BTreeMap;

use slough_pii::{Operator, PiiType, analyze, anonymize};

use PiiType::*;

/// Each text with the findings it holds, as (type, text found).
const LABELLED: &[(&str, &[(PiiType, &str)])] = &[
    // e-mail addresses
    (
        "Write to jane.doe@example.com today.",
        &[(EmailAddress, "jane.doe@example.com")],
    ),
    (
        "cc: first.last+tag@mail.example.co.uk, ops@corp.io",
        &[
            (EmailAddress, "first.last+tag@mail.example.co.uk"),
            (EmailAddress, "ops@corp.io"),
        ],
    ),
    (
        "The handle @example and user@localhost are not addresses.",
        &[],
    ),
    (
        "Email me: A_B-c@sub-domain.example.org",
        &[(EmailAddress, "A_B-c@sub-domain.example.org")],
    ),
    // phone numbers
    (
        "Call +1 201-555-0123 after nine.",
        &[(PhoneNumber, "+1 201-555-0123")],
    ),
    (
        "Office: (201) 555-0123, fax 201.555.0199",
        &[
            (PhoneNumber, "(201) 555-0123"),
            (PhoneNumber, "201.555.0199"),
        ],
    ),
    (
        "London desk +44 20 7946 0958",
        &[(PhoneNumber, "+44 20 7946 0958")],
    ),
    (
        "Paris: +33 1 42 68 53 00",
        &[(PhoneNumber, "+33 1 42 68 53 00")],
    ),
    ("Berlin +49 30 123456", &[(PhoneNumber, "+49 30 123456")]),
    (
        "From the UK dial 020 7946 0958.",
        &[(PhoneNumber, "020 7946 0958")],
    ),
    (
        "Released 2024-01-15 as 1.2.3; meeting at 10:30 in room 101.",
        &[],
    ),
    ("Order 12345678 shipped on 15.01.2024.", &[]),
    ("Invoice no. 2024 0001 was paid.", &[]),
    // payment cards
    (
        "Card 4111 1111 1111 1111 exp 12/29",
        &[(CreditCard, "4111 1111 1111 1111")],
    ),
    (
        "mc 5555555555554444 and amex 378282246310005",
        &[
            (CreditCard, "5555555555554444"),
            (CreditCard, "378282246310005"),
        ],
    ),
    (
        "Discover 6011-1111-1111-1117, JCB 3530111333300000",
        &[
            (CreditCard, "6011-1111-1111-1117"),
            (CreditCard, "3530111333300000"),
        ],
    ),
    ("Diners 30569309025904", &[(CreditCard, "30569309025904")]),
    (
        "Not a card: 4111 1111 1111 1112 (checksum) or 1234567812345678.",
        &[],
    ),
    ("Tracking 9400 1000 0000 0000 0000 00 is on its way.", &[]),
    // IBANs
    (
        "Pay to DE89 3704 0044 0532 0130 00 by Friday.",
        &[(IbanCode, "DE89 3704 0044 0532 0130 00")],
    ),
    (
        "IBAN GB82WEST12345698765432",
        &[(IbanCode, "GB82WEST12345698765432")],
    ),
    (
        "NL91ABNA0417164300 and FR1420041010050500013M02606",
        &[
            (IbanCode, "NL91ABNA0417164300"),
            (IbanCode, "FR1420041010050500013M02606"),
        ],
    ),
    (
        "DE89 3704 0044 0532 0130 01 fails its checksum; AB12 CDEF GHIJ is no IBAN.",
        &[],
    ),
    // IP addresses
    (
        "The host at 192.168.1.20 answers, so does 10.0.0.1.",
        &[(IpAddress, "192.168.1.20"), (IpAddress, "10.0.0.1")],
    ),
    (
        "IPv6 2001:db8::8a2e:370:7334 and loopback ::1",
        &[(IpAddress, "2001:db8::8a2e:370:7334"), (IpAddress, "::1")],
    ),
    (
        "Upgrade to version 1.2.3.4 or v2.10.3.1; 999.1.1.1 is out of range.",
        &[],
    ),
    ("The train leaves at 10:30:00, platform 1.2.3.", &[]),
    // US social security numbers
    ("SSN 536-22-1234 on file.", &[(UsSsn, "536-22-1234")]),
    ("Old form: 536 22 1234", &[(UsSsn, "536 22 1234")]),
    (
        "Never issued: 000-12-3456, 666-12-3456, 536-00-1234, 900-12-3456.",
        &[],
    ),
    ("Mixed separators 536-22 1234 are not one.", &[]),
    // secrets
    (
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        &[(Secret, "AKIAIOSFODNN7EXAMPLE")],
    ),
    (
        "token ghp_abcdefghijklmnopqrstuvwxyz0123456789AB",
        &[(Secret, "ghp_abcdefghijklmnopqrstuvwxyz0123456789AB")],
    ),
    (
        "OPENAI_API_KEY=sk-proj-abcDEF1234567890ghijKLMN",
        &[(Secret, "sk-proj-abcDEF1234567890ghijKLMN")],
    ),
    (
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        &[(
            Secret,
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        )],
    ),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----",
        &[(
            Secret,
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----",
        )],
    ),
    ("The skeleton key, sk-short and AKIA alone are fine.", &[]),
    // several at once
    (
        "Jane (jane@example.com, +1 201-555-0123) paid with 4111111111111111 from 10.0.0.7.",
        &[
            (EmailAddress, "jane@example.com"),
            (PhoneNumber, "+1 201-555-0123"),
            (CreditCard, "4111111111111111"),
            (IpAddress, "10.0.0.7"),
        ],
    ),
];

#[test]
fn recognizers_find_the_labelled_data_and_leave_look_alikes() {
    // Per type: (true positives, false positives, false negatives).
    let mut counts: BTreeMap<PiiType, (u32, u32, u32)> = BTreeMap::new();
    let mut mistakes = Vec::new();
    for (text, expected) in LABELLED {
        let found = analyze(text, &[]);
        for finding in &found {
            let chars: String = text
                .chars()
                .skip(finding.start)
                .take(finding.end - finding.start)
                .collect();
            assert_eq!(chars, finding.text, "offsets are in characters");
            let entry = counts.entry(finding.kind).or_default();
            if expected.contains(&(finding.kind, finding.text.as_str())) {
                entry.0 += 1;
            } else {
                entry.1 += 1;
                mistakes.push(format!(
                    "found {:?} {:?} in {text:?}",
                    finding.kind, finding.text
                ));
            }
        }
        for (kind, want) in *expected {
            if !found.iter().any(|f| f.kind == *kind && f.text == *want) {
                counts.entry(*kind).or_default().2 += 1;
                mistakes.push(format!("missed {kind:?} {want:?} in {text:?}"));
            }
        }
    }
    println!("type            precision  recall  (tp fp fn)");
    let mut weak = Vec::new();
    for (kind, (tp, fp, missed)) in &counts {
        let precision = f64::from(*tp) / f64::from(tp + fp).max(1.0);
        let recall = f64::from(*tp) / f64::from(tp + missed).max(1.0);
        println!(
            "{:<15} {precision:>9.3} {recall:>7.3}  ({tp} {fp} {missed})",
            kind.name()
        );
        if precision < 0.95 || recall < 0.95 {
            weak.push(kind.name());
        }
    }
    assert!(weak.is_empty(), "{weak:?} below 0.95: {mistakes:#?}");
    assert_eq!(counts.len(), PiiType::ALL.len(), "every type is labelled");
}

#[test]
fn types_narrow_the_search() {
    let text = "jane@example.com, 10.0.0.1";
    let found = analyze(text, &[IpAddress]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, IpAddress);
}

#[test]
fn anonymize_replaces_redacts_or_hashes_per_type() {
    let text = "Mail jane@example.com or call +1 201-555-0123 — ☎ ok";
    let found = analyze(text, &[]);
    let operators = BTreeMap::from([(PhoneNumber, Operator::Redact)]);
    let (masked, replaced) = anonymize(text, &found, &operators);
    assert_eq!(masked, "Mail <EMAIL_ADDRESS> or call  — ☎ ok");
    assert_eq!(replaced[0].text, "<EMAIL_ADDRESS>");
    let at: String = masked
        .chars()
        .skip(replaced[0].start)
        .take(replaced[0].end - replaced[0].start)
        .collect();
    assert_eq!(at, "<EMAIL_ADDRESS>");

    let operators = BTreeMap::from([(EmailAddress, Operator::Hash)]);
    let (hashed, _) = anonymize(
        "a@b.io and a@b.io",
        &analyze("a@b.io and a@b.io", &[]),
        &operators,
    );
    let halves: Vec<&str> = hashed.split(" and ").collect();
    assert_eq!(halves[0], halves[1], "equal values hash equal");
    assert_eq!(halves[0].len(), 64);
}

#[test]
fn offsets_count_characters_not_bytes() {
    let text = "Grüße — schreib an jörg@example.de oder jorg@example.de";
    let found = analyze(text, &[EmailAddress]);
    let last = found.last().unwrap();
    assert_eq!(last.text, "jorg@example.de");
    assert_eq!(last.end, text.chars().count());
}
