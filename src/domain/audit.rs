//! An audit event as stored and listed (PRODUCT.md §15).

use super::time::Micros;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub env: String,
    pub id: String,
    pub time: Micros,
    pub actor: String,
    pub method: String,
    pub resource: String,
    pub request_id: String,
    pub changed_fields: Vec<String>,
    pub summary: String,
    /// google.rpc.Code: 0, or 7 for a refused attempt.
    pub code: i32,
}

impl AuditEvent {
    pub fn name(&self) -> String {
        format!("environments/{}/auditEvents/{}", self.env, self.id)
    }
}
