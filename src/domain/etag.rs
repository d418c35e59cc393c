//! Etags (AIP-154): derived from the resource's creation time and revision, so that a
//! recreated resource never matches an etag of its predecessor.

use sha2::{Digest, Sha256};

use super::time::Micros;

pub fn etag(create_time: Micros, revision: i64) -> String {
    let digest = Sha256::digest(format!("{create_time}:{revision}"));
    format!("{revision}-{}", hex::encode(&digest[..4]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_change_with_revision_and_incarnation() {
        assert_eq!(etag(1, 1), etag(1, 1));
        assert_ne!(etag(1, 1), etag(1, 2));
        assert_ne!(etag(1, 1), etag(2, 1));
    }
}
