//! AIP-158 paging: `page_size` 0 means 50, at most 1000, negative is an error; page tokens are
//! opaque, and valid only with the same other parameters (a fingerprint of them is inside).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const DEFAULT_PAGE_SIZE: i32 = 50;
pub const MAX_PAGE_SIZE: i32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: u64,
    pub limit: u64,
}

/// A digest of the parameters a page token is bound to (parent, filter, order, …).
pub fn fingerprint(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Reads `page_size` and `page_token` of a list request.
pub fn parse(page_size: i32, page_token: &str, fingerprint: &str) -> Result<Page> {
    let limit = match page_size {
        n if n < 0 => {
            return Err(Error::invalid("page_size", format!("must not be negative (got {n})")));
        }
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    } as u64;
    if page_token.is_empty() {
        return Ok(Page { offset: 0, limit });
    }
    let bad = || {
        Error::invalid(
            "page_token",
            "not a page token returned by this list with the same parameters",
        )
    };
    let raw = B64.decode(page_token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (offset, token_fingerprint) = text.split_once(':').ok_or_else(bad)?;
    if token_fingerprint != fingerprint {
        return Err(Error::invalid(
            "page_token",
            "this page token belongs to a list with other parameters (parent, filter or order_by changed)",
        ));
    }
    let offset = offset.parse::<u64>().map_err(|_| bad())?;
    Ok(Page { offset, limit })
}

/// The token of the page after `page`, or empty when `returned` items ended the list.
pub fn next_token(page: Page, returned: usize, total: u64, fingerprint: &str) -> String {
    let next = page.offset + returned as u64;
    if returned == 0 || next >= total {
        return String::new();
    }
    B64.encode(format!("{next}:{fingerprint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_cap_and_reject_negatives() {
        assert_eq!(parse(0, "", "f").unwrap().limit, 50);
        assert_eq!(parse(5000, "", "f").unwrap().limit, 1000);
        assert_eq!(parse(-1, "", "f").unwrap_err().field_violations[0].field, "page_size");
    }

    #[test]
    fn tokens_are_bound_to_their_parameters() {
        let fp = fingerprint(&["environments/a", "", "display_name"]);
        let token = next_token(Page { offset: 0, limit: 2 }, 2, 5, &fp);
        assert_eq!(parse(2, &token, &fp).unwrap().offset, 2);
        let other = fingerprint(&["environments/a", "type = \"s3\"", "display_name"]);
        assert_eq!(
            parse(2, &token, &other).unwrap_err().field_violations[0].field,
            "page_token"
        );
        assert!(parse(2, "garbage!", &fp).is_err());
        assert_eq!(next_token(Page { offset: 4, limit: 2 }, 1, 5, &fp), "");
    }
}
