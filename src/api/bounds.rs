//! The bounds of every request message, field by field (the limits themselves are in
//! `domain::bounds`). The codec (`api::codec`) checks each decoded request against them
//! before a handler runs, so an oversized field is INVALID_ARGUMENT and changes nothing, for
//! every RPC and for each message of a client stream.
//!
//! Output-only fields (`etag` aside, which is compared) are ignored by every handler and are
//! not bounded: the message size limit covers them.

use std::any::Any;

use crate::domain::bounds::{self as limit, Bounded, Bounds};
use crate::error::Error;
use crate::pb;

/// Every request message of every RPC; `tests::every_rpc_request_is_bounded` keeps the list
/// complete.
macro_rules! for_each_request {
    ($then:ident) => {
        $then!(
            pb::ListConnectionTypesRequest,
            pb::CreateConnectionRequest,
            pb::GetConnectionRequest,
            pb::ListConnectionsRequest,
            pb::UpdateConnectionRequest,
            pb::DeleteConnectionRequest,
            pb::TestConnectionRequest,
            pb::CreateExportRequest,
            pb::GetExportRequest,
            pb::ListExportsRequest,
            pb::UpdateExportRequest,
            pb::DeleteExportRequest,
            pb::DuplicateExportRequest,
            pb::DetachConnectionRequest,
            pb::RunExportRequest,
            pb::RunAllExportsRequest,
            pb::UpdateExportSchedulesRequest,
            pb::ListExportRunsRequest,
            pb::GetExportRunRequest,
            pb::WatchExportRunRequest,
            pb::CancelExportRunRequest,
            pb::GetEnvironmentRequest,
            pb::UpdateEnvironmentRequest,
            pb::ListEnvironmentsRequest,
            pb::CreateEntityRequest,
            pb::UpdateEntityRequest,
            pb::GetEntityRequest,
            pb::ListEntitiesRequest,
            pb::DeleteEntityRequest,
            pb::WriteRecordsRequest,
            pb::CreateSegmentRequest,
            pb::GetSegmentRequest,
            pb::ListSegmentsRequest,
            pb::UpdateSegmentRequest,
            pb::DeleteSegmentRequest,
            pb::SetSegmentMembersRequest,
            pb::ListEligibleSegmentsRequest,
            pb::StartRefreshRequest,
            pb::CompleteRefreshRequest,
            pb::RunSystemRefreshRequest,
            pb::GetSystemRefreshRequest,
            pb::PreviewExportRequest,
            pb::ListRejectedRecordsRequest,
            pb::CreateAlertPolicyRequest,
            pb::GetAlertPolicyRequest,
            pb::ListAlertPoliciesRequest,
            pb::UpdateAlertPolicyRequest,
            pb::DeleteAlertPolicyRequest,
            pb::ListAlertEventsRequest,
            pb::ListAuditEventsRequest,
        )
    };
}

/// Checks a decoded message if it is a request of exportd's services; other messages (the
/// answers a client decodes) have no request bounds.
pub fn check_decoded(message: &dyn Any) -> Result<(), Error> {
    macro_rules! dispatch {
        ($($request:ty),* $(,)?) => {
            $(
                if let Some(request) = message.downcast_ref::<$request>() {
                    return request.check_bounds();
                }
            )*
        };
    }
    for_each_request!(dispatch);
    Ok(())
}

/// Requests that name one resource and nothing else.
macro_rules! name_only {
    ($($request:ty => $field:ident),* $(,)?) => {
        $(
            impl Bounded for $request {
                fn bounds(&self, b: &mut Bounds, prefix: &str) {
                    b.text(prefix, stringify!($field), &self.$field, limit::NAME);
                }
            }
        )*
    };
}

name_only!(
    pb::GetConnectionRequest => name,
    pb::TestConnectionRequest => name,
    pb::GetExportRequest => name,
    pb::DetachConnectionRequest => name,
    pb::RunAllExportsRequest => parent,
    pb::GetExportRunRequest => name,
    pb::WatchExportRunRequest => name,
    pb::CancelExportRunRequest => name,
    pb::GetEnvironmentRequest => name,
    pb::GetEntityRequest => name,
    pb::DeleteEntityRequest => name,
    pb::GetSegmentRequest => name,
    pb::DeleteSegmentRequest => name,
    pb::StartRefreshRequest => name,
    pb::CompleteRefreshRequest => name,
    pb::RunSystemRefreshRequest => parent,
    pb::GetSystemRefreshRequest => name,
    pb::GetAlertPolicyRequest => name,
);

impl Bounded for pb::PreviewExportRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "name", &self.name, limit::NAME);
        let max = crate::engine::preview::MAX_SAMPLE as i32;
        if !(0..=max).contains(&self.sample_size) {
            b.violation(
                limit::path(prefix, "sample_size"),
                format!("must be between 0 and {max} (got {})", self.sample_size),
            );
        }
    }
}

impl Bounded for pb::ListConnectionTypesRequest {
    fn bounds(&self, _: &mut Bounds, _: &str) {}
}

/// The paging fields every list request has.
fn page(b: &mut Bounds, prefix: &str, page_token: &str) {
    b.text(prefix, "page_token", page_token, limit::PAGE_TOKEN);
}

fn list_query(b: &mut Bounds, prefix: &str, filter: &str, order_by: &str) {
    b.text(prefix, "filter", filter, limit::LIST_QUERY);
    b.text(prefix, "order_by", order_by, limit::LIST_QUERY);
}

fn update_mask(b: &mut Bounds, prefix: &str, mask: &Option<prost_types::FieldMask>) {
    if let Some(mask) = mask {
        b.texts(
            prefix,
            "update_mask.paths",
            &mask.paths,
            limit::MASK_PATHS,
            limit::MASK_PATH,
        );
    }
}

impl Bounded for pb::ListConnectionsRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        page(b, prefix, &self.page_token);
        list_query(b, prefix, &self.filter, &self.order_by);
    }
}

impl Bounded for pb::ListExportsRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        page(b, prefix, &self.page_token);
        list_query(b, prefix, &self.filter, &self.order_by);
    }
}

impl Bounded for pb::ListExportRunsRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        page(b, prefix, &self.page_token);
        list_query(b, prefix, &self.filter, &self.order_by);
    }
}

impl Bounded for pb::ListEnvironmentsRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        page(b, prefix, &self.page_token);
    }
}

impl Bounded for pb::ListEntitiesRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        page(b, prefix, &self.page_token);
    }
}

impl Bounded for pb::ListSegmentsRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        page(b, prefix, &self.page_token);
    }
}

impl Bounded for pb::ListRejectedRecordsRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        page(b, prefix, &self.page_token);
        b.text(prefix, "filter", &self.filter, limit::LIST_QUERY);
    }
}

impl Bounded for pb::ListAlertPoliciesRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        page(b, prefix, &self.page_token);
    }
}

impl Bounded for pb::ListAlertEventsRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        page(b, prefix, &self.page_token);
        b.text(prefix, "filter", &self.filter, limit::LIST_QUERY);
    }
}

impl Bounded for pb::ListAuditEventsRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        page(b, prefix, &self.page_token);
        list_query(b, prefix, &self.filter, &self.order_by);
    }
}

impl Bounded for pb::Connection {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "name", &self.name, limit::NAME);
        b.text(prefix, "display_name", &self.display_name, limit::DISPLAY_NAME);
        b.text(prefix, "description", &self.description, limit::DESCRIPTION);
        b.text(prefix, "type", &self.r#type, limit::ID);
        b.map(
            prefix,
            "config",
            self.config.iter(),
            limit::MAP_KEY,
            limit::CONFIG_VALUE,
        );
        b.map(
            prefix,
            "secrets",
            self.secrets.iter(),
            limit::MAP_KEY,
            limit::SECRET_VALUE,
        );
        b.text(prefix, "etag", &self.etag, limit::ETAG);
    }
}

impl Bounded for pb::CreateConnectionRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        b.text(prefix, "connection_id", &self.connection_id, limit::ID);
        b.text(prefix, "request_id", &self.request_id, limit::REQUEST_ID);
        if let Some(connection) = &self.connection {
            b.nested(prefix, "connection", connection);
        }
    }
}

impl Bounded for pb::UpdateConnectionRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        if let Some(connection) = &self.connection {
            b.nested(prefix, "connection", connection);
        }
        update_mask(b, prefix, &self.update_mask);
    }
}

impl Bounded for pb::DeleteConnectionRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "name", &self.name, limit::NAME);
        b.text(prefix, "etag", &self.etag, limit::ETAG);
    }
}

impl Bounded for pb::Schedule {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        use pb::schedule::Trigger;
        match &self.trigger {
            Some(Trigger::Recurrence(r)) => {
                let at = limit::path(prefix, "recurrence");
                b.text(&at, "time_of_day", &r.time_of_day, limit::TIME_OF_DAY);
                b.text(&at, "time_zone", &r.time_zone, limit::TIME_ZONE);
                b.count(&at, "days_of_week", r.days_of_week.len(), limit::DAYS_OF_WEEK);
            }
            Some(Trigger::Cron(c)) => {
                let at = limit::path(prefix, "cron");
                b.text(&at, "expression", &c.expression, limit::CRON_EXPRESSION);
                b.text(&at, "time_zone", &c.time_zone, limit::TIME_ZONE);
            }
            Some(Trigger::SystemRefresh(_)) | None => {}
        }
    }
}

impl Bounded for pb::Export {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "name", &self.name, limit::NAME);
        b.text(prefix, "display_name", &self.display_name, limit::DISPLAY_NAME);
        b.text(prefix, "description", &self.description, limit::DESCRIPTION);
        b.text(prefix, "connection", &self.connection, limit::NAME);
        b.texts(
            prefix,
            "entities",
            &self.entities,
            limit::SOURCES_PER_EXPORT,
            limit::NAME,
        );
        b.texts(
            prefix,
            "segments",
            &self.segments,
            limit::SOURCES_PER_EXPORT,
            limit::NAME,
        );
        if b.count(
            prefix,
            "field_mappings",
            self.field_mappings.len(),
            limit::FIELD_MAPPINGS,
        ) {
            for (i, mapping) in self.field_mappings.iter().enumerate() {
                let at = format!("{}[{i}]", limit::path(prefix, "field_mappings"));
                b.text(&at, "source_field", &mapping.source_field, limit::MAPPED_FIELD);
                b.text(&at, "target_field", &mapping.target_field, limit::MAPPED_FIELD);
            }
        }
        b.map(
            prefix,
            "settings",
            self.settings.iter(),
            limit::MAP_KEY,
            limit::CONFIG_VALUE,
        );
        if let Some(schedule) = &self.schedule {
            b.nested(prefix, "schedule", schedule);
        }
        b.text(prefix, "etag", &self.etag, limit::ETAG);
    }
}

impl Bounded for pb::CreateExportRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        b.text(prefix, "export_id", &self.export_id, limit::ID);
        b.text(prefix, "request_id", &self.request_id, limit::REQUEST_ID);
        if let Some(export) = &self.export {
            b.nested(prefix, "export", export);
        }
    }
}

impl Bounded for pb::UpdateExportRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        if let Some(export) = &self.export {
            b.nested(prefix, "export", export);
        }
        update_mask(b, prefix, &self.update_mask);
    }
}

impl Bounded for pb::DeleteExportRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "name", &self.name, limit::NAME);
        b.text(prefix, "etag", &self.etag, limit::ETAG);
    }
}

impl Bounded for pb::DuplicateExportRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "name", &self.name, limit::NAME);
        b.text(prefix, "export_id", &self.export_id, limit::ID);
        b.text(prefix, "display_name", &self.display_name, limit::DISPLAY_NAME);
    }
}

impl Bounded for pb::RunExportRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "name", &self.name, limit::NAME);
        b.text(prefix, "request_id", &self.request_id, limit::REQUEST_ID);
    }
}

impl Bounded for pb::UpdateExportSchedulesRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        b.texts(prefix, "names", &self.names, limit::EXPORTS_PER_BATCH, limit::NAME);
        if let Some(schedule) = &self.schedule {
            b.nested(prefix, "schedule", schedule);
        }
    }
}

impl Bounded for pb::AlertPolicy {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "name", &self.name, limit::NAME);
        b.text(prefix, "display_name", &self.display_name, limit::DISPLAY_NAME);
        b.text(prefix, "connection", &self.connection, limit::NAME);
        b.count(prefix, "conditions", self.conditions.len(), limit::ALERT_CONDITIONS);
        b.texts(
            prefix,
            "exports",
            &self.exports,
            limit::EXPORTS_PER_ALERT_POLICY,
            limit::NAME,
        );
        b.text(prefix, "etag", &self.etag, limit::ETAG);
    }
}

impl Bounded for pb::CreateAlertPolicyRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        b.text(prefix, "alert_policy_id", &self.alert_policy_id, limit::ID);
        b.text(prefix, "request_id", &self.request_id, limit::REQUEST_ID);
        if let Some(policy) = &self.alert_policy {
            b.nested(prefix, "alert_policy", policy);
        }
    }
}

impl Bounded for pb::UpdateAlertPolicyRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        if let Some(policy) = &self.alert_policy {
            b.nested(prefix, "alert_policy", policy);
        }
        update_mask(b, prefix, &self.update_mask);
    }
}

impl Bounded for pb::DeleteAlertPolicyRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "name", &self.name, limit::NAME);
        b.text(prefix, "etag", &self.etag, limit::ETAG);
    }
}

impl Bounded for pb::UpdateEnvironmentRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        if let Some(environment) = &self.environment {
            let at = limit::path(prefix, "environment");
            b.text(&at, "name", &environment.name, limit::NAME);
            b.text(&at, "display_name", &environment.display_name, limit::DISPLAY_NAME);
            if let Some(schedule) = &environment.system_refresh_schedule {
                b.nested(&at, "system_refresh_schedule", schedule);
            }
        }
        update_mask(b, prefix, &self.update_mask);
    }
}

impl Bounded for pb::Entity {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "name", &self.name, limit::NAME);
        b.text(prefix, "display_name", &self.display_name, limit::DISPLAY_NAME);
        b.text(prefix, "primary_key", &self.primary_key, limit::FIELD_NAME);
        if b.count(prefix, "fields", self.fields.len(), limit::ENTITY_FIELDS) {
            for (i, field) in self.fields.iter().enumerate() {
                let at = format!("{}[{i}]", limit::path(prefix, "fields"));
                b.text(&at, "name", &field.name, limit::FIELD_NAME);
                b.text(&at, "description", &field.description, limit::FIELD_DESCRIPTION);
                b.text(&at, "mapping", &field.mapping, limit::FIELD_MAPPING_DETAILS);
            }
        }
    }
}

impl Bounded for pb::CreateEntityRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        b.text(prefix, "entity_id", &self.entity_id, limit::ID);
        if let Some(entity) = &self.entity {
            b.nested(prefix, "entity", entity);
        }
    }
}

/// Records themselves are checked against the entity's schema (`domain::catalog`); here, how
/// many a message carries and the delete keys.
impl Bounded for pb::WriteRecordsRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "entity", &self.entity, limit::NAME);
        let records = self.upserts.len() + self.deletes.len();
        if records > limit::RECORDS_PER_MESSAGE {
            let max = limit::RECORDS_PER_MESSAGE;
            b.violation(
                limit::path(prefix, "upserts"),
                format!("at most {max} upserts and deletes per message (got {records}); split the batch"),
            );
            return;
        }
        b.texts(
            prefix,
            "deletes",
            &self.deletes,
            limit::RECORDS_PER_MESSAGE,
            limit::RECORD_KEY,
        );
    }
}

impl Bounded for pb::Segment {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "name", &self.name, limit::NAME);
        b.text(prefix, "display_name", &self.display_name, limit::DISPLAY_NAME);
        b.text(prefix, "entity", &self.entity, limit::NAME);
        if let Some(pb::segment::Definition::Rule(rule)) = &self.definition {
            b.text(prefix, "rule", rule, limit::RULE);
        }
    }
}

impl Bounded for pb::CreateSegmentRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "parent", &self.parent, limit::NAME);
        b.text(prefix, "segment_id", &self.segment_id, limit::ID);
        if let Some(segment) = &self.segment {
            b.nested(prefix, "segment", segment);
        }
    }
}

impl Bounded for pb::UpdateEntityRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        if let Some(entity) = &self.entity {
            b.nested(prefix, "entity", entity);
        }
        update_mask(b, prefix, &self.update_mask);
    }
}

impl Bounded for pb::UpdateSegmentRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        if let Some(segment) = &self.segment {
            b.nested(prefix, "segment", segment);
        }
        update_mask(b, prefix, &self.update_mask);
    }
}

impl Bounded for pb::SetSegmentMembersRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "segment", &self.segment, limit::NAME);
        b.texts(
            prefix,
            "keys",
            &self.keys,
            limit::MEMBER_KEYS_PER_MESSAGE,
            limit::RECORD_KEY,
        );
    }
}

impl Bounded for pb::ListEligibleSegmentsRequest {
    fn bounds(&self, b: &mut Bounds, prefix: &str) {
        b.text(prefix, "connection", &self.connection, limit::NAME);
        b.map(
            prefix,
            "settings",
            self.settings.iter(),
            limit::MAP_KEY,
            limit::CONFIG_VALUE,
        );
        page(b, prefix, &self.page_token);
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// The last segment of a Rust type path: the protobuf message name.
    fn short_name<T>() -> &'static str {
        let full = std::any::type_name::<T>();
        full.rsplit("::").next().unwrap_or(full)
    }

    #[test]
    fn every_rpc_request_is_bounded() {
        macro_rules! names {
            ($($request:ty),* $(,)?) => { vec![$(short_name::<$request>()),*] };
        }
        let bounded: Vec<&str> = for_each_request!(names);
        let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut missing = Vec::new();
        for file in set.file.iter().filter(|f| f.package() == "exportd.v1") {
            for service in &file.service {
                for method in &service.method {
                    let input = method.input_type().rsplit('.').next().unwrap();
                    if !bounded.contains(&input) {
                        missing.push(format!("{}.{} ({input})", service.name(), method.name()));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "requests without bounds: {missing:?}");
    }

    #[test]
    fn answers_are_not_requests() {
        assert!(check_decoded(&pb::Export::default()).is_ok());
        let request = pb::GetExportRequest { name: "x".repeat(300) };
        let err = check_decoded(&request).unwrap_err();
        assert_eq!(err.field_violations[0].field, "name");
    }
}
