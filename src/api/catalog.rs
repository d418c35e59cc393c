//! CatalogService: environments, entities and records, segments, refresh state.

use std::collections::{BTreeMap, HashMap};

use tonic::{Request, Response, Status, Streaming};

use super::{State, convert, mask, pages, principal, required, respond};
use crate::api::status::to_status;
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::connectors::registry;
use crate::domain::catalog::{
    Entity, EntityField, FieldType, MAX_KEY_LEN, Segment, SegmentDefinition, validate_record, validate_schema,
};
use crate::domain::connection::check_display_name;
use crate::domain::connection_type::check_map;
use crate::domain::eligibility::{Destination, SegmentFacts};
use crate::domain::names::{
    ConnectionName, EntityName, EnvironmentName, SegmentName, SystemRefreshName, id_or_generate,
};
use crate::domain::paging;
use crate::domain::schedule::Trigger;
use crate::domain::schema_change::SchemaChange;
use crate::domain::time::{from_datetime, now_micros, to_datetime};
use crate::error::{Error, FieldViolation, Result};
use crate::pb;
use crate::pb::catalog_service_server::CatalogService;
use crate::store::records::RecordBatch;
use crate::store::segments::Generation;

pub struct CatalogApi {
    state: State,
}

impl CatalogApi {
    pub fn new(state: State) -> Self {
        CatalogApi { state }
    }

    async fn get_environment_(
        &self,
        principal: Principal,
        request: pb::GetEnvironmentRequest,
    ) -> Result<pb::Environment> {
        let name = EnvironmentName::parse("name", &request.name)?;
        let role = policy::authorize(&principal, &name.env, Action::GetEnvironment, Facts::default())?;
        let env = self
            .state
            .store
            .get_environment(&name.env)
            .await?
            .ok_or_else(|| Error::not_found("environment", name.to_string()))?;
        Ok(convert::environment(&env, role.as_str()))
    }

    async fn list_environments_(
        &self,
        principal: Principal,
        request: pb::ListEnvironmentsRequest,
    ) -> Result<pb::ListEnvironmentsResponse> {
        let fingerprint = paging::fingerprint(&["environments"]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        // A token may name anything in `roles`; only ids can be environments (and a NUL, say,
        // is not a value PostgreSQL would even compare).
        let ids: Option<Vec<String>> = (!principal.has_wildcard()).then(|| {
            principal
                .roles
                .keys()
                .filter(|id| crate::domain::names::is_valid_id(id))
                .cloned()
                .collect()
        });
        let (items, total) = self
            .state
            .store
            .list_environments(ids.as_deref(), page.offset, page.limit)
            .await?;
        let mut environments: Vec<pb::Environment> = items
            .iter()
            .map(|env| {
                let role = principal.role_in(&env.id).map(|r| r.as_str()).unwrap_or_default();
                convert::environment(env, role)
            })
            .collect();
        pages::fit(&mut environments);
        Ok(pb::ListEnvironmentsResponse {
            next_page_token: paging::next_token(page, environments.len(), total, &fingerprint),
            environments,
        })
    }

    async fn update_environment_(
        &self,
        principal: Principal,
        request: pb::UpdateEnvironmentRequest,
    ) -> Result<pb::Environment> {
        let input = required("environment", &request.environment)?;
        let name = EnvironmentName::parse("environment.name", &input.name)?;
        let role = policy::authorize(&principal, &name.env, Action::UpdateEnvironment, Facts::default())?;
        let paths = mask::paths(
            &request.update_mask,
            &["display_name", "system_refresh_schedule"],
            &[],
            || {
                let mut implied = Vec::new();
                if !input.display_name.is_empty() {
                    implied.push("display_name".to_string());
                }
                if input.system_refresh_schedule.is_some() {
                    implied.push("system_refresh_schedule".to_string());
                }
                implied
            },
        )?;
        let mut env = self
            .state
            .store
            .get_environment(&name.env)
            .await?
            .ok_or_else(|| Error::not_found("environment", name.to_string()))?;
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    if let Some(v) =
                        crate::domain::connection::check_display_name("environment.display_name", &input.display_name)
                    {
                        return Err(Error::invalid_fields(vec![v]));
                    }
                    env.display_name = input.display_name.trim().to_string();
                }
                "system_refresh_schedule" => {
                    let field = "environment.system_refresh_schedule";
                    env.system_refresh_schedule = match &input.system_refresh_schedule {
                        None => None,
                        Some(pb_schedule) if !pb_schedule.enabled && pb_schedule.trigger.is_none() => None,
                        Some(pb_schedule) => {
                            let schedule = convert::schedule_from_pb(field, pb_schedule, None)?;
                            if schedule.trigger == Trigger::SystemRefresh {
                                return Err(Error::invalid(
                                    format!("{field}.system_refresh"),
                                    "the system refresh itself runs on a `recurrence` or a `cron` trigger",
                                ));
                            }
                            Some(schedule.anchored(env.system_refresh_schedule.as_ref(), to_datetime(now_micros())))
                        }
                    };
                    env.next_system_refresh_at = env
                        .system_refresh_schedule
                        .as_ref()
                        .and_then(|s| s.next_run_time(to_datetime(now_micros())))
                        .map(from_datetime);
                }
                _ => unreachable!("mask::paths admits only the listed paths"),
            }
        }
        let updated = self.state.store.update_environment(&env).await?;
        self.state.engine.schedules_changed();
        Ok(convert::environment(&updated, role.as_str()))
    }
}

/// Bad fields of a refused WriteRecords message listed in its error: with the note of how many
/// more there are, as many as a status shows (`api::status` keeps the first 20 violations).
const MAX_REPORTED_VIOLATIONS: usize = 19;

/// A WriteRecords message that passed validation, waiting for its transaction.
struct PreparedMessage {
    name: EntityName,
    batch: RecordBatch,
}

/// An entity or a segment, the two things a refresh can be about.
enum Refreshable {
    Entity(EntityName),
    Segment(SegmentName),
}

impl Refreshable {
    fn parse(field: &str, name: &str) -> Result<Refreshable> {
        if name.contains("/segments/") {
            SegmentName::parse(field, name).map(Refreshable::Segment)
        } else if name.contains("/entities/") {
            EntityName::parse(field, name).map(Refreshable::Entity)
        } else {
            Err(Error::invalid(
                field,
                format!("'{name}' is neither an entity nor a segment name"),
            ))
        }
    }

    fn env(&self) -> &str {
        match self {
            Refreshable::Entity(n) => &n.env,
            Refreshable::Segment(n) => &n.env,
        }
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

fn refresh_state(name: String, refreshing: bool, last: Option<i64>) -> pb::RefreshState {
    pb::RefreshState {
        name,
        refreshing,
        last_refresh_time: convert::opt_timestamp(last),
    }
}

impl CatalogApi {
    async fn environment_or_not_found(&self, env: &str) -> Result<crate::domain::environment::Environment> {
        self.state
            .store
            .get_environment(env)
            .await?
            .ok_or_else(|| Error::not_found("environment", format!("environments/{env}")))
    }

    async fn create_entity_(&self, principal: Principal, request: pb::CreateEntityRequest) -> Result<pb::Entity> {
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

    async fn get_entity_(&self, principal: Principal, request: pb::GetEntityRequest) -> Result<pb::Entity> {
        let name = EntityName::parse("name", &request.name)?;
        policy::authorize(&principal, &name.env, Action::GetEntity, Facts::default())?;
        Ok(convert::entity(&self.state.store.entity_or_not_found(&name).await?))
    }

    async fn list_entities_(
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

    async fn update_entity_(&self, principal: Principal, request: pb::UpdateEntityRequest) -> Result<pb::Entity> {
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

    async fn delete_entity_(
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

    /// Checks one WriteRecords message: name, permission, size, every record against the schema.
    async fn prepare_message(
        state: &State,
        principal: &Principal,
        message: pb::WriteRecordsRequest,
        entities: &mut HashMap<String, Entity>,
    ) -> Result<PreparedMessage> {
        let name = EntityName::parse("entity", &message.entity)?;
        policy::authorize(principal, &name.env, Action::WriteRecords, Facts::default())?;
        // How many records a message carries and how long keys are: the request's bounds
        // (api::bounds), checked as it was decoded.
        if !entities.contains_key(&message.entity) {
            let entity = state.store.entity_or_not_found(&name).await?;
            entities.insert(message.entity.clone(), entity);
        }
        let entity = &entities[&message.entity];
        let mut upserts = Vec::with_capacity(message.upserts.len());
        let mut problems = Vec::new();
        let mut unreported = 0usize;
        for (i, record) in message.upserts.into_iter().enumerate() {
            // A number JSON cannot hold stops the conversion and is reported as such (it would
            // otherwise have been stored as null).
            let mut non_finite = None;
            let fields = record
                .fields
                .into_iter()
                .map_while(|(k, v)| match convert::value_to_json(v) {
                    Ok(json) => Some((k, json)),
                    Err(convert::NonFiniteNumber) => {
                        non_finite = Some(k);
                        None
                    }
                });
            let validated = validate_record(entity, || format!("upserts[{i}]"), fields);
            let violations = match (non_finite, validated) {
                (Some(field), _) => vec![FieldViolation {
                    field: format!("upserts[{i}].{field}"),
                    description: "NaN and ±Infinity are not numbers a record can hold (JSON has none); send a \
                                  finite number or null"
                        .into(),
                }],
                (None, Ok(record)) => {
                    upserts.push(record);
                    continue;
                }
                (None, Err(violations)) => violations,
            };
            let room = MAX_REPORTED_VIOLATIONS.saturating_sub(problems.len());
            unreported += violations.len().saturating_sub(room);
            problems.extend(violations.into_iter().take(room));
        }
        if !problems.is_empty() {
            if unreported > 0 {
                problems.push(FieldViolation {
                    field: "upserts".into(),
                    description: format!(
                        "{unreported} more bad fields in this message are not listed (at most {MAX_REPORTED_VIOLATIONS} are)"
                    ),
                });
            }
            return Err(Error::invalid_fields(problems));
        }
        for (i, key) in message.deletes.iter().enumerate() {
            if key.is_empty() {
                return Err(Error::invalid(
                    format!("deletes[{i}]"),
                    format!("a key of 1 to {MAX_KEY_LEN} bytes"),
                ));
            }
        }
        Ok(PreparedMessage {
            name,
            batch: RecordBatch {
                upserts,
                deletes: message.deletes,
            },
        })
    }

    async fn create_segment_(&self, principal: Principal, request: pb::CreateSegmentRequest) -> Result<pb::Segment> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        policy::authorize(&principal, &parent.env, Action::CreateSegment, Facts::default())?;
        self.environment_or_not_found(&parent.env).await?;
        let input = required("segment", &request.segment)?;
        let id = id_or_generate("segment_id", &request.segment_id, "segment")?;
        if let Some(v) = check_display_name("segment.display_name", &input.display_name) {
            return Err(Error::invalid_fields(vec![v]));
        }
        let entity_name = EntityName::parse("segment.entity", &input.entity)?;
        if entity_name.env != parent.env {
            return Err(Error::invalid(
                "segment.entity",
                "the entity must be in the segment's environment",
            ));
        }
        let entity = self
            .state
            .store
            .get_entity(&entity_name)
            .await?
            .ok_or_else(|| Error::invalid("segment.entity", format!("entity '{entity_name}' does not exist")))?;
        let segment_type = entity.kind.segment_type().ok_or_else(|| {
            Error::invalid(
                "segment.entity",
                format!(
                    "entity '{}' is of kind OTHER; segments are built on PROFILE, ACCOUNT or CONTACT entities",
                    entity.name
                ),
            )
        })?;
        let definition = definition_from_pb(&input.definition, &entity)?;
        let now = now_micros();
        let segment = Segment {
            name: SegmentName::new(&parent.env, &id),
            display_name: input.display_name.trim().to_string(),
            entity: entity.name.clone(),
            segment_type,
            definition,
            member_count: 0,
            generation: 0,
            refreshing: false,
            last_refresh_time: None,
            create_time: now,
            update_time: now,
            revision: 1,
        };
        // A rule segment has its members from the start: it is stored once they are computed.
        let created = self.state.engine.create_segment(&segment, &entity).await?;
        tracing::info!(segment = %created.name, members = created.member_count, "segment created");
        Ok(convert::segment(&created))
    }

    async fn get_segment_(&self, principal: Principal, request: pb::GetSegmentRequest) -> Result<pb::Segment> {
        let name = SegmentName::parse("name", &request.name)?;
        policy::authorize(&principal, &name.env, Action::GetSegment, Facts::default())?;
        Ok(convert::segment(&self.state.store.segment_or_not_found(&name).await?))
    }

    async fn list_segments_(
        &self,
        principal: Principal,
        request: pb::ListSegmentsRequest,
    ) -> Result<pb::ListSegmentsResponse> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        policy::authorize(&principal, &parent.env, Action::ListSegments, Facts::default())?;
        let fingerprint = paging::fingerprint(&[&request.parent]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        self.environment_or_not_found(&parent.env).await?;
        let (items, total) = self
            .state
            .store
            .list_segments(&parent.env, page.offset, page.limit)
            .await?;
        let mut segments: Vec<pb::Segment> = items.iter().map(convert::segment).collect();
        pages::fit(&mut segments);
        Ok(pb::ListSegmentsResponse {
            next_page_token: paging::next_token(page, segments.len(), total, &fingerprint),
            segments,
        })
    }

    async fn update_segment_(&self, principal: Principal, request: pb::UpdateSegmentRequest) -> Result<pb::Segment> {
        let input = required("segment", &request.segment)?;
        let name = SegmentName::parse("segment.name", &input.name)?;
        policy::authorize(&principal, &name.env, Action::UpdateSegment, Facts::default())?;
        let paths = mask::paths(&request.update_mask, &["display_name", "rule"], &[], || {
            let mut implied = Vec::new();
            if !input.display_name.is_empty() {
                implied.push("display_name".to_string());
            }
            if matches!(input.definition, Some(pb::segment::Definition::Rule(_))) {
                implied.push("rule".to_string());
            }
            implied
        })?;
        let mut segment = self.state.store.segment_or_not_found(&name).await?;
        let mut rule_changed = false;
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    if let Some(v) = check_display_name("segment.display_name", &input.display_name) {
                        return Err(Error::invalid_fields(vec![v]));
                    }
                    segment.display_name = input.display_name.trim().to_string();
                }
                "rule" => {
                    if segment.definition == SegmentDefinition::Pushed {
                        return Err(Error::precondition(
                            "SEGMENT_IS_PUSHED",
                            format!("segment '{name}' has pushed members; it has no rule to change"),
                        ));
                    }
                    let entity = self.state.store.entity_or_not_found(&segment.entity).await?;
                    let rule = match &input.definition {
                        Some(pb::segment::Definition::Rule(rule)) => rule.clone(),
                        _ => String::new(),
                    };
                    segment.definition = definition_from_pb(&Some(pb::segment::Definition::Rule(rule)), &entity)?;
                    rule_changed = true;
                }
                _ => unreachable!("mask::paths admits only the listed paths"),
            }
        }
        let updated = self.state.engine.update_segment(&segment, rule_changed).await?;
        Ok(convert::segment(&updated))
    }

    async fn delete_segment_(
        &self,
        principal: Principal,
        request: pb::DeleteSegmentRequest,
    ) -> Result<pb::DeleteSegmentResponse> {
        let name = SegmentName::parse("name", &request.name)?;
        policy::authorize(&principal, &name.env, Action::DeleteSegment, Facts::default())?;
        self.state.store.segment_or_not_found(&name).await?;
        self.state.store.delete_segment(&name).await?;
        tracing::info!(segment = %name, "segment deleted");
        Ok(pb::DeleteSegmentResponse { name: name.to_string() })
    }

    /// Reads the whole SetSegmentMembers stream into a new member generation; switches to it
    /// only when every key was valid.
    async fn set_members(
        &self,
        principal: Principal,
        mut stream: Streaming<pb::SetSegmentMembersRequest>,
    ) -> Result<pb::Segment> {
        let mut target: Option<(Segment, Generation)> = None;
        let mut index = 0usize;
        let result: Result<()> = async {
            while let Some(message) = stream.message().await.map_err(stream_error)? {
                let name = SegmentName::parse("segment", &message.segment)?;
                if target.is_none() {
                    policy::authorize(&principal, &name.env, Action::SetSegmentMembers, Facts::default())?;
                    let segment = self.state.store.segment_or_not_found(&name).await?;
                    if let SegmentDefinition::Rule(_) = segment.definition {
                        return Err(Error::precondition(
                            "SEGMENT_HAS_RULE",
                            format!("segment '{name}' is defined by a rule; its members are computed, not pushed"),
                        ));
                    }
                    let generation = self.state.store.begin_members(&segment).await?;
                    target = Some((segment, generation));
                }
                let (segment, generation) = target.as_ref().expect("set above");
                if name != segment.name {
                    return Err(Error::invalid(
                        "segment",
                        "every message of the stream must name the same segment",
                    ));
                }
                let live = self.state.store.live_keys(&segment.entity, &message.keys).await?;
                let unknown: Vec<(usize, &String)> = message
                    .keys
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| !live.contains(*k))
                    .collect();
                if !unknown.is_empty() {
                    let mut violations: Vec<FieldViolation> = unknown
                        .iter()
                        .take(20)
                        .map(|(i, key)| FieldViolation {
                            field: format!("keys[{i}]"),
                            description: format!("'{key}' is not a record of entity '{}'", segment.entity),
                        })
                        .collect();
                    violations.truncate(20);
                    return Err(Error::invalid_fields(violations)
                        .with_meta("unknown_keys", unknown.len().to_string())
                        .with_meta("message_index", index.to_string()));
                }
                self.state
                    .store
                    .add_members(&segment.name, *generation, &message.keys)
                    .await?;
                index += 1;
            }
            Ok(())
        }
        .await;
        match (result, target) {
            (Ok(()), Some((segment, generation))) => {
                let updated = self
                    .state
                    .store
                    .commit_members(&segment.name, generation, false, None)
                    .await?;
                tracing::info!(segment = %updated.name, members = updated.member_count, "segment members replaced");
                Ok(convert::segment(&updated))
            }
            (Ok(()), None) => Err(Error::invalid(
                "segment",
                "the stream had no message naming the segment",
            )),
            (Err(e), target) => {
                if let Some((segment, generation)) = target {
                    self.state.store.drop_generation(&segment.name, generation).await?;
                }
                Err(e)
            }
        }
    }

    async fn list_eligible_(
        &self,
        principal: Principal,
        request: pb::ListEligibleSegmentsRequest,
    ) -> Result<pb::ListEligibleSegmentsResponse> {
        let name = ConnectionName::parse("connection", &request.connection)?;
        let role = policy::role_in(&principal, &name.env)?;
        let connection = self
            .state
            .store
            .get_connection(&name)
            .await?
            .filter(|c| policy::can_see_connection(role, c.contributors_can_use))
            .ok_or_else(|| Error::not_found("connection", name.to_string()))?;
        policy::authorize(
            &principal,
            &name.env,
            Action::ListEligibleSegments,
            Facts::connection(connection.contributors_can_use),
        )?;
        let spec = registry::type_of(&connection)?;
        let settings: BTreeMap<String, String> = request.settings.clone().into_iter().collect();
        let violations = check_map("settings", spec.settings, &settings);
        if !violations.is_empty() {
            return Err(Error::invalid_fields(violations));
        }
        // A page token holds for the same connection and settings (they decide eligibility).
        let settings_text: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let fingerprint = paging::fingerprint(&[&request.connection, &settings_text.join("\n")]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        let environment = self.environment_or_not_found(&name.env).await?;
        let destination = Destination {
            environment_kind: environment.kind,
            spec,
            target: settings.get("target").map(String::as_str),
            profile_limit: connection.effective_profile_limit(spec),
        };
        let (segments, total) = self
            .state
            .store
            .list_segments(&name.env, page.offset, page.limit)
            .await?;
        let mut segments: Vec<pb::SegmentEligibility> = segments
            .iter()
            .map(|s| {
                let facts = SegmentFacts {
                    name: s.name.to_string(),
                    display_name: s.display_name.clone(),
                    segment_type: s.segment_type,
                    member_count: s.member_count,
                };
                let assessment = destination.assess(&facts);
                pb::SegmentEligibility {
                    segment: facts.name,
                    display_name: facts.display_name,
                    eligible: assessment.eligible,
                    reason: assessment.reason,
                    member_count: facts.member_count,
                    over_limit: assessment.over_limit,
                    under_minimum: assessment.under_minimum,
                    r#type: convert::segment_type(s.segment_type) as i32,
                }
            })
            .collect();
        pages::fit(&mut segments);
        Ok(pb::ListEligibleSegmentsResponse {
            next_page_token: paging::next_token(page, segments.len(), total, &fingerprint),
            segments,
            total_size: total.min(i32::MAX as u64) as i32,
        })
    }

    async fn start_refresh_(&self, principal: Principal, request: pb::StartRefreshRequest) -> Result<pb::RefreshState> {
        let target = Refreshable::parse("name", &request.name)?;
        policy::authorize(&principal, target.env(), Action::StartRefresh, Facts::default())?;
        Ok(match target {
            Refreshable::Entity(name) => {
                let e = self.state.store.set_entity_refreshing(&name, true).await?;
                refresh_state(name.to_string(), e.refreshing, e.last_refresh_time)
            }
            Refreshable::Segment(name) => {
                let s = self.state.store.set_segment_refreshing(&name, true).await?;
                refresh_state(name.to_string(), s.refreshing, s.last_refresh_time)
            }
        })
    }

    async fn complete_refresh_(
        &self,
        principal: Principal,
        request: pb::CompleteRefreshRequest,
    ) -> Result<pb::RefreshState> {
        let target = Refreshable::parse("name", &request.name)?;
        policy::authorize(&principal, target.env(), Action::CompleteRefresh, Facts::default())?;
        let env = target.env().to_string();
        let state = match target {
            Refreshable::Entity(name) => {
                let e = self.state.store.set_entity_refreshing(&name, false).await?;
                refresh_state(name.to_string(), e.refreshing, e.last_refresh_time)
            }
            Refreshable::Segment(name) => {
                let segment = self.state.store.segment_or_not_found(&name).await?;
                if !segment.refreshing {
                    return Err(crate::store::entities::not_refreshing(&name.to_string()));
                }
                // A rule segment's refresh is its recomputation.
                let s = self.state.engine.recompute_segment(&segment, true).await?;
                refresh_state(name.to_string(), s.refreshing, s.last_refresh_time)
            }
        };
        // Completing one refresh only releases runs that were waiting for it; it starts none.
        self.state.engine.release_waiting_runs(&env).await?;
        Ok(state)
    }

    async fn run_system_refresh_(
        &self,
        principal: Principal,
        request: pb::RunSystemRefreshRequest,
    ) -> Result<pb::SystemRefresh> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        policy::authorize(&principal, &parent.env, Action::RunSystemRefresh, Facts::default())?;
        self.environment_or_not_found(&parent.env).await?;
        let refresh = self.state.engine.run_system_refresh(&parent).await?;
        tracing::info!(refresh = %refresh.name, "system refresh started");
        Ok(convert::system_refresh(&refresh))
    }

    async fn get_system_refresh_(
        &self,
        principal: Principal,
        request: pb::GetSystemRefreshRequest,
    ) -> Result<pb::SystemRefresh> {
        let name = SystemRefreshName::parse("name", &request.name)?;
        policy::authorize(&principal, &name.env, Action::GetSystemRefresh, Facts::default())?;
        Ok(convert::system_refresh(
            &self.state.store.system_refresh_or_not_found(&name).await?,
        ))
    }
}

/// Reads a segment definition; a rule must compile against the entity's schema.
fn definition_from_pb(definition: &Option<pb::segment::Definition>, entity: &Entity) -> Result<SegmentDefinition> {
    match definition {
        None => Err(Error::invalid(
            "segment.definition",
            "a definition is required: `members` (pushed) or `rule` (CEL)",
        )),
        Some(pb::segment::Definition::Members(_)) => Ok(SegmentDefinition::Pushed),
        Some(pb::segment::Definition::Rule(rule)) => {
            crate::domain::rule::compile(rule, &entity.rule_fields()).map_err(|e| {
                Error::invalid("segment.rule", e.to_string())
                    .with_meta("line", e.line.to_string())
                    .with_meta("column", e.column.to_string())
            })?;
            Ok(SegmentDefinition::Rule(rule.clone()))
        }
    }
}

/// A failure while reading a client stream: a message the codec refused (malformed, out of
/// bounds), one over the size limit, or the client going away; reported with its own code and
/// details.
fn stream_error(status: Status) -> Error {
    crate::api::status::error_from_status(&status)
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn get_environment(&self, request: Request<pb::GetEnvironmentRequest>) -> Reply<pb::Environment> {
        let principal = principal(&request)?;
        respond(self.get_environment_(principal, request.into_inner())).await
    }
    async fn update_environment(&self, request: Request<pb::UpdateEnvironmentRequest>) -> Reply<pb::Environment> {
        let principal = principal(&request)?;
        respond(self.update_environment_(principal, request.into_inner())).await
    }
    async fn list_environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Reply<pb::ListEnvironmentsResponse> {
        let principal = principal(&request)?;
        respond(self.list_environments_(principal, request.into_inner())).await
    }
    async fn create_entity(&self, request: Request<pb::CreateEntityRequest>) -> Reply<pb::Entity> {
        let principal = principal(&request)?;
        respond(self.create_entity_(principal, request.into_inner())).await
    }
    async fn get_entity(&self, request: Request<pb::GetEntityRequest>) -> Reply<pb::Entity> {
        let principal = principal(&request)?;
        respond(self.get_entity_(principal, request.into_inner())).await
    }
    async fn list_entities(&self, request: Request<pb::ListEntitiesRequest>) -> Reply<pb::ListEntitiesResponse> {
        let principal = principal(&request)?;
        respond(self.list_entities_(principal, request.into_inner())).await
    }
    async fn update_entity(&self, request: Request<pb::UpdateEntityRequest>) -> Reply<pb::Entity> {
        let principal = principal(&request)?;
        respond(self.update_entity_(principal, request.into_inner())).await
    }
    async fn delete_entity(&self, request: Request<pb::DeleteEntityRequest>) -> Reply<pb::DeleteEntityResponse> {
        let principal = principal(&request)?;
        respond(self.delete_entity_(principal, request.into_inner())).await
    }

    /// Each message is its own transaction; a bad one ends the stream with an error whose
    /// details say how many earlier messages were committed. Messages are read and validated
    /// one step ahead of the database writes (a bounded pipeline), so that decoding and
    /// validation overlap with the database's work; they are still applied strictly in order.
    async fn write_records(
        &self,
        request: Request<Streaming<pb::WriteRecordsRequest>>,
    ) -> Reply<pb::WriteRecordsResponse> {
        let principal = principal(&request)?;
        let mut stream = request.into_inner();
        let (prepared_tx, mut prepared) = tokio::sync::mpsc::channel::<Result<PreparedMessage>>(2);
        let state = self.state.clone();
        let reader = tokio::spawn(async move {
            let mut entities = HashMap::new();
            loop {
                let item = match stream.message().await {
                    Ok(Some(message)) => CatalogApi::prepare_message(&state, &principal, message, &mut entities).await,
                    Ok(None) => return,
                    Err(status) => Err(stream_error(status)),
                };
                let failed = item.is_err();
                if prepared_tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut totals = pb::WriteRecordsResponse::default();
        let mut committed = 0u64;
        while let Some(item) = prepared.recv().await {
            let outcome = match item {
                Ok(message) if message.batch.upserts.is_empty() && message.batch.deletes.is_empty() => Ok(None),
                Ok(message) => self
                    .state
                    .store
                    .write_records(&message.name, message.batch)
                    .await
                    .map(Some),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Some(outcome)) => {
                    totals.upserted += outcome.upserted;
                    totals.deleted += outcome.deleted;
                    totals.change_sequence = totals.change_sequence.max(outcome.change_seq);
                    committed += 1;
                }
                Ok(None) => committed += 1,
                Err(mut err) => {
                    reader.abort();
                    err.message = format!(
                        "message {committed} of the stream was refused ({committed} earlier messages were committed): {}",
                        err.message
                    );
                    let err = err
                        .with_meta("committed_messages", committed.to_string())
                        .with_meta("message_index", committed.to_string());
                    return Err(to_status(err));
                }
            }
        }
        Ok(Response::new(totals))
    }

    async fn create_segment(&self, request: Request<pb::CreateSegmentRequest>) -> Reply<pb::Segment> {
        let principal = principal(&request)?;
        respond(self.create_segment_(principal, request.into_inner())).await
    }
    async fn get_segment(&self, request: Request<pb::GetSegmentRequest>) -> Reply<pb::Segment> {
        let principal = principal(&request)?;
        respond(self.get_segment_(principal, request.into_inner())).await
    }
    async fn list_segments(&self, request: Request<pb::ListSegmentsRequest>) -> Reply<pb::ListSegmentsResponse> {
        let principal = principal(&request)?;
        respond(self.list_segments_(principal, request.into_inner())).await
    }
    async fn update_segment(&self, request: Request<pb::UpdateSegmentRequest>) -> Reply<pb::Segment> {
        let principal = principal(&request)?;
        respond(self.update_segment_(principal, request.into_inner())).await
    }
    async fn delete_segment(&self, request: Request<pb::DeleteSegmentRequest>) -> Reply<pb::DeleteSegmentResponse> {
        let principal = principal(&request)?;
        respond(self.delete_segment_(principal, request.into_inner())).await
    }
    async fn set_segment_members(
        &self,
        request: Request<Streaming<pb::SetSegmentMembersRequest>>,
    ) -> Reply<pb::Segment> {
        let principal = principal(&request)?;
        respond(self.set_members(principal, request.into_inner())).await
    }
    async fn list_eligible_segments(
        &self,
        request: Request<pb::ListEligibleSegmentsRequest>,
    ) -> Reply<pb::ListEligibleSegmentsResponse> {
        let principal = principal(&request)?;
        respond(self.list_eligible_(principal, request.into_inner())).await
    }
    async fn start_refresh(&self, request: Request<pb::StartRefreshRequest>) -> Reply<pb::RefreshState> {
        let principal = principal(&request)?;
        respond(self.start_refresh_(principal, request.into_inner())).await
    }
    async fn complete_refresh(&self, request: Request<pb::CompleteRefreshRequest>) -> Reply<pb::RefreshState> {
        let principal = principal(&request)?;
        respond(self.complete_refresh_(principal, request.into_inner())).await
    }
    async fn run_system_refresh(&self, request: Request<pb::RunSystemRefreshRequest>) -> Reply<pb::SystemRefresh> {
        let principal = principal(&request)?;
        respond(self.run_system_refresh_(principal, request.into_inner())).await
    }
    async fn get_system_refresh(&self, request: Request<pb::GetSystemRefreshRequest>) -> Reply<pb::SystemRefresh> {
        let principal = principal(&request)?;
        respond(self.get_system_refresh_(principal, request.into_inner())).await
    }
}
