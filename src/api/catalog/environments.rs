//! Environments: read, list, and update their settings (system refresh schedule).

use super::CatalogApi;
use crate::api::{convert, mask, pages, required};
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::domain::names::EnvironmentName;
use crate::domain::paging;
use crate::domain::schedule::Trigger;
use crate::domain::time::{from_datetime, now_micros, to_datetime};
use crate::error::{Error, Result};
use crate::pb;

impl CatalogApi {
    pub(super) async fn get_environment_(
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

    pub(super) async fn list_environments_(
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

    pub(super) async fn update_environment_(
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
