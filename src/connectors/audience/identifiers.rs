//! Identifiers as each audience vendor receives them: pure functions from a member's mapped
//! values to what goes on the wire (normalised, then SHA-256 hex where the vendor wants it), so
//! that runs and a later `PreviewExport` share one code path. A value the vendor's own
//! normalisation could not make valid is refused here, before the vendor sees it
//! (`INVALID_IDENTIFIER`, with the reason); whitespace or case that normalisation removes is
//! not a fault.
//!
//! References followed:
//! - Meta: Marketing API "Custom Audiences — hashing and normalization" and the business SDK's
//!   `CustomAudience.format_params` / `normalize_key` (facebook-python-business-sdk): trim
//!   ` \t\r\n\0\x0B.` at both ends and lower-case every value, then PHONE and DOBY digits only,
//!   FN/LN/CT/ST letters only, GEN the first letter, ZIP before `-`, COUNTRY two letters;
//!   SHA-256 hex of the result; EXTERN_ID unhashed.
//! - Google: Data Manager API "Format user data": email lower-cased with all whitespace
//!   removed, and for gmail.com / googlemail.com the dots and any `+suffix` of the local part
//!   removed; phone numbers in E.164 (`+`, country code, digits only); SHA-256, hex-encoded.
//! - LinkedIn: Marketing API "DMP segment users": `SHA256_EMAIL`, the SHA-256 hex of the
//!   trimmed, lower-cased email.
//! - Mailchimp: Marketing API "Lists/Audiences members": the plain email address; a member's
//!   `subscriber_hash` is the MD5 hex of the lower-cased address.

use sha2::{Digest, Sha256};

/// Rejection code of a member without any value for the identifiers the target matches on.
pub const NO_IDENTIFIER: &str = "NO_IDENTIFIER";
/// Rejection code of a member whose identifier cannot be valid after normalisation.
pub const INVALID_IDENTIFIER: &str = "INVALID_IDENTIFIER";

/// Lower-case hex SHA-256 of the UTF-8 bytes.
pub fn sha256_hex(value: &str) -> String {
    // Every identifier of a 100,000-member run is hashed: written from a table straight into
    // one buffer (`hex::encode` goes through a char iterator).
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(value.as_bytes());
    let mut out = [0u8; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(digest) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    String::from_utf8(out.to_vec()).expect("hex digits are ASCII")
}

/// Mailchimp's `subscriber_hash`: MD5 hex of the lower-cased address.
pub fn subscriber_hash(email: &str) -> String {
    format!("{:x}", md5::compute(email.trim().to_lowercase().as_bytes()))
}

/// Whether a normalised address can be one: `local@domain.tld`, one `@`, no whitespace or
/// control characters, a domain of dot-separated non-empty labels.
fn well_formed_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let labels: Vec<&str> = domain.split('.').collect();
    !local.is_empty()
        && local.len() <= 64
        && email.len() <= 254
        && !domain.contains('@')
        && labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn invalid_email(raw: &str) -> String {
    format!(
        "'{}' is not an email address",
        super::super::truncate_bytes(raw.trim(), 200)
    )
}

/// Mailchimp and LinkedIn: the trimmed address (Mailchimp keeps its case; LinkedIn hashes it
/// lower-cased).
pub fn plain_email(raw: &str) -> Result<String, String> {
    let email = raw.trim();
    if well_formed_email(&email.to_lowercase()) {
        Ok(email.to_string())
    } else {
        Err(invalid_email(raw))
    }
}

/// LinkedIn `SHA256_EMAIL`: SHA-256 hex of the trimmed, lower-cased address.
pub fn linkedin_email(raw: &str) -> Result<String, String> {
    plain_email(raw).map(|email| sha256_hex(&email.to_lowercase()))
}

/// Google's normalised address: all whitespace removed, lower-cased, and for gmail.com and
/// googlemail.com the dots and a `+suffix` of the local part removed.
pub fn google_email_normalised(raw: &str) -> Result<String, String> {
    let email: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    if !well_formed_email(&email) {
        return Err(invalid_email(raw));
    }
    let (local, domain) = email.split_once('@').expect("checked above");
    if domain == "gmail.com" || domain == "googlemail.com" {
        let local = local.split('+').next().unwrap_or_default().replace('.', "");
        if local.is_empty() {
            return Err(invalid_email(raw));
        }
        return Ok(format!("{local}@{domain}"));
    }
    Ok(email)
}

/// Google `emailAddress`: SHA-256 hex of the normalised address.
pub fn google_email(raw: &str) -> Result<String, String> {
    google_email_normalised(raw).map(|email| sha256_hex(&email))
}

/// The digits of a phone number written with the usual separators (spaces, `-`, `.`, `()`, `/`),
/// whether it started with `+` or `00` (an international prefix), or why it is no number.
fn phone_digits(raw: &str) -> Result<(bool, String), String> {
    let trimmed = raw.trim();
    let reason = || {
        format!(
            "'{}' is not a phone number in international form (+ and country code)",
            super::super::truncate_bytes(trimmed, 100)
        )
    };
    let (plus, rest) = match trimmed.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    if !rest
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')' | '/'))
    {
        return Err(reason());
    }
    let mut digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    let international = plus || digits.starts_with("00");
    if !plus && digits.starts_with("00") {
        digits.drain(..2);
    }
    // E.164: at most 15 digits; fewer than 8 cannot carry a country code and a number.
    if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
        return Err(reason());
    }
    Ok((international, digits))
}

/// Google `phoneNumber`: the E.164 form (`+` and digits) — a number without `+`/`00` has no
/// country code and is refused — then SHA-256 hex.
pub fn google_phone_normalised(raw: &str) -> Result<String, String> {
    match phone_digits(raw)? {
        (true, digits) => Ok(format!("+{digits}")),
        (false, _) => Err(format!(
            "'{}' has no country code (E.164 needs + and the country code)",
            super::super::truncate_bytes(raw.trim(), 100)
        )),
    }
}

pub fn google_phone(raw: &str) -> Result<String, String> {
    google_phone_normalised(raw).map(|phone| sha256_hex(&phone))
}

/// The multi-key schema entries of Meta's custom audiences, in CONNECTORS.md's order, with the
/// mapped target field that fills each.
pub const META_KEYS: &[(&str, &str)] = &[
    ("email", "EMAIL"),
    ("phone", "PHONE"),
    ("first_name", "FN"),
    ("last_name", "LN"),
    ("city", "CT"),
    ("state", "ST"),
    ("zip", "ZIP"),
    ("country", "COUNTRY"),
    ("gender", "GEN"),
    ("birth_year", "DOBY"),
    ("external_id", "EXTERN_ID"),
];

/// Meta's normalisation of one value for schema key `key` (before hashing): `None` when
/// nothing is left of it.
pub fn meta_normalised(key: &str, raw: &str) -> Result<Option<String>, String> {
    if key == "EXTERN_ID" {
        // Sent as it is (not hashed, not changed).
        return Ok(Some(raw.to_string()).filter(|v| !v.trim().is_empty()));
    }
    let value = raw
        .trim_matches(|c: char| matches!(c, ' ' | '\t' | '\r' | '\n' | '\0' | '\x0B' | '.'))
        .to_lowercase();
    let letters = |v: &str| v.chars().filter(|c| c.is_ascii_alphabetic()).collect::<String>();
    let normalised = match key {
        "EMAIL" => {
            if value.is_empty() {
                String::new()
            } else if well_formed_email(&value) {
                value
            } else {
                return Err(invalid_email(raw));
            }
        }
        "PHONE" => {
            if value.is_empty() {
                String::new()
            } else {
                // Meta wants digits only, with the country code and without `+`.
                phone_digits(&value)?.1
            }
        }
        "FN" | "LN" | "CT" | "ST" => letters(&value),
        "GEN" => value.chars().next().map(String::from).unwrap_or_default(),
        "DOBY" => value.chars().filter(char::is_ascii_digit).collect(),
        "ZIP" => value.split('-').next().unwrap_or_default().trim().to_string(),
        "COUNTRY" => letters(&value).chars().take(2).collect(),
        _ => value,
    };
    Ok(Some(normalised).filter(|v| !v.is_empty()))
}

/// What Meta receives for one value: SHA-256 hex of the normalised value (EXTERN_ID as it is).
pub fn meta_value(key: &str, raw: &str) -> Result<Option<String>, String> {
    Ok(meta_normalised(key, raw)?.map(|v| if key == "EXTERN_ID" { v } else { sha256_hex(&v) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_formats_emails_as_its_guide_shows() {
        // Data Manager API "Format user data" and its quickstart's sample rows.
        assert_eq!(
            google_email_normalised("cloudy.sanfrancisco+shopping@gmail.com").unwrap(),
            "cloudysanfrancisco@gmail.com"
        );
        assert_eq!(
            google_email_normalised("user.name+NYC@Example.com").unwrap(),
            "user.name+nyc@example.com"
        );
        assert_eq!(
            google_email_normalised(" AlexJ@cymbalgroup.com").unwrap(),
            "alexj@cymbalgroup.com"
        );
        assert_eq!(
            google_email_normalised("baklavainthebalkans@gmail.com  ").unwrap(),
            "baklavainthebalkans@gmail.com"
        );
        assert_eq!(
            google_email_normalised("cloudySanFrancisco@GMAIL.com").unwrap(),
            "cloudysanfrancisco@gmail.com"
        );
        assert_eq!(
            google_email_normalised("a.b@googlemail.com").unwrap(),
            "ab@googlemail.com"
        );
        // The quickstart's hashed table starts member 1 (dana@example.com) with "07e…".
        let dana = google_email("dana@example.com").unwrap();
        assert!(dana.starts_with("07e"), "{dana}");
        assert_eq!(dana, "07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3");
        assert_eq!(
            google_email("DanaM@example.com").unwrap(),
            sha256_hex("danam@example.com")
        );
    }

    #[test]
    fn google_phones_are_e164_with_plus() {
        // The guide: (800)555-0100 in the US is +18005550100.
        assert_eq!(google_phone_normalised("+1 (800) 555-0100").unwrap(), "+18005550100");
        assert_eq!(google_phone_normalised("001 800 555 0100").unwrap(), "+18005550100");
        assert_eq!(
            google_phone("+1 800 555 0100").unwrap(),
            "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"
        );
        assert!(
            google_phone_normalised("(800)555-0100")
                .unwrap_err()
                .contains("country code")
        );
        assert!(google_phone_normalised("+1 800 CALL NOW").is_err());
        assert!(google_phone_normalised("+12").is_err());
    }

    #[test]
    fn meta_normalises_each_key_as_its_sdk_does() {
        assert_eq!(
            meta_normalised("EMAIL", "  Test@Example.COM ").unwrap().unwrap(),
            "test@example.com"
        );
        assert_eq!(
            meta_value("EMAIL", "  Test@Example.COM ").unwrap().unwrap(),
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
        assert_eq!(
            meta_normalised("PHONE", "+1 (800) 555-0100").unwrap().unwrap(),
            "18005550100"
        );
        assert_eq!(meta_normalised("FN", " Mary-Ann ").unwrap().unwrap(), "maryann");
        assert_eq!(meta_normalised("CT", "New York").unwrap().unwrap(), "newyork");
        assert_eq!(meta_normalised("ZIP", "94043-1351").unwrap().unwrap(), "94043");
        assert_eq!(meta_normalised("COUNTRY", "US.").unwrap().unwrap(), "us");
        assert_eq!(meta_normalised("GEN", "Female").unwrap().unwrap(), "f");
        assert_eq!(meta_normalised("DOBY", "1990").unwrap().unwrap(), "1990");
        assert_eq!(meta_value("EXTERN_ID", "Cust-42").unwrap().unwrap(), "Cust-42");
        assert_eq!(meta_value("EMAIL", "   ").unwrap(), None);
        assert!(meta_value("EMAIL", "not-an-email").is_err());
        assert!(meta_value("PHONE", "call me").is_err());
    }

    #[test]
    fn emails_with_removable_whitespace_are_not_malformed() {
        assert_eq!(plain_email("  Ann@Example.com\t").unwrap(), "Ann@Example.com");
        assert_eq!(
            linkedin_email(" Ann@Example.com ").unwrap(),
            sha256_hex("ann@example.com")
        );
        for bad in [
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "an n@example.com",
            "a@b@c.com",
        ] {
            assert!(plain_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_subscriber_hash_is_the_md5_of_the_lower_cased_address() {
        // Mailchimp's documentation: the MD5 hash of the lowercase version of the email.
        assert_eq!(
            subscriber_hash("Urist.McVankab@freddiesjokes.com"),
            "62eeb292278cc15f5817cb78f7790b08"
        );
    }
}
