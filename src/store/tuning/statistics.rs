//! Planner statistics during bulk loads. PostgreSQL plans with the statistics it has; a table
//! that grew from nothing to a million rows within the minute before autovacuum looks at it is
//! planned as if it were empty, and joins against it go badly wrong. So the store itself asks
//! for `ANALYZE` as a table grows: after 5,000 written rows, then each time the rows written
//! since start quadruple (a handful of times per bulk load; SQLite needs none of this).

use std::collections::HashMap;
use std::sync::Mutex;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};

const FIRST: u64 = 5_000;

#[derive(Default)]
pub struct Statistics {
    /// Per table: rows written by this process, and the count that triggers the next ANALYZE.
    tables: Mutex<HashMap<&'static str, (u64, u64)>>,
}

impl Statistics {
    /// Counts `rows` written to `table`; returns true when it is time to analyze it.
    fn record(&self, table: &'static str, rows: u64) -> bool {
        let mut tables = self.tables.lock().expect("statistics lock");
        let (written, next) = tables.entry(table).or_insert((0, FIRST));
        *written += rows;
        if *written >= *next {
            *next = written.saturating_mul(4);
            return true;
        }
        false
    }
}

impl crate::store::Store {
    /// Notes rows written to `table` and refreshes PostgreSQL's statistics in the background
    /// when the table has grown enough.
    pub(crate) fn wrote_rows(&self, table: &'static str, rows: u64) {
        if self.backend() != DbBackend::Postgres || !self.statistics.record(table, rows) {
            return;
        }
        let db: DatabaseConnection = self.writer.clone();
        tokio::spawn(async move {
            if let Err(e) = db.execute_unprepared(&format!("ANALYZE \"{table}\"")).await {
                tracing::warn!(table, error = %e, "ANALYZE failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyze_comes_at_first_and_then_at_each_quadrupling() {
        let stats = Statistics::default();
        let mut triggers = Vec::new();
        for batch in 1..=200u64 {
            if stats.record("records", 5_000) {
                triggers.push(batch * 5_000);
            }
        }
        assert_eq!(triggers, vec![5_000, 20_000, 80_000, 320_000]);
    }
}
