//! Segments: their definitions (create, read, list, update, delete) and pushed members.

use tonic::Streaming;

use super::{CatalogApi, stream_error};
use crate::api::{convert, mask, pages, required};
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::domain::catalog::{Entity, Segment, SegmentDefinition};
use crate::domain::connection::check_display_name;
use crate::domain::names::{EntityName, EnvironmentName, SegmentName, id_or_generate};
use crate::domain::paging;
use crate::domain::time::now_micros;
use crate::error::{Error, FieldViolation, Result};
use crate::pb;
use crate::store::segments::Generation;

impl CatalogApi {
    pub(super) async fn create_segment_(
        &self,
        principal: Principal,
        request: pb::CreateSegmentRequest,
    ) -> Result<pb::Segment> {
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

    pub(super) async fn get_segment_(
        &self,
        principal: Principal,
        request: pb::GetSegmentRequest,
    ) -> Result<pb::Segment> {
        let name = SegmentName::parse("name", &request.name)?;
        policy::authorize(&principal, &name.env, Action::GetSegment, Facts::default())?;
        Ok(convert::segment(&self.state.store.segment_or_not_found(&name).await?))
    }

    pub(super) async fn list_segments_(
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

    pub(super) async fn update_segment_(
        &self,
        principal: Principal,
        request: pb::UpdateSegmentRequest,
    ) -> Result<pb::Segment> {
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

    pub(super) async fn delete_segment_(
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
    pub(super) async fn set_members(
        &self,
        principal: Principal,
        mut stream: Streaming<pb::SetSegmentMembersRequest>,
    ) -> Result<pb::Segment> {
        let mut target: Option<(Segment, Generation)> = None;
        let mut index = 0usize;
        let mut keys = 0usize;
        let result: Result<()> = async {
            while let Some(message) = stream.message().await.map_err(stream_error)? {
                let name = SegmentName::parse("segment", &message.segment)?;
                if target.is_none() {
                    crate::audit::scope::stream_resource(&name.to_string());
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
                keys += message.keys.len();
                index += 1;
            }
            Ok(())
        }
        .await;
        match (result, target) {
            (Ok(()), Some((segment, generation))) => {
                // The event goes with the switch to the new members, one per call.
                crate::audit::scope::stream_subject(crate::audit::scope::Subject {
                    resource: segment.name.to_string(),
                    changed_fields: vec!["members".into()],
                    summary: format!("set {keys} member keys in {index} messages"),
                });
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
