use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub env: String,
    pub id: String,
    pub time: i64,
    pub actor: String,
    pub method: String,
    pub resource: String,
    pub request_id: String,
    pub changed_fields: String,
    pub summary: String,
    pub code: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
