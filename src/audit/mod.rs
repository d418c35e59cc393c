//! The audit log (PRODUCT.md §15), written in the request path, once for every mutating RPC:
//!
//! - [`layer`]: a tower layer (inside authentication) opens a [`scope::Scope`] for each call of
//!   a mutating RPC (the policy table says which, `policy::PolicyRow::audited`): actor, full
//!   method, request id. It records refused attempts (PERMISSION_DENIED) in their own write.
//! - [`describe`]: what the call changes — resource and field paths — read from the request
//!   message itself through the protos' descriptors, so no handler describes its own request.
//! - The store's write transaction ([`crate::store::WriteTxn::commit`]) writes the event of
//!   an armed scope in the same transaction as the change, and only once: no change without its
//!   event, no event without its change (a rolled-back transaction takes its event with it).
//!
//! The only call-specific knowledge lives in the shared helpers the calls already go through:
//! `api::principal` hands the decoded request to the scope, `api::mask::paths` the resolved
//! update mask, `request_ids::create_once` the name of what a create made. The two streams
//! (WriteRecords, SetSegmentMembers) say their counts themselves, once per call.

pub mod describe;
pub mod layer;
pub mod scope;
