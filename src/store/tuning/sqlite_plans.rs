//! Stable query plans on SQLite connections.
//!
//! SQLite may plan a statement with the values bound to it, and when it does, re-binding such a
//! parameter throws the prepared statement away: the next execution parses and plans it again.
//! Since SQLite 3.4x that includes a bound `LIMIT ?`, so every single-row lookup (`LIMIT 1`)
//! and every page was re-parsed on every execution, although sqlx keeps it prepared; under
//! GetExport load the parser was a quarter of the database thread's time. With the query
//! planner stability guarantee (QPSG) plans never depend on bound values, so prepared
//! statements are reused as they are. Our queries gain nothing from value-specific plans: the
//! store runs no `ANALYZE` on SQLite, and its indexes are chosen by their columns.

use std::ffi::c_int;

use libsqlite3_sys::{SQLITE_DBCONFIG_ENABLE_QPSG, SQLITE_OK, sqlite3_db_config};
use sea_orm::sqlx::sqlite::SqliteConnection;

/// Turns the query planner stability guarantee on for this connection.
pub(crate) async fn enable_stable_plans(connection: &mut SqliteConnection) -> Result<(), sea_orm::sqlx::Error> {
    let mut handle = connection.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is a valid connection handle, and locking it keeps sqlx's worker thread
    // from using it meanwhile. SQLITE_DBCONFIG_ENABLE_QPSG takes an int (1: on) and an int*
    // for the resulting setting, which may be null.
    let rc = unsafe {
        sqlite3_db_config(
            db,
            SQLITE_DBCONFIG_ENABLE_QPSG,
            1 as c_int,
            std::ptr::null_mut::<c_int>(),
        )
    };
    if rc != SQLITE_OK {
        return Err(sea_orm::sqlx::Error::Configuration(
            format!("SQLite refused the query planner stability guarantee (code {rc})").into(),
        ));
    }
    Ok(())
}

/// Whether the guarantee is on for this connection.
#[cfg(test)]
pub(super) async fn stable_plans_enabled(connection: &mut SqliteConnection) -> Result<bool, sea_orm::sqlx::Error> {
    let mut handle = connection.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    let mut enabled: c_int = 0;
    // SAFETY: as above; -1 leaves the setting unchanged and writes it to `enabled`.
    let rc = unsafe { sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_QPSG, -1 as c_int, &mut enabled as *mut c_int) };
    assert_eq!(rc, SQLITE_OK);
    Ok(enabled == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_connection_of_a_sqlite_store_plans_without_bound_values() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("plans.db").display());
        let db = crate::store::connect(&url, 2).await.unwrap();
        let pool = db.get_sqlite_connection_pool();
        let mut first = pool.acquire().await.unwrap();
        let mut second = pool.acquire().await.unwrap();
        assert!(stable_plans_enabled(&mut first).await.unwrap());
        assert!(stable_plans_enabled(&mut second).await.unwrap());
    }
}
