//! The audience each segment of an export fills at its target (issue 16: "one audience per
//! segment, remembered per export and segment so later runs reuse it").

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, Statement};

use super::Store;
use crate::connectors::Audience;
use crate::domain::names::ExportName;
use crate::domain::time::now_micros;
use crate::error::Result;

impl Store {
    /// The audiences the export's segments filled before, by segment id.
    pub async fn export_audiences(&self, export: &ExportName) -> Result<BTreeMap<String, Audience>> {
        let backend = self.backend();
        let rows = self
            .primary()
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                super::placeholders(
                    backend,
                    "SELECT segment, audience_id, audience_name FROM export_audiences WHERE env = ? AND export = ?",
                ),
                vec![export.env.clone().into(), export.id.clone().into()],
            ))
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get_by_index::<String>(0)?,
                    Audience {
                        id: row.try_get_by_index(1)?,
                        name: row.try_get_by_index(2)?,
                    },
                ))
            })
            .collect()
    }

    /// Remembers the audience a segment of the export fills (replacing an earlier one).
    pub async fn remember_audience(&self, export: &ExportName, segment: &str, audience: &Audience) -> Result<()> {
        let backend = self.backend();
        self.untracked_writer()
            .execute_raw(Statement::from_sql_and_values(
                backend,
                super::placeholders(
                    backend,
                    "INSERT INTO export_audiences (env, export, segment, audience_id, audience_name, update_time) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (env, export, segment) DO UPDATE SET \
                     audience_id = excluded.audience_id, audience_name = excluded.audience_name, \
                     update_time = excluded.update_time",
                ),
                vec![
                    export.env.clone().into(),
                    export.id.clone().into(),
                    segment.into(),
                    audience.id.clone().into(),
                    audience.name.clone().into(),
                    now_micros().into(),
                ],
            ))
            .await?;
        Ok(())
    }
}

/// Forgets an export's audiences (when it is deleted; the audiences stay at the target).
pub(crate) async fn forget(db: &impl ConnectionTrait, export: &ExportName) -> Result<()> {
    let backend = db.get_database_backend();
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        super::placeholders(backend, "DELETE FROM export_audiences WHERE env = ? AND export = ?"),
        vec![export.env.clone().into(), export.id.clone().into()],
    ))
    .await?;
    Ok(())
}
