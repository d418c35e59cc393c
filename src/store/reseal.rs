//! Key rotation (PRODUCT.md §16): `exportd secrets reseal` seals every stored connection secret
//! again with the current sealing key, after which older keys can be removed.
//!
//! Safe while servers run: each connection is rewritten only if its sealed blob is still the
//! one that was opened (compare and swap), so a concurrent `UpdateConnection` that replaced the
//! secrets (sealing them with its own current key) is never overwritten with older values. The
//! connection's revision, etag and update time stay as they are: what it holds did not change.
//! Running it again reseals nothing (every blob already carries the current key).

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::Store;
use super::models::connection::{Column, Entity};
use super::secrets::Sealed;
use crate::domain::names::ConnectionName;
use crate::error::Result;

/// Connections read per round trip.
const PAGE: u64 = 500;

/// How many attempts a connection gets whose secrets keep changing under the reseal.
const ATTEMPTS: usize = 3;

/// What a reseal did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Sealed again with the current key.
    pub resealed: usize,
    /// Already sealed with the current key (or rewritten by someone else meanwhile).
    pub current: usize,
    /// Connections whose secrets were sealed with a key that is not configured: (name, key id).
    pub unopenable: Vec<(String, String)>,
}

type SealedRow = (String, String, Option<String>, Option<String>);

impl Store {
    pub async fn reseal_secrets(&self) -> Result<ResealReport> {
        let mut report = ResealReport::default();
        let mut after: Option<(String, String)> = None;
        loop {
            let mut select = Entity::find()
                .select_only()
                .columns([Column::Env, Column::Id, Column::SealedSecrets, Column::SecretKeyId])
                .filter(Column::SealedSecrets.is_not_null())
                .order_by_asc(Column::Env)
                .order_by_asc(Column::Id)
                .limit(PAGE);
            if let Some((env, id)) = &after {
                select = select.filter(
                    Condition::any()
                        .add(Column::Env.gt(env.as_str()))
                        .add(Column::Env.eq(env.as_str()).and(Column::Id.gt(id.as_str()))),
                );
            }
            let rows: Vec<SealedRow> = select.into_tuple().all(self.primary()).await?;
            let Some((env, id, _, _)) = rows.last() else { break };
            after = Some((env.clone(), id.clone()));
            for row in rows {
                self.reseal_one(row, &mut report).await?;
            }
        }
        Ok(report)
    }

    async fn reseal_one(&self, row: SealedRow, report: &mut ResealReport) -> Result<()> {
        let (env, id, mut blob, mut key_id) = row;
        let name = ConnectionName::new(&env, &id);
        let owner = name.to_string();
        for _ in 0..ATTEMPTS {
            let (Some(old_blob), Some(old_key)) = (blob.clone(), key_id.clone()) else {
                // Its secrets were removed meanwhile: nothing left to reseal.
                report.current += 1;
                return Ok(());
            };
            if old_key == self.sealer.active_key_id() {
                report.current += 1;
                return Ok(());
            }
            let old = Sealed {
                key_id: old_key.clone(),
                blob: old_blob.clone(),
            };
            let secrets = match self.sealer.open(&owner, &old) {
                Ok(secrets) => secrets,
                Err(_) if !self.sealer.has_key(&old_key) => {
                    report.unopenable.push((owner, old_key));
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let new = self.sealer.seal(&owner, &secrets)?;
            let swapped = Entity::update_many()
                .col_expr(Column::SealedSecrets, Expr::val(new.blob))
                .col_expr(Column::SecretKeyId, Expr::val(new.key_id))
                .filter(Column::Env.eq(&env))
                .filter(Column::Id.eq(&id))
                .filter(Column::SealedSecrets.eq(old_blob))
                .exec(&self.writer())
                .await?;
            if swapped.rows_affected == 1 {
                report.resealed += 1;
                return Ok(());
            }
            // Changed (or deleted) since it was read: look again.
            let Some((b, k)) = Entity::find_by_id((env.clone(), id.clone()))
                .select_only()
                .columns([Column::SealedSecrets, Column::SecretKeyId])
                .into_tuple::<(Option<String>, Option<String>)>()
                .one(self.primary())
                .await?
            else {
                return Ok(());
            };
            (blob, key_id) = (b, k);
        }
        Err(crate::error::Error::unavailable(
            "SECRETS_CHANGING",
            format!("the secrets of '{owner}' kept changing while they were resealed; run the reseal again"),
        ))
    }
}
