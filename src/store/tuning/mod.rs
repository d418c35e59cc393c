//! Database tuning: what makes the repositories fast without changing what they store. None of
//! it is a repository; each file answers one measured slowness of one database.
//!
//! - `changes`: the write generation and the in-memory read cache it makes safe (SQLite only);
//! - `pg_copy`: a PostgreSQL transaction that can also `COPY` records in;
//! - `pg_nodelay`: `TCP_NODELAY` on the PostgreSQL sockets sqlx opens;
//! - `sqlite_plans`: SQLite plans that do not depend on bound values, so statements stay prepared;
//! - `statistics`: `ANALYZE` on PostgreSQL as tables grow during bulk loads.

pub(super) mod changes;
pub(super) mod pg_copy;
pub(super) mod pg_nodelay;
pub(super) mod sqlite_plans;
pub(super) mod statistics;
