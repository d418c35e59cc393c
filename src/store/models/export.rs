use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "exports")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub env: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub display_name: String,
    pub description: String,
    /// None when detached.
    pub connection_id: Option<String>,
    /// `DATA_OUT` or `SEGMENT`.
    pub kind: String,
    /// JSON array of entity ids, in the order given (also rows of `export_sources`).
    pub entities: String,
    /// JSON array of segment ids, in the order given (also rows of `export_sources`).
    pub segments: String,
    /// JSON array of `{source_field, target_field}`.
    pub field_mappings: String,
    /// JSON object of target-specific settings.
    pub settings: String,
    /// `FULL`, `INCREMENTAL` or `MIRROR`.
    pub sync_mode: String,
    /// JSON of `domain::schedule::Schedule`.
    pub schedule: String,
    /// The `schedule` sort key: next run time, then "with system refresh", NULL when off.
    pub schedule_sort: Option<i64>,
    pub next_run_at: Option<i64>,
    /// `ACTIVE` or `DETACHED`.
    pub state: String,
    pub last_refreshed_time: Option<i64>,
    pub last_run_id: Option<String>,
    /// The API's RunState number of the latest run; None = never run.
    pub last_run_state: Option<i32>,
    pub last_run_end: Option<i64>,
    /// JSON of the latest run\'s failure (see `domain::run::RunError`).
    pub last_run_error: Option<String>,
    /// Incremental exports: JSON object of the change sequence each entity was delivered up to
    /// (written by the run engine, never by an edit).
    pub sync_state: Option<String>,
    /// The RunTrigger number of the catch-up run that starts when the active run ends; None
    /// when there is none pending.
    pub catch_up_trigger: Option<i32>,
    pub creator: String,
    pub create_time: i64,
    pub update_time: i64,
    pub revision: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::connection::Entity",
        from = "(Column::Env, Column::ConnectionId)",
        to = "(super::connection::Column::Env, super::connection::Column::Id)"
    )]
    Connection,
}

impl Related<super::connection::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Connection.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
