//! Idempotency keys of create and run requests (AIP-155): the same `request_id` returns the
//! first result; reusing it for a different request is an error.

use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait};
use sha2::{Digest, Sha256};

use super::models::request_id::{ActiveModel, Entity};
use crate::domain::time::now_micros;
use crate::error::{Error, Result};

/// A request id as it arrives: empty = none.
pub fn check_format(request_id: &str) -> Result<()> {
    let bound = crate::domain::bounds::REQUEST_ID.max;
    if request_id.chars().count() > bound || request_id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid(
            "request_id",
            format!("at most {bound} printable characters without spaces (a UUID is best)"),
        ));
    }
    Ok(())
}

/// A digest of the request, to tell a retry from a different request with the same id.
/// `encoded_request` must be canonical: the decoded request encoded again, which gives the same
/// bytes for the same request however the client encoded it (fields in number order, unknown
/// fields dropped, and map entries in key order, since every protobuf map is a BTreeMap; see
/// build.rs).
pub fn request_hash(encoded_request: &[u8]) -> String {
    hex::encode(Sha256::digest(encoded_request))
}

/// What a request id already produced, if anything.
pub async fn lookup(
    db: &impl ConnectionTrait,
    env: &str,
    method: &str,
    request_id: &str,
    hash: &str,
) -> Result<Option<String>> {
    let found = Entity::find_by_id((env.to_string(), method.to_string(), request_id.to_string()))
        .one(db)
        .await?;
    match found {
        None => Ok(None),
        Some(row) if row.request_hash == hash => Ok(Some(row.resource_name)),
        Some(_) => Err(Error::invalid(
            "request_id",
            format!("request id '{request_id}' was already used for a different {method} request"),
        )),
    }
}

/// Records what a request id produced; call inside the transaction that creates the resource.
pub async fn record(
    db: &impl ConnectionTrait,
    env: &str,
    method: &str,
    request_id: &str,
    hash: &str,
    resource_name: &str,
) -> Result<()> {
    let row = ActiveModel {
        env: Set(env.to_string()),
        method: Set(method.to_string()),
        request_id: Set(request_id.to_string()),
        request_hash: Set(hash.to_string()),
        resource_name: Set(resource_name.to_string()),
        create_time: Set(now_micros()),
    };
    Entity::insert(row).exec(db).await?;
    Ok(())
}

/// After a create with a request id failed: on PostgreSQL a concurrent request with the same id
/// may have won (this one then fails on a unique index); its result is the answer to both.
/// Otherwise the failure stands.
pub async fn first_result_or(
    failure: Error,
    db: &impl ConnectionTrait,
    env: &str,
    key: Option<&super::connections::RequestKey<'_>>,
) -> Result<String> {
    if let Some(key) = key
        && let Some(existing) = lookup(db, env, key.method, key.request_id, key.hash).await?
    {
        return Ok(existing);
    }
    Err(failure)
}
