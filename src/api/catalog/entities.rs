//! Entities: their schemas (create, read, list, update, delete).

use super::CatalogApi;
use crate::api::{convert, mask, pages, required};
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::domain::catalog::{Entity, EntityField, FieldType, validate_schema};
use crate::domain::connection::check_display_name;
use crate::domain::names::{EntityName, EnvironmentName, id_or_generate};
use crate::domain::paging;
use crate::domain::schema_change::SchemaChange;
use crate::domain::time::now_micros;
use crate::error::{Error, FieldViolation, Result};
use crate::pb;

impl CatalogApi {
    pub(super) async fn create_entity_(
        &self,
        principal: Principal,
        request: pb::CreateEntityRequest,
    ) -> Result<pb::Entity> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        policy::authorize(&principal, &parent.env, Action::CreateEntity, Facts::default())?;
        self.environment_or_not_found(&parent.env).await?;
        let input = required("entity", &request.entity)?;
        let id = id_or_generate("entity_id", &request.entity_id, "entity")?;
        let mut violations = Vec::new();
        if let Some(v) = check_display_name("entity.display_name", &input.display_name) {
            violations.push(v);
        }
        let kind = convert::entity_kind_from_pb(input.kind);
        if kind.is_none() {
            violations.push(FieldViolation {
                field: "entity.kind".into(),
                description: "a kind is required: PROFILE, ACCOUNT, CONTACT or OTHER".into(),
            });
        }
        let fields = schema_from_pb(&input.fields, &input.primary_key, &mut violations);
        if !violations.is_empty() {
            return Err(Error::invalid_fields(violations));
        }
        let now = now_micros();
        let entity = Entity {
            name: EntityName::new(&parent.env, &id),
            display_name: input.display_name.trim().to_string(),
            kind: kind.expect("checked"),
            fields,
            primary_key: input.primary_key.clone(),
            record_count: 0,
            change_seq: 0,
            refreshing: false,
            last_refresh_time: None,
            create_time: now,
            update_time: now,
        };
        let created = self.state.store.create_entity(&entity).await?;
        tracing::info!(entity = %created.name, fields = created.fields.len(), "entity created");
        Ok(convert::entity(&created))
    }

    pub(super) async fn get_entity_(&self, principal: Principal, request: pb::GetEntityRequest) -> Result<pb::Entity> {
        let name = EntityName::parse("name", &request.name)?;
        policy::authorize(&principal, &name.env, Action::GetEntity, Facts::default())?;
        Ok(convert::entity(&self.state.store.entity_or_not_found(&name).await?))
    }

    pub(super) async fn list_entities_(
        &self,
        principal: Principal,
        request: pb::ListEntitiesRequest,
    ) -> Result<pb::ListEntitiesResponse> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        policy::authorize(&principal, &parent.env, Action::ListEntities, Facts::default())?;
        let fingerprint = paging::fingerprint(&[&request.parent]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        self.environment_or_not_found(&parent.env).await?;
        let (items, total) = self
            .state
            .store
            .list_entities(&parent.env, page.offset, page.limit)
            .await?;
        let mut entities: Vec<pb::Entity> = items.iter().map(convert::entity).collect();
        pages::fit(&mut entities);
        Ok(pb::ListEntitiesResponse {
            next_page_token: paging::next_token(page, entities.len(), total, &fingerprint),
            entities,
        })
    }

    pub(super) async fn update_entity_(
        &self,
        principal: Principal,
        request: pb::UpdateEntityRequest,
    ) -> Result<pb::Entity> {
        let input = required("entity", &request.entity)?;
        let name = EntityName::parse("entity.name", &input.name)?;
        policy::authorize(&principal, &name.env, Action::UpdateEntity, Facts::default())?;
        let paths = mask::paths(&request.update_mask, &["display_name", "fields"], &[], || {
            let mut implied = Vec::new();
            if !input.display_name.is_empty() {
                implied.push("display_name".to_string());
            }
            if !input.fields.is_empty() {
                implied.push("fields".to_string());
            }
            implied
        })?;
        let current = self.state.store.entity_or_not_found(&name).await?;
        let mut violations = Vec::new();
        // Segments take their type from the kind, and records are stored by the key.
        if input.kind != 0 && convert::entity_kind_from_pb(input.kind) != Some(current.kind) {
            violations.push(FieldViolation {
                field: "entity.kind".into(),
                description: format!(
                    "the kind cannot change (it is {}); create a new entity instead",
                    current.kind.as_str()
                ),
            });
        }
        if !input.primary_key.is_empty() && input.primary_key != current.primary_key {
            violations.push(FieldViolation {
                field: "entity.primary_key".into(),
                description: format!(
                    "the primary key cannot change (it is '{}'); create a new entity instead",
                    current.primary_key
                ),
            });
        }
        let mut updated = current.clone();
        for path in &paths {
            match path.as_str() {
                "display_name" => match check_display_name("entity.display_name", &input.display_name) {
                    Some(v) => violations.push(v),
                    None => updated.display_name = input.display_name.trim().to_string(),
                },
                "fields" => {
                    let mut schema_violations = Vec::new();
                    updated.fields = schema_from_pb(&input.fields, &current.primary_key, &mut schema_violations);
                    // A missing or retyped key is said as such, not as a bad `primary_key`.
                    SchemaChange::between(&current, &updated.fields).check_primary_key(&current)?;
                    violations.extend(schema_violations);
                }
                _ => unreachable!("mask::paths admits only the listed paths"),
            }
        }
        if !violations.is_empty() {
            return Err(Error::invalid_fields(violations));
        }
        let stored = self
            .state
            .store
            .update_entity(&current, &updated, request.validate_only)
            .await?;
        if !request.validate_only {
            tracing::info!(entity = %name, paths = ?paths, fields = stored.fields.len(), "entity updated");
        }
        Ok(convert::entity(&stored))
    }

    pub(super) async fn delete_entity_(
        &self,
        principal: Principal,
        request: pb::DeleteEntityRequest,
    ) -> Result<pb::DeleteEntityResponse> {
        let name = EntityName::parse("name", &request.name)?;
        policy::authorize(&principal, &name.env, Action::DeleteEntity, Facts::default())?;
        self.state.store.entity_or_not_found(&name).await?;
        self.state.store.delete_entity(&name).await?;
        tracing::info!(entity = %name, "entity deleted");
        Ok(pb::DeleteEntityResponse { name: name.to_string() })
    }
}

/// A schema from the request: checked (violations under `entity.fields…` and
/// `entity.primary_key` go to `violations`) and converted; fields with a bad type are left out.
fn schema_from_pb(
    fields: &[pb::EntityField],
    primary_key: &str,
    violations: &mut Vec<FieldViolation>,
) -> Vec<EntityField> {
    let typed: Vec<(String, Option<FieldType>)> = fields
        .iter()
        .map(|f| (f.name.clone(), convert::field_type_from_pb(f.r#type)))
        .collect();
    violations.extend(validate_schema("entity", &typed, primary_key));
    fields
        .iter()
        .zip(typed)
        .filter_map(|(f, (_, ty))| {
            Some(EntityField {
                name: f.name.clone(),
                type_name: ty?.as_str().to_string(),
                description: f.description.clone(),
                mapping: f.mapping.clone(),
            })
        })
        .collect()
}
