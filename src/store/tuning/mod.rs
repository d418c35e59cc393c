//! Database tuning: what makes the repositories fast without changing what they store. None of
//! it is a repository; each file answers one measured slowness of one database.
//!
//! - `changes`: the write generation and the in-memory read cache it makes safe (SQLite only);
//! - `checkpoints`: SQLite's WAL checkpoints on a connection of their own, not the writer's;
//! - `pg_copy`: a PostgreSQL transaction that can also `COPY` records in;
//! - `sqlite_plans`: SQLite plans that do not depend on bound values, so statements stay prepared;
//! - `statistics`: `ANALYZE` on PostgreSQL as tables grow during bulk loads.
//!
//! `TCP_NODELAY` on PostgreSQL sockets lives in [`crate::pg_nodelay`]: the `postgres` target
//! needs it as much as the store.

pub(super) mod changes;
pub(super) mod checkpoints;
pub(super) mod pg_copy;
pub(super) mod sqlite_plans;
pub(super) mod statistics;
