use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "system_refreshes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub env: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub state: String,
    pub start_time: i64,
    pub end_time: Option<i64>,
    pub error: Option<String>,
    pub segments_refreshed: i64,
    /// JSON array of the run names its completion started.
    pub runs: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
