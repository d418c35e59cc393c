//! ListEligibleSegments: the segments a connection (with export settings) may receive.

use std::collections::BTreeMap;

use super::CatalogApi;
use crate::api::{convert, pages};
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::connectors::registry;
use crate::domain::connection_type::check_map;
use crate::domain::eligibility::{Destination, SegmentFacts};
use crate::domain::names::ConnectionName;
use crate::domain::paging;
use crate::error::{Error, Result};
use crate::pb;

impl CatalogApi {
    pub(super) async fn list_eligible_(
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
}
