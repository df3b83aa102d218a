//! One recognizer per [`Kind`]: a pattern that finds candidates, then a check that each is what
//! it looks like (a checksum, a number plan, a token's structure) and stands on its own (not the
//! middle of a longer number or word). Digits may be ASCII or full-width (U+FF10–U+FF19).

use std::ops::Range;
use std::sync::LazyLock;

use base64::Engine;
use regex::Regex;

use super::Kind;

/// A digit, ASCII or full-width, in a pattern.
const D: &str = r"[0-9\x{FF10}-\x{FF19}]";

fn pattern(text: &str) -> Regex {
    Regex::new(&text.replace("{D}", D)).expect("the recognizers' patterns are valid")
}

static PRIVATE_KEY: LazyLock<Regex> = LazyLock::new(|| {
    pattern(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
    )
});
static JWT: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}"));
static CLOUD_KEY: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}|AIza[0-9A-Za-z_\-]{35}"));
static API_KEY: LazyLock<Regex> = LazyLock::new(|| {
    pattern(concat!(
        r"sk-ant-[a-z]+[0-9]{2}-[A-Za-z0-9_\-]{20,}",
        r"|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
        r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}",
        r"|glpat-[A-Za-z0-9_\-]{20,}",
        r"|xox[abposr]-[A-Za-z0-9\-]{10,}",
        r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}",
        r"|hf_[A-Za-z0-9]{30,}",
    ))
});
static BEARER: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"(?i:bearer)[ \t]+([A-Za-z0-9\-._~+/]{16,}=*)"));
static CARD: LazyLock<Regex> = LazyLock::new(|| pattern(r"{D}(?:[ \-]?{D}){12,18}"));
static IBAN: LazyLock<Regex> = LazyLock::new(|| pattern(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}"));
static SSN: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"{D}{3}-{D}{2}-{D}{4}|{D}{3} {D}{2} {D}{4}"));
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    pattern(concat!(
        // International: `+`, then digits with at most one separator between two of them.
        r"\+{D}(?:(?:[ .\-]|\) ?| ?\()?{D}){6,14}",
        // North American national: (415) 555-0100, 415-555-0100, 415.555.0100.
        r"|(?:\({D}{3}\) ?|{D}{3}[ .\-]){D}{3}[ .\-]{D}{4}",
        // Other national forms: a trunk 0, then groups with separators (020 7946 0958).
        r"|0{D}{1,4}(?:[ .\-/]{D}{2,8}){1,4}",
    ))
});
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    pattern(
        r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}",
    )
});
static IPV4: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"));
static IPV6: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}"));

/// The validated matches of `kind` in `text`, in order.
pub fn matches(kind: Kind, text: &str) -> Vec<Range<usize>> {
    let all = |re: &Regex| re.find_iter(text).map(|m| m.range()).collect::<Vec<_>>();
    let alone = |r: &Range<usize>, word: fn(char) -> bool| standalone(text, r, word);
    match kind {
        Kind::PrivateKey => all(&PRIVATE_KEY),
        Kind::Jwt => keep(all(&JWT), |r| {
            alone(r, is_token_char) && jwt_header(&text[r.clone()])
        }),
        Kind::CloudKey => keep(all(&CLOUD_KEY), |r| alone(r, is_token_char)),
        Kind::ApiKey => keep(all(&API_KEY), |r| {
            alone(r, is_token_char) && mixes_letters_and_digits(&text[r.clone()])
        }),
        Kind::BearerToken => BEARER
            .captures_iter(text)
            .filter_map(|c| c.get(1).map(|m| m.range()))
            .filter(|r| alone(r, is_token_char) && mixes_letters_and_digits(&text[r.clone()]))
            .collect(),
        Kind::Card => keep(all(&CARD), |r| alone(r, is_word) && card(&text[r.clone()])),
        Kind::Iban => all(&IBAN)
            .into_iter()
            .filter_map(|r| iban_range(text, r))
            .filter(|r| alone(r, is_word) && iban(&text[r.clone()]))
            .collect(),
        Kind::Ssn => keep(all(&SSN), |r| alone(r, is_word) && ssn(&text[r.clone()])),
        Kind::Phone => keep(all(&PHONE), |r| {
            alone(r, is_word) && phone(&text[r.clone()])
        }),
        Kind::Email => keep(all(&EMAIL), |r| {
            email_alone(text, r) && email(&text[r.clone()])
        }),
        Kind::Ip => {
            let v4 = keep(all(&IPV4), |r| {
                alone(r, is_word)
                    && !dotted_on(text, r)
                    && text[r.clone()].parse::<std::net::Ipv4Addr>().is_ok()
            });
            let v6 = keep(all(&IPV6), |r| {
                alone(r, is_hex_word) && text[r.clone()].parse::<std::net::Ipv6Addr>().is_ok()
            });
            let mut both = [v4, v6].concat();
            both.sort_by_key(|r| r.start);
            both
        }
    }
}

fn keep(ranges: Vec<Range<usize>>, check: impl Fn(&Range<usize>) -> bool) -> Vec<Range<usize>> {
    ranges.into_iter().filter(|r| check(r)).collect()
}

/// Neither the character before `range` nor the one after continues it (`word` tells which
/// characters would).
fn standalone(text: &str, range: &Range<usize>, word: fn(char) -> bool) -> bool {
    let before = text[..range.start].chars().next_back();
    let after = text[range.end..].chars().next();
    !before.is_some_and(word) && !after.is_some_and(word)
}

/// A digit's value, ASCII or full-width.
fn digit(c: char) -> Option<u32> {
    match c {
        '0'..='9' => Some(c as u32 - '0' as u32),
        '\u{FF10}'..='\u{FF19}' => Some(c as u32 - 0xFF10),
        _ => None,
    }
}

fn digits(text: &str) -> Vec<u32> {
    text.chars().filter_map(digit).collect()
}

/// Letters and digits next to which a number or code is not standalone (ideographs and other
/// scripts are, so text without spaces between words still has its matches).
fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || digit(c).is_some()
}

/// Characters that would make a key or token part of a longer one (`=`, quotes and
/// punctuation around it do not: `KEY=sk-…`, `"eyJ…"`).
fn is_token_char(c: char) -> bool {
    is_word(c) || c == '-'
}

fn is_hex_word(c: char) -> bool {
    is_word(c) || c == ':'
}

fn is_email_char(c: char) -> bool {
    is_word(c) || matches!(c, '.' | '%' | '+' | '-' | '@')
}

/// An address not inside a longer one: a full stop or dash after it continues it only when
/// a letter or digit follows (`mail bo@example.org.` ends a sentence).
fn email_alone(text: &str, range: &Range<usize>) -> bool {
    let before = text[..range.start].chars().next_back();
    let mut after = text[range.end..].chars();
    let continues = match after.next() {
        Some('.' | '-') => after.next().is_some_and(is_word),
        Some(c) => is_email_char(c),
        None => false,
    };
    !before.is_some_and(is_email_char) && !continues
}

/// An IPv4-looking run that is part of a longer dotted number (`1.2.3.4.5`, a version).
fn dotted_on(text: &str, range: &Range<usize>) -> bool {
    let before = text[..range.start].strip_suffix('.');
    let after = text[range.end..].strip_prefix('.');
    before.is_some_and(|b| b.ends_with(|c: char| c.is_ascii_digit()))
        || after.is_some_and(|a| a.starts_with(|c: char| c.is_ascii_digit()))
}

fn mixes_letters_and_digits(token: &str) -> bool {
    token.chars().any(|c| c.is_ascii_digit()) && token.chars().any(|c| c.is_ascii_alphabetic())
}

/// A JWT's first part decodes to a JSON object with an `alg`.
fn jwt_header(token: &str) -> bool {
    let header = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|h| h.get("alg").is_some())
}

/// Luhn-valid, 13–19 digits, one kind of separator at most, and a card network's prefix.
fn card(text: &str) -> bool {
    let d = digits(text);
    let separators = text.contains(' ') as u8 + text.contains('-') as u8;
    (13..=19).contains(&d.len()) && separators <= 1 && luhn(&d) && network_prefix(&d)
}

fn luhn(d: &[u32]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| match (i % 2, x * 2) {
            (0, _) => x,
            (_, y) if y > 9 => y - 9,
            (_, y) => y,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The issuer prefixes of Visa, Mastercard, American Express, Discover, JCB, Diners Club,
/// UnionPay and Maestro.
fn network_prefix(d: &[u32]) -> bool {
    let prefix = |n: usize| d[..n].iter().fold(0, |acc, &x| acc * 10 + x);
    match d[0] {
        4 => true,
        5 => (50..=58).contains(&prefix(2)),
        2 => (2221..=2720).contains(&prefix(4)),
        3 => {
            let two = prefix(2);
            matches!(two, 34 | 37 | 36 | 38 | 39)
                || (300..=305).contains(&prefix(3))
                || (3528..=3589).contains(&prefix(4))
        }
        6 => true,
        _ => false,
    }
}

/// The part of a candidate that is as long as its country's IBANs (the pattern may have run on
/// into the next word: `DE89 3704 0044 0532 0130 00 FOR`).
fn iban_range(text: &str, candidate: Range<usize>) -> Option<Range<usize>> {
    let found = &text[candidate.clone()];
    let length = iban_length(&found[..2])?;
    let mut seen = 0;
    for (i, c) in found.char_indices() {
        if c != ' ' {
            seen += 1;
        }
        if seen == length {
            return Some(candidate.start..candidate.start + i + c.len_utf8());
        }
    }
    None
}

/// The country's IBAN length and the mod-97 check (ISO 13616).
fn iban(text: &str) -> bool {
    let compact: String = text.chars().filter(|c| *c != ' ').collect();
    let Some(length) = iban_length(&compact[..2]) else {
        return false;
    };
    if compact.len() != length {
        return false;
    }
    let rearranged = compact[4..].chars().chain(compact[..4].chars());
    let mut remainder = 0u32;
    for c in rearranged {
        let value = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// IBAN lengths by country (SWIFT's IBAN registry).
fn iban_length(country: &str) -> Option<usize> {
    const LENGTHS: &[(&str, usize)] = &[
        ("AD", 24),
        ("AE", 23),
        ("AL", 28),
        ("AT", 20),
        ("AZ", 28),
        ("BA", 20),
        ("BE", 16),
        ("BG", 22),
        ("BH", 22),
        ("BR", 29),
        ("BY", 28),
        ("CH", 21),
        ("CR", 22),
        ("CY", 28),
        ("CZ", 24),
        ("DE", 22),
        ("DK", 18),
        ("DO", 28),
        ("EE", 20),
        ("EG", 29),
        ("ES", 24),
        ("FI", 18),
        ("FO", 18),
        ("FR", 27),
        ("GB", 22),
        ("GE", 22),
        ("GI", 23),
        ("GL", 18),
        ("GR", 27),
        ("GT", 28),
        ("HR", 21),
        ("HU", 28),
        ("IE", 22),
        ("IL", 23),
        ("IQ", 23),
        ("IS", 26),
        ("IT", 27),
        ("JO", 30),
        ("KW", 30),
        ("KZ", 20),
        ("LB", 28),
        ("LC", 32),
        ("LI", 21),
        ("LT", 20),
        ("LU", 20),
        ("LV", 21),
        ("MC", 27),
        ("MD", 24),
        ("ME", 22),
        ("MK", 19),
        ("MR", 27),
        ("MT", 31),
        ("MU", 30),
        ("NL", 18),
        ("NO", 15),
        ("PK", 24),
        ("PL", 28),
        ("PS", 29),
        ("PT", 25),
        ("QA", 29),
        ("RO", 24),
        ("RS", 22),
        ("SA", 24),
        ("SC", 31),
        ("SE", 24),
        ("SI", 19),
        ("SK", 24),
        ("SM", 27),
        ("ST", 25),
        ("SV", 28),
        ("TL", 23),
        ("TN", 24),
        ("TR", 26),
        ("UA", 29),
        ("VA", 22),
        ("VG", 24),
        ("XK", 20),
    ];
    LENGTHS.iter().find(|(c, _)| *c == country).map(|(_, n)| *n)
}

/// An SSN in an issued range: area not 000, 666 or 9xx; group not 00; serial not 0000.
fn ssn(text: &str) -> bool {
    let d = digits(text);
    let number = |r: Range<usize>| d[r].iter().fold(0, |acc, &x| acc * 10 + x);
    let (area, group, serial) = (number(0..3), number(3..5), number(5..9));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// 8–15 digits for an international number (E.164), 9–12 for a national one; a date
/// (`01.02.2024`) has too few.
fn phone(text: &str) -> bool {
    let n = digits(text).len();
    if text.starts_with('+') {
        (8..=15).contains(&n) && digit(text.chars().nth(1).unwrap_or('0')) != Some(0)
    } else {
        (9..=12).contains(&n)
    }
}

/// A local part without empty dot-separated pieces.
fn email(text: &str) -> bool {
    let local = text.split('@').next().unwrap_or_default();
    !local.contains("..") && !local.ends_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(kind: Kind, text: &str) -> Vec<&str> {
        matches(kind, text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn cards_need_luhn_a_network_prefix_and_a_standalone_number() {
        for good in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5555 5555 5555 4444",
            "2223 0031 2200 3222",
            "3782 822463 10005",
            "6011111111111117",
            "3530111333300000",
            "４１１１ １１１１ １１１１ １１１１",
        ] {
            assert_eq!(found(Kind::Card, &format!("pay {good}.")), [good], "{good}");
        }
        for bad in [
            "4111111111111112",     // Luhn fails
            "1234567812345670",     // Luhn holds, no network starts with 1
            "4111 1111-1111 1111",  // mixed separators
            "41111111111111111111", // 20 digits
            "x4111111111111111",    // inside a word
        ] {
            assert!(found(Kind::Card, bad).is_empty(), "{bad}");
        }
        assert_eq!(
            found(Kind::Card, "order 4111111111111111"),
            ["4111111111111111"]
        );
    }

    #[test]
    fn ibans_need_their_countrys_length_and_mod_97() {
        for good in [
            "GB82 WEST 1234 5698 7654 32",
            "GB82WEST12345698765432",
            "DE89 3704 0044 0532 0130 00",
            "FR14 2004 1010 0505 0001 3M02 606",
            "NO9386011117947",
            "DE89 3704 0044 0532 0130 00 FOR",
        ] {
            let iban = good.trim_end_matches(" FOR");
            assert_eq!(found(Kind::Iban, &format!("to {good}, thanks")), [iban]);
        }
        for bad in [
            "GB83 WEST 1234 5698 7654 32", // check digits wrong
            "DE89 3704 0044 0532 0130 0",  // one short
            "ZZ82WEST12345698765432",      // no such country
        ] {
            assert!(found(Kind::Iban, bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn ssns_in_issued_ranges_only() {
        assert_eq!(found(Kind::Ssn, "SSN: 536-22-1234"), ["536-22-1234"]);
        assert_eq!(found(Kind::Ssn, "SSN: 536 22 1234"), ["536 22 1234"]);
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "536-00-1234",
            "536-22-0000",
            "1536-22-1234",
        ] {
            assert!(found(Kind::Ssn, bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn phones_international_and_national_but_not_dates_or_versions() {
        for good in [
            "+14155550100",
            "+1 415 555 0100",
            "+1 (415) 555-0100",
            "+44 20 7946 0958",
            "+49-30-1234567",
            "(415) 555-0100",
            "415-555-0100",
            "415.555.0100",
            "020 7946 0958",
            "030 12345678",
            "+４４ ２０ ７９４６ ０９５８",
        ] {
            assert_eq!(
                found(Kind::Phone, &format!("call {good} now")),
                [good],
                "{good}"
            );
        }
        for bad in [
            "01.02.2024",
            "2024-01-15",
            "v1.2.3",
            "+0 123 456 789",
            "12345",
            "+1234",
            "1.2.3.4",
        ] {
            assert!(found(Kind::Phone, bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn emails_but_not_handles_or_paths() {
        for good in [
            "a@b.io",
            "jane.doe+news@mail.example.co.uk",
            "x_y-z@sub-domain.example.org",
        ] {
            assert_eq!(found(Kind::Email, &format!("<{good}>")), [good]);
        }
        assert_eq!(
            found(Kind::Email, "联系我jane@example.com谢谢"),
            ["jane@example.com"]
        );
        assert_eq!(
            found(
                Kind::Email,
                "Write to bo@example.org. Or to al@example.net-"
            ),
            ["bo@example.org", "al@example.net"],
            "a sentence's full stop or a dash after it ends an address"
        );
        for bad in [
            "@handle",
            "user@localhost",
            "a..b@example.com",
            "name@example.c",
            "git@github",
        ] {
            assert!(found(Kind::Email, bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn ips_but_not_versions_or_times() {
        assert_eq!(found(Kind::Ip, "from 10.0.0.1 to ::1"), ["10.0.0.1", "::1"]);
        assert_eq!(
            found(Kind::Ip, "at 2001:db8::8a2e:370:7334."),
            ["2001:db8::8a2e:370:7334"]
        );
        for bad in [
            "1.2.3.4.5",
            "version 1.2.3",
            "999.1.1.1",
            "12:30:45",
            "std::io",
            "00:1A:2B:3C:4D:5E",
        ] {
            assert!(found(Kind::Ip, bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn secrets_with_their_structure() {
        let jwt =
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(found(Kind::Jwt, &format!("t={jwt};")), [jwt]);
        assert!(found(
            Kind::Jwt,
            "eyJub3RoaW5nIjoxfQ.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVP-mB92K27"
        )
        .is_empty());
        assert_eq!(
            found(Kind::CloudKey, "id AKIAIOSFODNN7EXAMPLE"),
            ["AKIAIOSFODNN7EXAMPLE"]
        );
        assert!(found(Kind::CloudKey, "AKIAIOSFODNN7EXAMPLEX").is_empty());
        for key in [
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "xoxb-123456789012-abcdefghij",
            "hf_abcdefghijklmnopqrstuvwxyz012345",
        ] {
            assert_eq!(found(Kind::ApiKey, &format!("key: {key}")), [key], "{key}");
        }
        assert!(found(Kind::ApiKey, "sk-this-is-only-a-long-hyphenated-phrase").is_empty());
        assert_eq!(
            found(
                Kind::BearerToken,
                "Authorization: Bearer 4f9a0c2b7d1e8f3a6b5c"
            ),
            ["4f9a0c2b7d1e8f3a6b5c"]
        );
        assert!(found(Kind::BearerToken, "bearer authentication-with-words").is_empty());
    }
}
