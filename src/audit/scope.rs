//! The audit scope of one call: a task-local that the audit layer sets around the handler, so
//! that the store's write transaction finds what to record without every store method taking an
//! extra argument. Calls of unaudited RPCs have no scope and pay nothing.

use std::sync::{Arc, Mutex};

use sea_orm::ConnectionTrait;

use super::describe;
use crate::store::audit::{self as audit_store, NewAuditEvent};

tokio::task_local! {
    static SCOPE: Arc<Scope>;
}

/// One audited call in progress.
pub struct Scope {
    pub actor: String,
    /// The full gRPC method, `/exportd.v1.ExportService/UpdateExport`.
    pub method: String,
    pub request_id: String,
    state: Mutex<State>,
}

/// What the event of a call says besides who called what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub resource: String,
    pub changed_fields: Vec<String>,
    pub summary: String,
}

#[derive(Default)]
struct State {
    subject: Subject,
    /// Keys of the secrets the request carries: a `secrets` mask path is shown as them.
    secret_keys: Vec<String>,
    /// The next committed write transaction of this call carries the event.
    armed: bool,
    /// The event was written (committed); nothing more is recorded for this call.
    recorded: bool,
    /// Open [`Aside`] guards.
    aside: u32,
    /// Runs the call started.
    runs_started: Vec<String>,
}

impl Scope {
    pub fn new(actor: String, method: String, request_id: String) -> Self {
        Scope {
            actor,
            method,
            request_id,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn subject(&self) -> Subject {
        self.state().subject.clone()
    }

    /// Sets the resource unless one is known already.
    pub fn note_resource(&self, resource: &str) {
        let mut state = self.state();
        if state.subject.resource.is_empty() {
            state.subject.resource = resource.to_string();
        }
    }

    pub fn recorded(&self) -> bool {
        self.state().recorded
    }

    fn mark_recorded(&self) {
        let mut state = self.state();
        state.recorded = true;
        state.armed = false;
    }

    /// The event as it would be written now with `code`.
    pub fn event(&self, code: i32) -> Option<NewAuditEvent> {
        let subject = self.subject();
        let env = environment_of(&subject.resource)?;
        Some(NewAuditEvent {
            env,
            actor: self.actor.clone(),
            method: self.method.clone(),
            resource: subject.resource,
            request_id: self.request_id.clone(),
            changed_fields: subject.changed_fields,
            summary: subject.summary,
            code,
        })
    }
}

/// `environments/{env}/…` → env.
fn environment_of(resource: &str) -> Option<String> {
    let mut parts = resource.split('/');
    match (parts.next(), parts.next()) {
        (Some("environments"), Some(env)) if !env.is_empty() => Some(env.to_string()),
        _ => None,
    }
}

/// Runs `call` with `scope` as the current call's audit scope.
pub async fn run<F: Future>(scope: Arc<Scope>, call: F) -> F::Output {
    SCOPE.scope(scope, call).await
}

fn with<R>(f: impl FnOnce(&Scope) -> R) -> Option<R> {
    SCOPE.try_with(|scope| f(scope)).ok()
}

/// A unary request arrived (from `api::principal`): describe it and arm the event, unless it
/// only validates. `encode` is called only inside an audit scope.
pub fn request(encode: impl FnOnce() -> Vec<u8>) {
    with(|scope| {
        let Some(description) = describe::describe(&scope.method, &encode()) else {
            return;
        };
        let mut state = scope.state();
        state.armed = !description.validate_only;
        state.secret_keys = description.secret_keys;
        state.subject = description.subject;
    });
}

/// An update resolved its mask (from `api::mask::paths`): the paths it changes. A whole-map
/// `secrets` path shows the keys given, never values.
pub fn update_paths(paths: &[String]) {
    with(|scope| {
        let mut state = scope.state();
        let mut fields = Vec::with_capacity(paths.len());
        for path in paths {
            if path == "secrets" && !state.secret_keys.is_empty() {
                fields.extend(state.secret_keys.iter().map(|k| format!("secrets.{k}")));
            } else {
                fields.push(path.clone());
            }
        }
        state.subject.changed_fields = fields;
    });
}

/// A create made `name` (from `request_ids::create_once`, which knows generated ids). Runs are
/// not resources of their own in the log: the call is recorded against what it addressed (the
/// export, the environment for RunAllExports), the runs it started named in the summary.
pub fn created(name: &str) {
    with(|scope| {
        let mut state = scope.state();
        if name.contains("/runs/") {
            state.runs_started.push(name.to_string());
            state.subject.summary = match state.runs_started.as_slice() {
                [one] => format!("started run {one}"),
                many => format!("started {} runs", many.len()),
            };
        } else {
            state.subject.resource = name.to_string();
        }
    });
}

/// A stream (WriteRecords, SetSegmentMembers) says what it did; its event goes with the next
/// committed write of the call, or [`record_now`] writes it.
pub fn stream_subject(subject: Subject) {
    with(|scope| {
        let mut state = scope.state();
        if !state.recorded {
            state.subject = subject;
            state.armed = true;
        }
    });
}

/// The resource a stream addresses, known once its first message is read (for a refused
/// attempt's event).
pub fn stream_resource(resource: &str) {
    with(|scope| scope.note_resource(resource));
}

/// Writes the one event of a WriteRecords call in its own write: its messages are committed one
/// transaction each, so no single transaction holds the whole change. Without a resource (no
/// message was read) there is nothing to record.
pub async fn record_stream(store: &crate::store::Store, resource: &str, summary: String) {
    let Some(scope) = current() else { return };
    if resource.is_empty() || scope.recorded() {
        return;
    }
    {
        let mut state = scope.state();
        state.subject = Subject {
            resource: resource.to_string(),
            changed_fields: vec!["records".into()],
            summary,
        };
        state.armed = false;
    }
    let Some(event) = scope.event(0) else { return };
    match store.record_audit_event(&event).await {
        Ok(()) => written(&scope),
        Err(e) => tracing::error!(error = %e.message, "cannot record a WriteRecords call in the audit log"),
    }
}

/// While the returned guard lives, commits of the current call do not carry its event: writes
/// that prepare a change without being it (members of a generation not yet switched to).
pub fn aside() -> Aside {
    let scope = current();
    if let Some(scope) = &scope {
        scope.state().aside += 1;
    }
    Aside { scope }
}

pub struct Aside {
    scope: Option<Arc<Scope>>,
}

impl Drop for Aside {
    fn drop(&mut self) {
        if let Some(scope) = &self.scope {
            scope.state().aside -= 1;
        }
    }
}

/// The current call's scope, to write a stream's event in its own write.
pub fn current() -> Option<Arc<Scope>> {
    SCOPE.try_with(Arc::clone).ok()
}

/// Inside a write transaction about to commit: the armed event of the current call, if any.
/// Returns the scope to mark once the commit succeeded.
pub(crate) async fn write_pending(db: &impl ConnectionTrait) -> Result<Option<Arc<Scope>>, sea_orm::DbErr> {
    let Some((scope, event)) = pending() else {
        return Ok(None);
    };
    audit_store::insert(db, &event).await?;
    Ok(Some(scope))
}

/// The armed event of the current call that the next committed write transaction carries, if
/// any, with its scope (to mark once the commit succeeded).
pub(crate) fn pending() -> Option<(Arc<Scope>, NewAuditEvent)> {
    let scope = current()?;
    {
        let state = scope.state();
        if !state.armed || state.recorded || state.aside > 0 {
            return None;
        }
    }
    let event = scope.event(0)?;
    Some((scope, event))
}

/// The commit that carried the event succeeded.
pub(crate) fn committed(scope: Option<Arc<Scope>>) {
    if let Some(scope) = scope {
        scope.mark_recorded();
    }
}

/// Marks the scope's event as written by its own write (a stream's, a refused attempt's).
pub(crate) fn written(scope: &Scope) {
    scope.mark_recorded();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_comes_from_the_resource_name() {
        assert_eq!(environment_of("environments/acme/exports/x").as_deref(), Some("acme"));
        assert_eq!(environment_of("environments/acme").as_deref(), Some("acme"));
        assert_eq!(environment_of("connectionTypes/s3"), None);
        assert_eq!(environment_of(""), None);
    }
}
