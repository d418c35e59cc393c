//! Environments: created by the operator, read by everyone with a role in them.

use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::Store;
use super::list::page_of;
use super::models::environment::{ActiveModel, Column, Entity, Model};
use crate::domain::environment::{Environment, EnvironmentKind};
use crate::domain::paging::Page;
use crate::domain::schedule::Schedule;
use crate::domain::time::now_micros;
use crate::error::{Error, Result};

fn to_domain(model: Model) -> Result<Environment> {
    let kind = EnvironmentKind::parse(&model.kind)
        .ok_or_else(|| Error::internal(format!("environment '{}' has an unknown kind", model.id)))?;
    let system_refresh_schedule = match &model.system_refresh_schedule {
        Some(json) => Some(
            serde_json::from_str::<Schedule>(json)
                .map_err(|_| Error::internal(format!("environment '{}' has a corrupt schedule", model.id)))?,
        ),
        None => None,
    };
    Ok(Environment {
        id: model.id,
        display_name: model.display_name,
        kind,
        system_refresh_schedule,
        next_system_refresh_at: model.next_system_refresh_at,
        create_time: model.create_time,
        update_time: model.update_time,
        revision: model.revision,
    })
}

fn schedule_json(schedule: &Option<Schedule>) -> Option<String> {
    schedule
        .as_ref()
        .map(|s| serde_json::to_string(s).expect("schedules serialize"))
}

impl Store {
    pub async fn create_environment(&self, id: &str, display_name: &str, kind: EnvironmentKind) -> Result<Environment> {
        let now = now_micros();
        let model = ActiveModel {
            id: Set(id.to_string()),
            display_name: Set(display_name.to_string()),
            kind: Set(kind.as_str().to_string()),
            system_refresh_schedule: Set(None),
            next_system_refresh_at: Set(None),
            create_time: Set(now),
            update_time: Set(now),
            revision: Set(1),
        };
        match Entity::insert(model).exec(&self.writer()).await {
            Ok(_) => {}
            Err(e) if super::is_unique_violation(&e) => {
                return Err(Error::already_exists("environment", format!("environments/{id}")));
            }
            Err(e) => return Err(e.into()),
        }
        self.get_environment(id)
            .await?
            .ok_or_else(|| Error::internal("environment vanished after insert"))
    }

    pub async fn get_environment(&self, id: &str) -> Result<Option<Environment>> {
        Entity::find_by_id(id.to_string())
            .one(self.reader())
            .await?
            .map(to_domain)
            .transpose()
    }

    /// The kind of an environment (None if it does not exist). Kinds are immutable, so a kind
    /// once read is answered from memory.
    pub async fn environment_kind(&self, id: &str) -> Result<Option<EnvironmentKind>> {
        if let Some(kind) = self.environment_kinds.read().expect("kinds lock").get(id) {
            return Ok(Some(*kind));
        }
        let Some(env) = self.get_environment(id).await? else {
            return Ok(None);
        };
        self.environment_kinds
            .write()
            .expect("kinds lock")
            .insert(env.id.clone(), env.kind);
        Ok(Some(env.kind))
    }

    /// Environments by id, optionally only those in `ids`; returns one page and the total.
    pub async fn list_environments(
        &self,
        ids: Option<&[String]>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<Environment>, u64)> {
        let mut query = Entity::find();
        if let Some(ids) = ids {
            query = query.filter(Column::Id.is_in(ids.iter().cloned()));
        }
        page_of(
            self.reader(),
            query,
            |select| select.order_by_asc(Column::Id),
            Page { offset, limit },
            to_domain,
        )
        .await
    }

    /// Writes the changed fields of an environment (display name, schedule and its next time).
    pub async fn update_environment(&self, environment: &Environment) -> Result<Environment> {
        let model = ActiveModel {
            id: Set(environment.id.clone()),
            display_name: Set(environment.display_name.clone()),
            system_refresh_schedule: Set(schedule_json(&environment.system_refresh_schedule)),
            next_system_refresh_at: Set(environment.next_system_refresh_at),
            update_time: Set(now_micros()),
            revision: Set(environment.revision + 1),
            ..Default::default()
        };
        // A transaction, for the audit event that goes with it (`audit::scope`).
        let txn = self.writer().begin().await?;
        model.update(&txn).await?;
        txn.commit().await?;
        self.get_environment(&environment.id)
            .await?
            .ok_or_else(|| Error::not_found("environment", format!("environments/{}", environment.id)))
    }
}
