//! Named leases: one holder at a time among all processes on one database, renewed while it
//! lives and taken over once it expires (the scheduler holds one, so that several replicas on
//! one PostgreSQL never fire a schedule twice). A run's own lease is a column of its row
//! (`runs.rs`), claimed with the run.

use std::time::Duration;

use sea_orm::sea_query::{Expr, LockType};
use sea_orm::{ActiveValue::Set, ColumnTrait, DbBackend, EntityTrait, QueryFilter, QuerySelect};

use super::Store;
use super::models::lease;
use crate::domain::time::now_micros;
use crate::error::Result;

impl Store {
    /// Takes or renews the named lease for `owner`; true while `owner` holds it. Several
    /// processes on one database agree on one holder (the scheduler).
    pub async fn acquire_lease(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let now = now_micros();
        let expires = now + ttl.as_micros() as i64;
        let txn = self.untracked_writer().begin().await?;
        let mut select = lease::Entity::find_by_id(name.to_string());
        if self.backend() == DbBackend::Postgres {
            select = select.lock(LockType::Update);
        }
        let held = match select.one(&txn).await? {
            None => {
                let row = lease::ActiveModel {
                    name: Set(name.to_string()),
                    owner: Set(owner.to_string()),
                    expires_at: Set(expires),
                };
                match lease::Entity::insert(row).exec(&txn).await {
                    Ok(_) => true,
                    Err(e) if super::is_unique_violation(&e) => false,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(current) if current.owner == owner || current.expires_at < now => {
                lease::Entity::update_many()
                    .col_expr(lease::Column::Owner, Expr::val(owner))
                    .col_expr(lease::Column::ExpiresAt, Expr::val(expires))
                    .filter(lease::Column::Name.eq(name))
                    .filter(lease::Column::Owner.eq(&current.owner))
                    .filter(lease::Column::ExpiresAt.eq(current.expires_at))
                    .exec(&txn)
                    .await?
                    .rows_affected
                    > 0
            }
            Some(_) => false,
        };
        txn.commit().await?;
        Ok(held)
    }
}
