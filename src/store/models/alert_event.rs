use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "alert_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub env: String,
    pub policy: String,
    pub id: String,
    pub export: String,
    pub run: String,
    pub condition: String,
    pub state: String,
    pub message: String,
    pub create_time: i64,
    pub delivery_state: String,
    pub delivery_attempts: i64,
    pub last_delivery_error: String,
    pub next_attempt_at: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
