//! ExportService: export management (create, read, list, update, delete, duplicate, detach,
//! batch schedules); runs are in `runs`. PreviewExport and ListRejectedRecords are authorized
//! like the other edits and then answer UNIMPLEMENTED: they are not built yet.

use std::collections::{HashMap, HashSet};

use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{State, convert, mask, pages, principal, required, respond};
use crate::auth::policy::{self, Action, Facts};
use crate::auth::{Principal, Role};
use crate::connectors::registry;
use crate::domain::catalog::Segment;
use crate::domain::connection::{Connection, check_display_name};
use crate::domain::environment::EnvironmentKind;
use crate::domain::export::{
    self, Export, ExportState, FieldMapping, default_schedule, parse_sources, segment_facts, segment_warnings,
};
use crate::domain::list_query::{FieldKind, Filter, FilterField, Value as FilterValue, parse_filter, parse_order_by};
use crate::domain::names::{
    ConnectionName, EnvironmentName, ExportName, RejectedRecordParent, SegmentName, id_or_generate,
};
use crate::domain::run::RunState;
use crate::domain::schedule::{Schedule, Trigger};
use crate::domain::time::{now_micros, to_datetime};
use crate::domain::{etag, paging};
use crate::engine::preview;
use crate::error::{Error, FieldViolation, Result};
use crate::pb;
use crate::pb::export_service_server::ExportService;
use crate::store::exports::{ExportQuery, StoredExport};
use crate::store::placement::Placement;
use crate::store::rejects::RejectQuery;
use crate::store::request_ids::{self, RequestKey};

/// ListRejectedRecords filters: `source = "…"`, `code = "…"` (API.md).
const REJECT_FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "source",
        kind: FieldKind::Text,
        allowed: &[],
    },
    FilterField {
        name: "code",
        kind: FieldKind::Keyword,
        allowed: &[],
    },
];

const FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "display_name",
        kind: FieldKind::Text,
        allowed: &[],
    },
    FilterField {
        name: "connection_type",
        kind: FieldKind::Keyword,
        allowed: &[],
    },
    FilterField {
        name: "state",
        kind: FieldKind::Keyword,
        allowed: &["ACTIVE", "DETACHED"],
    },
    FilterField {
        name: "status",
        kind: FieldKind::Keyword,
        allowed: RunState::NAMES,
    },
    FilterField {
        name: "kind",
        kind: FieldKind::Keyword,
        allowed: &["DATA_OUT", "SEGMENT"],
    },
    // A connection name of the environment (checked by `check_connection_filter`).
    FilterField {
        name: "connection",
        kind: FieldKind::Keyword,
        allowed: &[],
    },
];
/// Clients copy enum values from the proto (`EXPORT_STATE_DETACHED`) or from the docs
/// (`DETACHED`); both mean the same.
const ENUM_PREFIXES: &[(&str, &str)] = &[
    ("state", "EXPORT_STATE_"),
    ("status", "RUN_STATE_"),
    ("kind", "EXPORT_KIND_"),
];
const ORDER_KEYS: &[&str] = &[
    "display_name",
    "connection",
    "connection_type",
    "status",
    "schedule",
    "last_refreshed_time",
    "create_time",
    "update_time",
];
/// `schedule.enabled` switches a schedule on or off and keeps its trigger.
const UPDATABLE: &[&str] = &[
    "display_name",
    "description",
    "connection",
    "entities",
    "segments",
    "field_mappings",
    "settings",
    "sync_mode",
    "schedule",
    "schedule.enabled",
];
const MAP_FIELDS: &[&str] = &["settings"];
/// Where an export that would write where another one does is reported: the setting that
/// decides (its default is the export id).
const FOLDER_FIELD: &str = "export.settings.folder";
/// UpdateExportSchedules names at most this many exports (one transaction).
const MAX_BATCH: usize = crate::domain::bounds::EXPORTS_PER_BATCH;

pub struct ExportApi {
    state: State,
    runs: super::runs::Runs,
}

/// The environment of a request, as exports need it.
struct Place {
    env: String,
    kind: EnvironmentKind,
}

impl ExportApi {
    pub fn new(state: State) -> Self {
        ExportApi {
            runs: super::runs::Runs::new(state.clone()),
            state,
        }
    }

    /// The environment exports are shown and validated in: its id and kind.
    async fn environment(&self, env: &str) -> Result<Place> {
        let kind = self
            .state
            .store
            .environment_kind(env)
            .await?
            .ok_or_else(|| Error::not_found("environment", format!("environments/{env}")))?;
        Ok(Place {
            env: env.to_string(),
            kind,
        })
    }

    /// Loads an export for an edit: NOT_FOUND if missing, then the policy with what the
    /// export is (contributors edit only attached exports over shared connections).
    async fn editable_export(
        &self,
        principal: &Principal,
        name: &ExportName,
        action: Action,
    ) -> Result<(StoredExport, Role)> {
        // Without a role in the environment, the export does not exist for the caller.
        policy::role_in(principal, &name.env)?;
        let stored = self.state.store.export_or_not_found(name).await?;
        let role = policy::authorize(
            principal,
            &name.env,
            action,
            Facts::export(stored.editable_by_contributors()),
        )
        .map_err(|e| e.with_meta("export", name.to_string()))?;
        Ok((stored, role))
    }

    /// The whole validation of an export as it would be stored: INVALID_ARGUMENT with every
    /// problem, then eligibility (FAILED_PRECONDITION).
    async fn validate(&self, environment: &Place, export: &Export, connection: Option<&Connection>) -> Result<()> {
        let catalog = self.state.store.catalog_facts(export).await?;
        let spec = match connection {
            Some(c) => Some(registry::type_of(c)?),
            None => None,
        };
        let destination = match (connection, spec) {
            (Some(c), Some(spec)) => Some(export::destination(environment.kind, spec, c, export)),
            _ => None,
        };
        export::validate_all("export", export, &catalog, destination.as_ref())?;
        Ok(())
    }

    /// Exports as `role` sees them: permission, member counts and limit warnings. The
    /// segments of all of them are read in one query.
    async fn show(&self, role: Role, environment: &Place, items: &[StoredExport]) -> Result<Vec<pb::Export>> {
        let mut ids: Vec<String> = items
            .iter()
            .flat_map(|s| s.export.segments.iter().map(|n| n.id.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        let segments: HashMap<SegmentName, Segment> = self
            .state
            .store
            .segments_by_ids(&environment.env, &ids)
            .await?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        items
            .iter()
            .map(|stored| {
                let export = &stored.export;
                let chosen: Vec<&Segment> = export.segments.iter().filter_map(|n| segments.get(n)).collect();
                let member_counts = chosen.iter().map(|s| (s.name.to_string(), s.member_count)).collect();
                let warnings = match (&stored.connection, export.state) {
                    (Some(connection), ExportState::Active) => {
                        let spec = registry::type_of(connection)?;
                        let destination = export::destination(environment.kind, spec, connection, export);
                        let facts: Vec<_> = chosen.iter().map(|s| segment_facts(s)).collect();
                        segment_warnings(&destination, &facts)
                    }
                    _ => Vec::new(),
                };
                Ok(convert::export(
                    export,
                    &convert::ExportView {
                        connection: stored.connection.as_ref(),
                        may_see_connection: stored
                            .connection
                            .as_ref()
                            .is_some_and(|c| policy::can_see_connection(role, c.contributors_can_use)),
                        may_edit: policy::may_edit_export(role, stored.editable_by_contributors()),
                        member_counts,
                        warnings,
                    },
                ))
            })
            .collect()
    }

    async fn show_one(&self, role: Role, environment: &Place, stored: StoredExport) -> Result<pb::Export> {
        self.show(role, environment, std::slice::from_ref(&stored))
            .await?
            .pop()
            .ok_or_else(|| Error::internal("an export was lost while converting it"))
    }

    /// The connection an export is to be attached to: named, in the export's environment, and
    /// existing. For a caller who may not see every connection (a contributor), a missing
    /// connection is denied exactly like one that is not shared (`facts(false)`), so that the
    /// answer does not tell which connections exist; admins learn that it is missing
    /// (INVALID_ARGUMENT).
    async fn attachable_connection(
        &self,
        principal: &Principal,
        env: &str,
        text: &str,
        action: Action,
        facts: impl Fn(bool) -> Facts,
    ) -> Result<Connection> {
        let field = "export.connection";
        if text.is_empty() {
            return Err(Error::invalid(
                field,
                "a connection is required (environments/{environment}/connections/{connection}); \
                 DetachConnection removes an export's connection",
            ));
        }
        let name = ConnectionName::parse(field, text)?;
        if name.env != env {
            return Err(Error::invalid(
                field,
                format!("'{name}' is not in environments/{env}; an export uses a connection of its own environment"),
            ));
        }
        let connection = self.state.store.get_connection(&name).await?;
        policy::authorize(
            principal,
            env,
            action,
            facts(connection.as_ref().is_some_and(|c| c.contributors_can_use)),
        )
        .map_err(|e| e.with_meta("connection", name.to_string()))?;
        connection.ok_or_else(|| Error::invalid(field, format!("connection '{name}' does not exist")))
    }

    async fn create(&self, principal: Principal, request: pb::CreateExportRequest) -> Result<pb::Export> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        let role = policy::role_in(&principal, &parent.env)?;
        request_ids::check_format(&request.request_id)?;
        let input = required("export", &request.export)?;
        let id = id_or_generate("export_id", &request.export_id, "export")?;
        let environment = self.environment(&parent.env).await?;
        let connection = self
            .attachable_connection(
                &principal,
                &parent.env,
                &input.connection,
                Action::CreateExport,
                Facts::connection,
            )
            .await?;

        let mut violations = Vec::new();
        let kind = convert::export_kind_from_pb(input.kind);
        if kind.is_none() {
            violations.push(FieldViolation {
                field: "export.kind".into(),
                description: "a kind is required: DATA_OUT or SEGMENT".into(),
            });
        }
        let sync_mode = collect(
            &mut violations,
            convert::sync_mode_from_pb("export.sync_mode", input.sync_mode),
        );
        let schedule = match &input.schedule {
            None => Some(default_schedule()),
            Some(s) => collect(
                &mut violations,
                convert::schedule_from_pb("export.schedule", s, Some(Trigger::SystemRefresh)),
            ),
        };
        let (entities, segments, source_violations) =
            parse_sources("export", &parent.env, &input.entities, &input.segments);
        violations.extend(source_violations);
        let (Some(kind), Some(sync_mode), Some(schedule), true) = (kind, sync_mode, schedule, violations.is_empty())
        else {
            return Err(Error::invalid_fields(violations));
        };

        let now = now_micros();
        let schedule = schedule.anchored(None, to_datetime(now));
        let mut draft = Export {
            name: ExportName::new(&parent.env, &id),
            display_name: input.display_name.trim().to_string(),
            description: input.description.clone(),
            connection: Some(connection.name.clone()),
            kind,
            entities,
            segments,
            field_mappings: mappings_from_pb(&input.field_mappings),
            settings: input.settings.clone().into_iter().collect(),
            sync_mode,
            schedule,
            next_run_at: None,
            state: ExportState::Active,
            last_refreshed_time: None,
            last_run: None,
            creator: principal.subject.clone(),
            create_time: now,
            update_time: now,
            revision: 0,
        };
        draft.refresh_schedule_times(to_datetime(now));
        self.validate(&environment, &draft, Some(&connection)).await?;
        let stored = StoredExport {
            export: draft,
            connection: Some(connection),
        };
        let placement = Placement {
            roots: self.state.settings.local_roots(),
            field: FOLDER_FIELD,
        };
        if request.validate_only {
            self.state
                .store
                .check_export_placement(&stored.export, placement.roots.exports_root, placement.field)
                .await?;
            let mut shown = self.show_one(role, &environment, stored).await?;
            shown.etag.clear();
            return Ok(shown);
        }
        let hash = request_ids::request_hash(&hashable(&request));
        let key = RequestKey::given("CreateExport", &request.request_id, &hash);
        let created = self.state.store.create_export(&stored.export, key, &placement).await?;
        self.state.engine.schedules_changed();
        tracing::info!(export = %created.export.name, kind = ?created.export.kind, "export created");
        self.show_one(role, &environment, created).await
    }

    async fn get(&self, principal: Principal, request: pb::GetExportRequest) -> Result<pb::Export> {
        let name = ExportName::parse("name", &request.name)?;
        let role = policy::authorize(&principal, &name.env, Action::GetExport, Facts::default())?;
        let stored = self.state.store.export_or_not_found(&name).await?;
        let environment = self.environment(&name.env).await?;
        self.show_one(role, &environment, stored).await
    }

    async fn list(&self, principal: Principal, request: pb::ListExportsRequest) -> Result<pb::ListExportsResponse> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        let role = policy::authorize(&principal, &parent.env, Action::ListExports, Facts::default())?;
        let filter = parse_filter(&request.filter, FILTER_FIELDS, ENUM_PREFIXES)
            .map_err(|e| Error::invalid("filter", e.to_string()).with_meta("position", e.position.to_string()))?;
        if let Some(filter) = &filter {
            check_connection_filter(filter, &parent.env)?;
        }
        let order = parse_order_by(&request.order_by, ORDER_KEYS, "display_name")
            .map_err(|e| Error::invalid("order_by", e.to_string()).with_meta("position", e.position.to_string()))?;
        let fingerprint = paging::fingerprint(&[&request.parent, &request.filter, &request.order_by]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        let environment = self.environment(&parent.env).await?;
        let query = ExportQuery {
            env: &parent.env,
            filter: filter.as_ref(),
            order: &order,
            page,
        };
        let (items, total) = self.state.store.list_exports(&query).await?;
        let mut exports = self.show(role, &environment, &items).await?;
        pages::fit(&mut exports);
        Ok(pb::ListExportsResponse {
            next_page_token: paging::next_token(page, exports.len(), total, &fingerprint),
            exports,
            total_size: total.min(i32::MAX as u64) as i32,
        })
    }

    async fn update(&self, principal: Principal, request: pb::UpdateExportRequest) -> Result<pb::Export> {
        let input = required("export", &request.export)?;
        let name = ExportName::parse("export.name", &input.name)?;
        if request
            .update_mask
            .as_ref()
            .is_some_and(|m| m.paths.iter().any(|p| p == "kind"))
        {
            return Err(Error::invalid(
                "update_mask",
                "kind cannot change after creation; create a new export (or duplicate this one) instead",
            ));
        }
        let paths = mask::paths(&request.update_mask, UPDATABLE, MAP_FIELDS, || implied_paths(input))?;
        let (current, role) = self.editable_export(&principal, &name, Action::UpdateExport).await?;
        let current_etag = etag::etag(current.export.create_time, current.export.revision);
        if !input.etag.is_empty() && input.etag != current_etag {
            return Err(Error::etag_mismatch(name.to_string(), &input.etag, &current_etag));
        }
        if request.update_mask.is_none()
            && input.kind != 0
            && convert::export_kind_from_pb(input.kind) != Some(current.export.kind)
        {
            return Err(Error::invalid("export.kind", "kind cannot change after creation"));
        }
        let was_editable = current.editable_by_contributors();
        let mut export = current.export.clone();
        let mut connection = current.connection.clone();
        let mut sources_changed = false;
        let mut schedule_changed = false;
        let mut violations = Vec::new();
        for path in &paths {
            match path.as_str() {
                "display_name" => export.display_name = input.display_name.trim().to_string(),
                "description" => export.description = input.description.clone(),
                "connection" => {
                    let attached = self
                        .attachable_connection(
                            &principal,
                            &name.env,
                            &input.connection,
                            Action::UpdateExport,
                            |shared| Facts::export_onto(was_editable, shared),
                        )
                        .await?;
                    // Setting a connection on a detached export attaches it again.
                    export.connection = Some(attached.name.clone());
                    export.state = ExportState::Active;
                    connection = Some(attached);
                    schedule_changed = true;
                }
                "entities" => {
                    let (entities, _, v) = parse_sources("export", &name.env, &input.entities, &[]);
                    violations.extend(v);
                    export.entities = entities;
                    sources_changed = true;
                }
                "segments" => {
                    let (_, segments, v) = parse_sources("export", &name.env, &[], &input.segments);
                    violations.extend(v);
                    export.segments = segments;
                    sources_changed = true;
                }
                "field_mappings" => export.field_mappings = mappings_from_pb(&input.field_mappings),
                "settings" => export.settings = input.settings.clone().into_iter().collect(),
                "sync_mode" => {
                    if let Some(mode) = collect(
                        &mut violations,
                        convert::sync_mode_from_pb("export.sync_mode", input.sync_mode),
                    ) {
                        export.sync_mode = mode;
                    }
                }
                "schedule" => {
                    // An unset schedule is the default one (AIP-134: clearing a field resets it).
                    let schedule = match &input.schedule {
                        None => Some(default_schedule()),
                        Some(s) => collect(
                            &mut violations,
                            convert::schedule_from_pb("export.schedule", s, Some(Trigger::SystemRefresh)),
                        ),
                    };
                    if let Some(schedule) = schedule {
                        export.schedule = schedule.anchored(Some(&current.export.schedule), to_datetime(now_micros()));
                        schedule_changed = true;
                    }
                }
                "schedule.enabled" => {
                    export.schedule.enabled = input.schedule.as_ref().is_some_and(|s| s.enabled);
                    schedule_changed = true;
                }
                path => {
                    if let Some(key) = mask::map_key(path, "settings") {
                        match input.settings.get(key) {
                            Some(v) if !v.is_empty() => {
                                export.settings.insert(key.to_string(), v.clone());
                            }
                            _ => {
                                export.settings.remove(key);
                            }
                        }
                    }
                }
            }
        }
        if !violations.is_empty() {
            return Err(Error::invalid_fields(violations));
        }
        // The next run is recomputed only when the schedule or the state changed: an overdue
        // next run (a pending catch-up) must survive unrelated edits.
        if schedule_changed && (export.schedule != current.export.schedule || export.state != current.export.state) {
            export.refresh_schedule_times(to_datetime(now_micros()));
        }
        let environment = self.environment(&name.env).await?;
        self.validate(&environment, &export, connection.as_ref()).await?;
        let stored = StoredExport { export, connection };
        // Where an export writes changes only with its connection or its settings.
        let moved = paths
            .iter()
            .any(|p| p == "connection" || p == "settings" || mask::map_key(p, "settings").is_some());
        let placement = Placement {
            roots: self.state.settings.local_roots(),
            field: FOLDER_FIELD,
        };
        if request.validate_only {
            if moved {
                self.state
                    .store
                    .check_export_placement(&stored.export, placement.roots.exports_root, placement.field)
                    .await?;
            }
            let mut shown = self.show_one(role, &environment, stored).await?;
            shown.etag = current_etag;
            return Ok(shown);
        }
        let updated = self
            .state
            .store
            .update_export(&stored.export, sources_changed, moved.then_some(&placement))
            .await?;
        self.state.engine.schedules_changed();
        tracing::info!(export = %name, paths = ?paths, "export updated");
        self.show_one(role, &environment, updated).await
    }

    async fn delete(&self, principal: Principal, request: pb::DeleteExportRequest) -> Result<pb::DeleteExportResponse> {
        let name = ExportName::parse("name", &request.name)?;
        let (current, _) = self.editable_export(&principal, &name, Action::DeleteExport).await?;
        let current_etag = etag::etag(current.export.create_time, current.export.revision);
        if !request.etag.is_empty() && request.etag != current_etag {
            return Err(Error::etag_mismatch(name.to_string(), &request.etag, &current_etag));
        }
        self.state.store.delete_export(&current.export).await?;
        tracing::info!(export = %name, "export deleted");
        Ok(pb::DeleteExportResponse { name: name.to_string() })
    }

    async fn duplicate(&self, principal: Principal, request: pb::DuplicateExportRequest) -> Result<pb::Export> {
        let name = ExportName::parse("name", &request.name)?;
        let (current, role) = self.editable_export(&principal, &name, Action::DuplicateExport).await?;
        let id = id_or_generate("export_id", &request.export_id, "export")?;
        let display_name = if request.display_name.trim().is_empty() {
            copy_name(&current.export.display_name)
        } else {
            if let Some(v) = check_display_name("display_name", &request.display_name) {
                return Err(Error::invalid_fields(vec![v]));
            }
            request.display_name.trim().to_string()
        };
        let now = now_micros();
        // The copy writes in its own folder (its export id): two exports never write to one
        // place. Every other setting is copied.
        let mut settings = current.export.settings.clone();
        settings.remove("folder");
        let mut copy = Export {
            name: ExportName::new(&name.env, &id),
            display_name,
            settings,
            last_refreshed_time: None,
            last_run: None,
            creator: principal.subject.clone(),
            create_time: now,
            update_time: now,
            revision: 0,
            ..current.export.clone()
        };
        copy.refresh_schedule_times(to_datetime(now));
        let placement = Placement {
            roots: self.state.settings.local_roots(),
            field: "export_id",
        };
        let created = self.state.store.create_export(&copy, None, &placement).await?;
        self.state.engine.schedules_changed();
        tracing::info!(export = %created.export.name, from = %name, "export duplicated");
        let environment = self.environment(&name.env).await?;
        self.show_one(role, &environment, created).await
    }

    async fn detach(&self, principal: Principal, request: pb::DetachConnectionRequest) -> Result<pb::Export> {
        let name = ExportName::parse("name", &request.name)?;
        let (current, role) = self
            .editable_export(&principal, &name, Action::DetachConnection)
            .await?;
        let environment = self.environment(&name.env).await?;
        if current.export.state == ExportState::Detached {
            // Already detached: nothing to do, and saying so as success lets a retry succeed.
            return self.show_one(role, &environment, current).await;
        }
        let mut export = current.export.clone();
        export.connection = None;
        export.state = ExportState::Detached;
        export.refresh_schedule_times(to_datetime(now_micros()));
        let updated = self.state.store.update_export(&export, false, None).await?;
        self.state.engine.schedules_changed();
        tracing::info!(export = %name, "connection detached from export");
        self.show_one(role, &environment, updated).await
    }

    /// PRODUCT.md §13: what a run started now would do; nothing is sent or changed. The
    /// sample's size is bounded by the codec (`api::bounds`).
    async fn preview(&self, principal: Principal, request: pb::PreviewExportRequest) -> Result<pb::ExportPreview> {
        let name = ExportName::parse("name", &request.name)?;
        self.editable_export(&principal, &name, Action::PreviewExport).await?;
        let sample_size = match request.sample_size {
            0 => preview::DEFAULT_SAMPLE,
            n => n.clamp(0, preview::MAX_SAMPLE as i32) as usize,
        };
        let preview = self.state.engine.preview(&name, sample_size).await?;
        let mut answer = convert::export_preview(&request.name, preview);
        // Wide records: the sample keeps the leading rows that fit an answer.
        pages::fit(&mut answer.sample);
        Ok(answer)
    }

    /// PRODUCT.md §12: the rejects of one run (parent = a run), or those outstanding for an
    /// export (parent = the export), in source and key order.
    async fn list_rejected(
        &self,
        principal: Principal,
        request: pb::ListRejectedRecordsRequest,
    ) -> Result<pb::ListRejectedRecordsResponse> {
        let parent = RejectedRecordParent::parse("parent", &request.parent)?;
        if let RejectedRecordParent::Run(run) = &parent {
            self.state.store.run_or_not_found(run).await.or_else(|e| {
                // Without a role, even the run's existence is not told.
                policy::role_in(&principal, parent.env())?;
                Err(e)
            })?;
        }
        let export = parent.export_name();
        self.editable_export(&principal, &export, Action::ListRejectedRecords)
            .await?;
        let filter = parse_filter(&request.filter, REJECT_FILTER_FIELDS, &[])
            .map_err(|e| Error::invalid("filter", e.to_string()))?;
        let fingerprint = paging::fingerprint(&[&request.parent, &request.filter]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        let run_id = match &parent {
            RejectedRecordParent::Run(run) => Some(run.id.as_str()),
            RejectedRecordParent::Export(_) => None,
        };
        let query = RejectQuery {
            export: &export,
            run_id,
            filter: filter.as_ref(),
            page,
        };
        let (rejects, total) = self.state.store.list_rejects(&query).await?;
        let mut rejected_records: Vec<pb::RejectedRecord> = rejects.iter().map(convert::rejected_record).collect();
        pages::fit(&mut rejected_records);
        Ok(pb::ListRejectedRecordsResponse {
            next_page_token: paging::next_token(page, rejected_records.len(), total, &fingerprint),
            rejected_records,
            total_size: total as i32,
        })
    }

    async fn update_schedules(
        &self,
        principal: Principal,
        request: pb::UpdateExportSchedulesRequest,
    ) -> Result<pb::UpdateExportSchedulesResponse> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        let role = policy::role_in(&principal, &parent.env)?;
        let mut violations = Vec::new();
        if request.names.is_empty() {
            violations.push(FieldViolation {
                field: "names".into(),
                description: "name at least one export".into(),
            });
        } else if request.names.len() > MAX_BATCH {
            violations.push(FieldViolation {
                field: "names".into(),
                description: format!("at most {MAX_BATCH} exports per request"),
            });
        }
        let mut names = Vec::with_capacity(request.names.len());
        let mut seen = HashSet::new();
        for (i, text) in request.names.iter().enumerate() {
            let field = format!("names[{i}]");
            match ExportName::parse(&field, text) {
                Err(e) => violations.extend(e.field_violations),
                Ok(n) if n.env != parent.env => violations.push(FieldViolation {
                    field,
                    description: format!("'{text}' is not in {parent}"),
                }),
                Ok(n) if !seen.insert(n.id.clone()) => violations.push(FieldViolation {
                    field,
                    description: format!("'{text}' is named more than once"),
                }),
                Ok(n) => names.push(n),
            }
        }
        let replacement: Option<Schedule> = match pb::ScheduleUpdateMode::try_from(request.mode) {
            Ok(pb::ScheduleUpdateMode::KeepIndividualSchedules) => None,
            Ok(pb::ScheduleUpdateMode::ReplaceSchedules) => match &request.schedule {
                None => {
                    violations.push(FieldViolation {
                        field: "schedule".into(),
                        description: "REPLACE_SCHEDULES needs the schedule to give every export".into(),
                    });
                    None
                }
                Some(s) => collect(
                    &mut violations,
                    convert::schedule_from_pb("schedule", s, Some(Trigger::SystemRefresh)),
                ),
            },
            _ => {
                violations.push(FieldViolation {
                    field: "mode".into(),
                    description: "a mode is required: KEEP_INDIVIDUAL_SCHEDULES or REPLACE_SCHEDULES".into(),
                });
                None
            }
        };
        if !violations.is_empty() {
            return Err(Error::invalid_fields(violations));
        }
        let environment = self.environment(&parent.env).await?;
        let ids: Vec<String> = names.iter().map(|n| n.id.clone()).collect();
        let mut found: HashMap<String, StoredExport> = self
            .state
            .store
            .exports_by_ids(&parent.env, &ids)
            .await?
            .into_iter()
            .map(|s| (s.export.name.id.clone(), s))
            .collect();
        // All or nothing: every export must exist and be editable by the caller before any
        // changes.
        let mut current = Vec::with_capacity(names.len());
        for name in &names {
            let stored = found
                .remove(&name.id)
                .ok_or_else(|| Error::not_found("export", name.to_string()))?;
            policy::authorize(
                &principal,
                &parent.env,
                Action::UpdateExportSchedules,
                Facts::export(stored.editable_by_contributors()),
            )
            .map_err(|e| e.concerning("export", &name.to_string()))?;
            current.push(stored);
        }
        check_answer_fits(&self.show(role, &environment, &current).await?)?;
        let now = to_datetime(now_micros());
        let mut changed = Vec::new();
        for stored in &current {
            let mut export = stored.export.clone();
            match &replacement {
                Some(schedule) => export.schedule = schedule.clone().anchored(Some(&stored.export.schedule), now),
                None => export.schedule.enabled = request.enabled,
            }
            if export.schedule != stored.export.schedule {
                export.refresh_schedule_times(now);
                changed.push(export);
            }
        }
        let mut updated: HashMap<String, StoredExport> = if changed.is_empty() {
            HashMap::new()
        } else {
            self.state
                .store
                .update_export_schedules(&changed)
                .await?
                .into_iter()
                .map(|s| (s.export.name.id.clone(), s))
                .collect()
        };
        self.state.engine.schedules_changed();
        tracing::info!(
            environment = %parent,
            named = names.len(),
            changed = changed.len(),
            "export schedules updated"
        );
        let result: Vec<StoredExport> = current
            .into_iter()
            .map(|stored| updated.remove(&stored.export.name.id).unwrap_or(stored))
            .collect();
        Ok(pb::UpdateExportSchedulesResponse {
            exports: self.show(role, &environment, &result).await?,
        })
    }
}

/// What a new schedule may add to an export as shown (a cron expression and time zone at
/// their bounds, a next run time).
const SCHEDULE_GROWTH_BYTES: usize = 512;

/// UpdateExportSchedules answers with every export it names, so a batch whose answer would
/// exceed an answer's 4 MiB is refused before anything changes.
fn check_answer_fits(current: &[pb::Export]) -> Result<()> {
    let size: usize = current.iter().map(|e| e.encoded_len() + SCHEDULE_GROWTH_BYTES).sum();
    if size <= pages::MAX_ANSWER_BYTES {
        return Ok(());
    }
    Err(Error::invalid(
        "names",
        format!(
            "the answer for these {} exports would take about {size} bytes, over the {} bytes an answer may take; \
             name fewer exports per request",
            current.len(),
            pages::MAX_ANSWER_BYTES
        ),
    ))
}

/// `connection = "…"` compares whole connection names: each must name a connection of the
/// listed environment (the connection itself need not exist: then nothing matches).
fn check_connection_filter(filter: &Filter, env: &str) -> Result<()> {
    match filter {
        Filter::And(a, b) | Filter::Or(a, b) => {
            check_connection_filter(a, env)?;
            check_connection_filter(b, env)
        }
        Filter::Not(inner) => check_connection_filter(inner, env),
        Filter::Compare {
            field,
            value: FilterValue::Word(text) | FilterValue::String(text),
            ..
        } if field == "connection" => match ConnectionName::parse("filter", text) {
            Ok(name) if name.env == env => Ok(()),
            Ok(name) => Err(Error::invalid(
                "filter",
                format!("connection '{name}' is not in environments/{env}"),
            )),
            Err(_) => Err(Error::invalid(
                "filter",
                format!(
                    "`connection` compares connection names (environments/{env}/connections/{{connection}}), not \"{text}\""
                ),
            )),
        },
        Filter::Compare { .. } => Ok(()),
    }
}

/// Keeps a result's value, or moves its field violations into `violations`.
fn collect<T>(violations: &mut Vec<FieldViolation>, result: Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err) if !err.field_violations.is_empty() => {
            violations.extend(err.field_violations);
            None
        }
        Err(err) => {
            violations.push(FieldViolation {
                field: String::new(),
                description: err.message,
            });
            None
        }
    }
}

fn mappings_from_pb(mappings: &[pb::FieldMapping]) -> Vec<FieldMapping> {
    mappings
        .iter()
        .map(|m| FieldMapping {
            source_field: m.source_field.trim().to_string(),
            target_field: m.target_field.trim().to_string(),
        })
        .collect()
}

/// "Copy of <name>", cut to the display name limit.
fn copy_name(display_name: &str) -> String {
    format!("Copy of {display_name}").chars().take(200).collect()
}

/// The request as it is bound to its request id.
fn hashable(request: &pb::CreateExportRequest) -> Vec<u8> {
    let mut copy = request.clone();
    copy.validate_only = false;
    copy.encode_to_vec()
}

/// Without an update mask, every field the client set is updated (AIP-134).
fn implied_paths(input: &pb::Export) -> Vec<String> {
    let mut paths = Vec::new();
    let mut add = |set: bool, path: &str| {
        if set {
            paths.push(path.to_string());
        }
    };
    add(!input.display_name.is_empty(), "display_name");
    add(!input.description.is_empty(), "description");
    add(!input.connection.is_empty(), "connection");
    add(!input.entities.is_empty(), "entities");
    add(!input.segments.is_empty(), "segments");
    add(!input.field_mappings.is_empty(), "field_mappings");
    add(!input.settings.is_empty(), "settings");
    add(input.sync_mode != 0, "sync_mode");
    add(input.schedule.is_some(), "schedule");
    paths
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl ExportService for ExportApi {
    async fn create_export(&self, request: Request<pb::CreateExportRequest>) -> Reply<pb::Export> {
        let principal = principal(&request)?;
        respond(self.create(principal, request.into_inner())).await
    }
    async fn get_export(&self, request: Request<pb::GetExportRequest>) -> Reply<pb::Export> {
        let principal = principal(&request)?;
        respond(self.get(principal, request.into_inner())).await
    }
    async fn list_exports(&self, request: Request<pb::ListExportsRequest>) -> Reply<pb::ListExportsResponse> {
        let principal = principal(&request)?;
        respond(self.list(principal, request.into_inner())).await
    }
    async fn update_export(&self, request: Request<pb::UpdateExportRequest>) -> Reply<pb::Export> {
        let principal = principal(&request)?;
        respond(self.update(principal, request.into_inner())).await
    }
    async fn delete_export(&self, request: Request<pb::DeleteExportRequest>) -> Reply<pb::DeleteExportResponse> {
        let principal = principal(&request)?;
        respond(self.delete(principal, request.into_inner())).await
    }
    async fn duplicate_export(&self, request: Request<pb::DuplicateExportRequest>) -> Reply<pb::Export> {
        let principal = principal(&request)?;
        respond(self.duplicate(principal, request.into_inner())).await
    }
    async fn detach_connection(&self, request: Request<pb::DetachConnectionRequest>) -> Reply<pb::Export> {
        let principal = principal(&request)?;
        respond(self.detach(principal, request.into_inner())).await
    }
    async fn run_export(&self, request: Request<pb::RunExportRequest>) -> Reply<pb::ExportRun> {
        let principal = principal(&request)?;
        respond(self.runs.run_export(principal, request.into_inner())).await
    }
    async fn run_all_exports(&self, request: Request<pb::RunAllExportsRequest>) -> Reply<pb::RunAllExportsResponse> {
        let principal = principal(&request)?;
        respond(self.runs.run_all(principal, request.into_inner())).await
    }
    async fn update_export_schedules(
        &self,
        request: Request<pb::UpdateExportSchedulesRequest>,
    ) -> Reply<pb::UpdateExportSchedulesResponse> {
        let principal = principal(&request)?;
        respond(self.update_schedules(principal, request.into_inner())).await
    }
    async fn list_export_runs(&self, request: Request<pb::ListExportRunsRequest>) -> Reply<pb::ListExportRunsResponse> {
        let principal = principal(&request)?;
        respond(self.runs.list(principal, request.into_inner())).await
    }
    async fn get_export_run(&self, request: Request<pb::GetExportRunRequest>) -> Reply<pb::ExportRun> {
        let principal = principal(&request)?;
        respond(self.runs.get(principal, request.into_inner())).await
    }
    type WatchExportRunStream = ReceiverStream<std::result::Result<pb::ExportRun, Status>>;
    async fn watch_export_run(&self, request: Request<pb::WatchExportRunRequest>) -> Reply<Self::WatchExportRunStream> {
        let principal = principal(&request)?;
        respond(self.runs.watch(principal, request.into_inner())).await
    }
    async fn cancel_export_run(&self, request: Request<pb::CancelExportRunRequest>) -> Reply<pb::ExportRun> {
        let principal = principal(&request)?;
        respond(self.runs.cancel(principal, request.into_inner())).await
    }
    async fn preview_export(&self, request: Request<pb::PreviewExportRequest>) -> Reply<pb::ExportPreview> {
        let principal = principal(&request)?;
        respond(self.preview(principal, request.into_inner())).await
    }
    async fn list_rejected_records(
        &self,
        request: Request<pb::ListRejectedRecordsRequest>,
    ) -> Reply<pb::ListRejectedRecordsResponse> {
        let principal = principal(&request)?;
        respond(self.list_rejected(principal, request.into_inner())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_named_after_their_original_within_the_limit() {
        assert_eq!(copy_name("Weekly"), "Copy of Weekly");
        assert_eq!(copy_name(&"x".repeat(200)).chars().count(), 200);
    }

    #[test]
    fn every_order_key_and_filter_field_parses() {
        for key in ORDER_KEYS {
            assert!(parse_order_by(&format!("{key} desc"), ORDER_KEYS, "display_name").is_ok());
        }
        let filter = "display_name:\"x\" AND connection_type = \"s3\" AND state = EXPORT_STATE_DETACHED \
                      AND (status = FAILED OR status = RUN_STATE_SKIPPED) AND kind = SEGMENT \
                      AND connection = \"environments/e/connections/c\"";
        assert!(parse_filter(filter, FILTER_FIELDS, ENUM_PREFIXES).unwrap().is_some());
    }
}
