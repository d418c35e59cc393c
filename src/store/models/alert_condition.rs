use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "alert_conditions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub env: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub policy: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub export: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub condition: String,
    pub since: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
