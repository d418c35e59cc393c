use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "alert_policies")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub env: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub display_name: String,
    pub connection: String,
    pub conditions: String,
    pub rejected_percent_threshold: f64,
    pub schedule_missed_after_seconds: i64,
    pub exports: String,
    pub notify_recovery: bool,
    pub enabled: bool,
    pub create_time: i64,
    pub update_time: i64,
    pub revision: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
