use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub env: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub export: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub trigger: i32,
    pub state: i32,
    /// JSON array of tasks.
    pub tasks: String,
    pub records_total: i64,
    pub records_exported: i64,
    pub records_rejected: i64,
    pub records_removed: i64,
    pub records_retried: i64,
    pub bytes_written: i64,
    /// JSON array of warnings.
    pub warnings: String,
    /// JSON of the failure, when FAILED.
    pub error: Option<String>,
    pub skip_reason: Option<String>,
    pub attempt: i32,
    /// JSON array of the entity and segment names being waited for.
    pub waiting_for: String,
    pub create_time: i64,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub cancel_requested: bool,
    pub revision: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
