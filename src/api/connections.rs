//! ConnectionService.

use std::collections::BTreeMap;

use prost::Message;
use tonic::{Request, Response, Status};

use super::{State, convert, mask, pages, principal, required, respond};
use crate::auth::policy::{self, Action, Facts};
use crate::auth::{Principal, Role};
use crate::connectors::{self, Target, registry};
use crate::domain::connection::{self, Connection};
use crate::domain::list_query::{FieldKind, FilterField, parse_filter, parse_order_by};
use crate::domain::names::{ConnectionName, EnvironmentName, id_or_generate};
use crate::domain::time::now_micros;
use crate::domain::{etag, paging};
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::connection_service_server::ConnectionService;
use crate::store::connections::ConnectionQuery;
use crate::store::request_ids::{self, RequestKey};

const FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "display_name",
        kind: FieldKind::Text,
        allowed: &[],
    },
    FilterField {
        name: "type",
        kind: FieldKind::Keyword,
        allowed: &[],
    },
    FilterField {
        name: "contributors_can_use",
        kind: FieldKind::Bool,
        allowed: &[],
    },
];
const ORDER_KEYS: &[&str] = &["display_name", "type", "create_time", "update_time"];
const UPDATABLE: &[&str] = &[
    "display_name",
    "description",
    "config",
    "secrets",
    "contributors_can_use",
    "profile_limit",
];
const MAP_FIELDS: &[&str] = &["config", "secrets"];

pub struct ConnectionApi {
    state: State,
}

impl ConnectionApi {
    pub fn new(state: State) -> Self {
        ConnectionApi { state }
    }

    /// Loads a connection the caller can see: NOT_FOUND for missing ones and, for contributors
    /// and viewers, for those not shared with contributors. Then asks the policy.
    async fn authorized(
        &self,
        principal: &Principal,
        name: &ConnectionName,
        action: Action,
    ) -> Result<(Connection, Role)> {
        let role = policy::role_in(principal, &name.env)?;
        let connection = self
            .state
            .store
            .get_connection(name)
            .await?
            .filter(|c| policy::can_see_connection(role, c.contributors_can_use))
            .ok_or_else(|| Error::not_found("connection", name.to_string()))?;
        policy::authorize(
            principal,
            &name.env,
            action,
            Facts::connection(connection.contributors_can_use),
        )?;
        Ok((connection, role))
    }

    async fn existing_environment(&self, env: &EnvironmentName) -> Result<()> {
        match self.state.store.get_environment(&env.env).await? {
            Some(_) => Ok(()),
            None => Err(Error::not_found("environment", env.to_string())),
        }
    }

    async fn create(&self, principal: Principal, request: pb::CreateConnectionRequest) -> Result<pb::Connection> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        policy::authorize(&principal, &parent.env, Action::CreateConnection, Facts::default())?;
        self.existing_environment(&parent).await?;
        request_ids::check_format(&request.request_id)?;
        let input = required("connection", &request.connection)?;
        let id = id_or_generate("connection_id", &request.connection_id, "conn")?;
        let spec = registry::requested(&input.r#type)?;
        let config: BTreeMap<String, String> = input.config.clone().into_iter().collect();
        let secrets: BTreeMap<String, String> = input.secrets.clone().into_iter().collect();
        let mut violations = connection::validate(
            "connection",
            spec,
            &input.display_name,
            &config,
            &secrets,
            true,
            input.profile_limit,
        );
        if violations.is_empty() {
            violations = connectors::connector_for(&input.r#type).check_config(&config, &secrets);
        }
        if !violations.is_empty() {
            return Err(Error::invalid_fields(violations));
        }
        let now = now_micros();
        let draft = Connection {
            name: ConnectionName::new(&parent.env, &id),
            display_name: input.display_name.trim().to_string(),
            description: input.description.clone(),
            type_id: spec.id.to_string(),
            config,
            secret_keys: secrets.keys().cloned().collect(),
            contributors_can_use: input.contributors_can_use,
            profile_limit: input.profile_limit,
            creator: principal.subject.clone(),
            create_time: now,
            update_time: now,
            revision: 0,
        };
        let roots = self.state.settings.local_roots();
        if request.validate_only {
            self.state.store.check_connection_placement(&draft, &roots).await?;
            let mut shown = convert::connection(&draft, Some(spec));
            shown.etag.clear();
            return Ok(shown);
        }
        let hash = request_ids::request_hash(&hashable(&request));
        let key = RequestKey::given("CreateConnection", &request.request_id, &hash);
        let created = self
            .state
            .store
            .create_connection(&draft, &secrets, key, &roots)
            .await?;
        tracing::info!(connection = %created.name, r#type = %created.type_id, "connection created");
        Ok(convert::connection(&created, registry::find(&created.type_id)))
    }

    async fn get(&self, principal: Principal, request: pb::GetConnectionRequest) -> Result<pb::Connection> {
        let name = ConnectionName::parse("name", &request.name)?;
        let (connection, _) = self.authorized(&principal, &name, Action::GetConnection).await?;
        Ok(convert::connection(&connection, registry::find(&connection.type_id)))
    }

    async fn list(
        &self,
        principal: Principal,
        request: pb::ListConnectionsRequest,
    ) -> Result<pb::ListConnectionsResponse> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        let role = policy::authorize(&principal, &parent.env, Action::ListConnections, Facts::default())?;
        let filter =
            parse_filter(&request.filter, FILTER_FIELDS, &[]).map_err(|e| Error::invalid("filter", e.to_string()))?;
        let order = parse_order_by(&request.order_by, ORDER_KEYS, "display_name")
            .map_err(|e| Error::invalid("order_by", e.to_string()))?;
        let fingerprint = paging::fingerprint(&[&request.parent, &request.filter, &request.order_by]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        self.existing_environment(&parent).await?;
        let query = ConnectionQuery {
            env: &parent.env,
            filter: filter.as_ref(),
            order: &order,
            shared_only: !policy::can_see_connection(role, false),
            page,
        };
        let (items, total) = self.state.store.list_connections(&query).await?;
        let mut connections: Vec<pb::Connection> = items
            .iter()
            .map(|c| convert::connection(c, registry::find(&c.type_id)))
            .collect();
        pages::fit(&mut connections);
        Ok(pb::ListConnectionsResponse {
            next_page_token: paging::next_token(page, connections.len(), total, &fingerprint),
            connections,
            total_size: total as i32,
        })
    }

    async fn update(&self, principal: Principal, request: pb::UpdateConnectionRequest) -> Result<pb::Connection> {
        let input = required("connection", &request.connection)?;
        let name = ConnectionName::parse("connection.name", &input.name)?;
        let paths = mask::paths(&request.update_mask, UPDATABLE, MAP_FIELDS, || implied_paths(input))?;
        let (mut connection, _) = self.authorized(&principal, &name, Action::UpdateConnection).await?;
        let current_etag = etag::etag(connection.create_time, connection.revision);
        if !input.etag.is_empty() && input.etag != current_etag {
            return Err(Error::etag_mismatch(name.to_string(), &input.etag, &current_etag));
        }
        let spec = registry::type_of(&connection)?;
        let mut secrets: Option<BTreeMap<String, String>> = None;
        for path in &paths {
            match path.as_str() {
                "display_name" => connection.display_name = input.display_name.trim().to_string(),
                "description" => connection.description = input.description.clone(),
                "config" => connection.config = input.config.clone().into_iter().collect(),
                "contributors_can_use" => connection.contributors_can_use = input.contributors_can_use,
                "profile_limit" => connection.profile_limit = input.profile_limit,
                "secrets" => secrets = Some(input.secrets.clone().into_iter().collect()),
                path => {
                    if let Some(key) = mask::map_key(path, "config") {
                        set_or_remove(&mut connection.config, key, input.config.get(key));
                    } else if let Some(key) = mask::map_key(path, "secrets") {
                        if secrets.is_none() {
                            secrets = Some(self.state.store.connection_secrets(&name).await?);
                        }
                        set_or_remove(secrets.as_mut().expect("just set"), key, input.secrets.get(key));
                    }
                }
            }
        }
        // Validate the connection as it would be stored, not only the changed fields.
        let resulting_secrets = match &secrets {
            Some(s) => s.clone(),
            None => connection
                .secret_keys
                .iter()
                .map(|k| (k.clone(), "set".to_string()))
                .collect(),
        };
        let mut violations = connection::validate(
            "connection",
            spec,
            &connection.display_name,
            &connection.config,
            &resulting_secrets,
            secrets.is_some(),
            connection.profile_limit,
        );
        // Secrets kept from before are sealed; the deeper checks need them in the clear, so
        // they run when the request gives the secrets.
        if let (true, Some(given)) = (violations.is_empty(), &secrets) {
            violations = connectors::connector_for(&connection.type_id).check_config(&connection.config, given);
        }
        if !violations.is_empty() {
            return Err(Error::invalid_fields(violations));
        }
        // Where its exports write changes only with its configuration.
        let moved = paths
            .iter()
            .any(|p| p == "config" || mask::map_key(p, "config").is_some());
        let roots = self.state.settings.local_roots();
        let updated = self
            .state
            .store
            .update_connection(&connection, secrets.as_ref(), moved.then_some(&roots))
            .await?;
        tracing::info!(connection = %updated.name, paths = ?paths, "connection updated");
        Ok(convert::connection(&updated, Some(spec)))
    }

    async fn delete(
        &self,
        principal: Principal,
        request: pb::DeleteConnectionRequest,
    ) -> Result<pb::DeleteConnectionResponse> {
        let name = ConnectionName::parse("name", &request.name)?;
        let (connection, _) = self.authorized(&principal, &name, Action::DeleteConnection).await?;
        let current_etag = etag::etag(connection.create_time, connection.revision);
        if !request.etag.is_empty() && request.etag != current_etag {
            return Err(Error::etag_mismatch(name.to_string(), &request.etag, &current_etag));
        }
        let detached = self
            .state
            .store
            .delete_connection(&name, connection.revision, request.force)
            .await?;
        tracing::info!(connection = %name, detached = detached.len(), "connection deleted");
        Ok(pb::DeleteConnectionResponse {
            name: name.to_string(),
            detached_exports: detached.iter().map(|e| e.to_string()).collect(),
        })
    }

    async fn test(
        &self,
        principal: Principal,
        request: pb::TestConnectionRequest,
    ) -> Result<pb::TestConnectionResponse> {
        let name = ConnectionName::parse("name", &request.name)?;
        let (connection, _) = self.authorized(&principal, &name, Action::TestConnection).await?;
        let secrets = self.state.store.connection_secrets(&name).await?;
        let target = Target {
            connection: &connection,
            secrets: &secrets,
            local_roots: self.state.settings.local_roots(),
            export_file_mode: self.state.settings.export_file_mode,
        };
        let report = connectors::connector_for(&connection.type_id).test(&target).await;
        Ok(pb::TestConnectionResponse {
            ok: report.ok(),
            message: report.summary(),
            checks: report
                .checks
                .into_iter()
                .map(|c| pb::ConnectionCheck {
                    name: c.name,
                    ok: c.ok,
                    message: c.message,
                })
                .collect(),
        })
    }
}

/// An empty value removes a key; any other value sets it.
fn set_or_remove(map: &mut BTreeMap<String, String>, key: &str, value: Option<&String>) {
    match value {
        Some(v) if !v.is_empty() => {
            map.insert(key.to_string(), v.clone());
        }
        _ => {
            map.remove(key);
        }
    }
}

/// The request as it is bound to its request id: secret values are left out so that their
/// digest is never stored.
fn hashable(request: &pb::CreateConnectionRequest) -> Vec<u8> {
    let mut copy = request.clone();
    if let Some(connection) = copy.connection.as_mut() {
        for value in connection.secrets.values_mut() {
            value.clear();
        }
    }
    copy.validate_only = false;
    copy.encode_to_vec()
}

/// Without an update mask, every field the client set is updated (AIP-134).
fn implied_paths(input: &pb::Connection) -> Vec<String> {
    let mut paths = Vec::new();
    if !input.display_name.is_empty() {
        paths.push("display_name".to_string());
    }
    if !input.description.is_empty() {
        paths.push("description".to_string());
    }
    if !input.config.is_empty() {
        paths.push("config".to_string());
    }
    if !input.secrets.is_empty() {
        paths.push("secrets".to_string());
    }
    if input.contributors_can_use {
        paths.push("contributors_can_use".to_string());
    }
    if input.profile_limit != 0 {
        paths.push("profile_limit".to_string());
    }
    paths
}

#[tonic::async_trait]
impl ConnectionService for ConnectionApi {
    async fn list_connection_types(
        &self,
        request: Request<pb::ListConnectionTypesRequest>,
    ) -> std::result::Result<Response<pb::ListConnectionTypesResponse>, Status> {
        principal(&request)?;
        let mut types: Vec<pb::ConnectionType> = registry::CONNECTION_TYPES
            .iter()
            .map(convert::connection_type)
            .collect();
        types.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(pb::ListConnectionTypesResponse {
            connection_types: types,
        }))
    }

    async fn create_connection(
        &self,
        request: Request<pb::CreateConnectionRequest>,
    ) -> std::result::Result<Response<pb::Connection>, Status> {
        let principal = principal(&request)?;
        respond(self.create(principal, request.into_inner())).await
    }

    async fn get_connection(
        &self,
        request: Request<pb::GetConnectionRequest>,
    ) -> std::result::Result<Response<pb::Connection>, Status> {
        let principal = principal(&request)?;
        respond(self.get(principal, request.into_inner())).await
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> std::result::Result<Response<pb::ListConnectionsResponse>, Status> {
        let principal = principal(&request)?;
        respond(self.list(principal, request.into_inner())).await
    }

    async fn update_connection(
        &self,
        request: Request<pb::UpdateConnectionRequest>,
    ) -> std::result::Result<Response<pb::Connection>, Status> {
        let principal = principal(&request)?;
        respond(self.update(principal, request.into_inner())).await
    }

    async fn delete_connection(
        &self,
        request: Request<pb::DeleteConnectionRequest>,
    ) -> std::result::Result<Response<pb::DeleteConnectionResponse>, Status> {
        let principal = principal(&request)?;
        respond(self.delete(principal, request.into_inner())).await
    }

    async fn test_connection(
        &self,
        request: Request<pb::TestConnectionRequest>,
    ) -> std::result::Result<Response<pb::TestConnectionResponse>, Status> {
        let principal = principal(&request)?;
        respond(self.test(principal, request.into_inner())).await
    }
}
