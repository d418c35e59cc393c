//! Numbered migrations, one file each (sea-orm names a migration after its file).
use sea_orm_migration::prelude::*;

mod m0001_environments_connections;
mod m0002_catalog;
mod m0003_exports;
mod m0004_runs;
mod m0005_recurrence_anchors;
mod m0006_rejected_records;
mod m0007_audiences;
mod m0008_audit_events;
mod m0009_alerts;
mod m0010_lean_audit_events;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_environments_connections::Migration),
            Box::new(m0002_catalog::Migration),
            Box::new(m0003_exports::Migration),
            Box::new(m0004_runs::Migration),
            Box::new(m0005_recurrence_anchors::Migration),
            Box::new(m0006_rejected_records::Migration),
            Box::new(m0007_audiences::Migration),
            Box::new(m0008_audit_events::Migration),
            Box::new(m0009_alerts::Migration),
            Box::new(m0010_lean_audit_events::Migration),
        ]
    }
}

/// Column shorthands shared by every migration, so that types are the same everywhere:
/// ids and short strings are `string`, JSON documents are `text`, and times are microseconds
/// since the Unix epoch in a `big_integer` (portable, sortable, no time-zone surprises).
pub(crate) mod cols {
    use sea_orm_migration::prelude::*;

    pub fn id(name: &'static str) -> ColumnDef {
        ColumnDef::new(Alias::new(name)).string().not_null().to_owned()
    }
    pub fn text(name: &'static str) -> ColumnDef {
        ColumnDef::new(Alias::new(name)).text().not_null().to_owned()
    }
    pub fn text_null(name: &'static str) -> ColumnDef {
        ColumnDef::new(Alias::new(name)).text().null().to_owned()
    }
    pub fn int(name: &'static str) -> ColumnDef {
        ColumnDef::new(Alias::new(name)).big_integer().not_null().to_owned()
    }
    pub fn int_null(name: &'static str) -> ColumnDef {
        ColumnDef::new(Alias::new(name)).big_integer().null().to_owned()
    }
    pub fn boolean(name: &'static str) -> ColumnDef {
        ColumnDef::new(Alias::new(name)).boolean().not_null().to_owned()
    }
}
