use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rejected_records")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub env: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub export: String,
    /// The entity or segment resource name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub source: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    pub reason: String,
    pub code: String,
    /// The id of the run that rejected it last.
    pub run: String,
    pub attempts: i64,
    pub first_reject_time: i64,
    pub last_reject_time: i64,
    pub outstanding: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
