//! Idempotency keys of create and run requests (AIP-155): the same `request_id` returns the
//! first result; reusing it for a different request is an error.

use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait};
use sha2::{Digest, Sha256};

use super::models::request_id::{ActiveModel, Entity};
use super::{Store, WriteTxn};
use crate::domain::time::now_micros;
use crate::error::{Error, Result};

/// An idempotency key to record with a create.
pub struct RequestKey<'a> {
    pub method: &'a str,
    pub request_id: &'a str,
    pub hash: &'a str,
}

impl<'a> RequestKey<'a> {
    /// The key of a create request, or None when the request has no request id.
    pub fn given(method: &'a str, request_id: &'a str, hash: &'a str) -> Option<Self> {
        (!request_id.is_empty()).then_some(RequestKey {
            method,
            request_id,
            hash,
        })
    }
}

/// What [`create_once`] did: made the resource now, or found the one a request with the same id
/// made before (its resource name).
pub enum Outcome<T> {
    Created(T),
    Existing(String),
}

/// Runs an idempotent create (AIP-155) in one write transaction: a request id already used
/// answers with what it produced; otherwise `create` writes the resource and returns it with
/// its resource name, which is recorded under the request id in the same transaction. When the
/// transaction fails and a concurrent request with the same id won (on PostgreSQL this one then
/// fails on the unique index), the winner's result is the answer to both.
pub async fn create_once<T>(
    store: &Store,
    env: &str,
    request: Option<&RequestKey<'_>>,
    create: impl AsyncFnOnce(&WriteTxn) -> Result<(T, String)>,
) -> Result<Outcome<T>> {
    let attempt = async {
        let txn = store.writer().begin().await?;
        if let Some(key) = request
            && let Some(existing) = lookup(&txn, env, key.method, key.request_id, key.hash).await?
        {
            // A retry changes nothing: no audit event either.
            txn.commit_unchanged().await?;
            return Ok(Outcome::Existing(existing));
        }
        let (created, name) = create(&txn).await?;
        crate::audit::scope::created(&name);
        if let Some(key) = request {
            record(&txn, env, key.method, key.request_id, key.hash, &name).await?;
        }
        txn.commit().await?;
        Ok(Outcome::Created(created))
    };
    match attempt.await {
        Ok(outcome) => Ok(outcome),
        Err(failure) => first_result_or(failure, store.primary(), env, request)
            .await
            .map(Outcome::Existing),
    }
}

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
async fn lookup(
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

/// Records what a request id produced, inside the transaction that creates the resource.
async fn record(
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
async fn first_result_or(
    failure: Error,
    db: &impl ConnectionTrait,
    env: &str,
    key: Option<&RequestKey<'_>>,
) -> Result<String> {
    if let Some(key) = key
        && let Some(existing) = lookup(db, env, key.method, key.request_id, key.hash).await?
    {
        return Ok(existing);
    }
    Err(failure)
}
