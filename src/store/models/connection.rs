use sea_orm::entity::prelude::*;

#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "connections")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub env: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub type_id: String,
    /// JSON object of non-secret configuration.
    pub config: String,
    /// AEAD-sealed JSON object of secrets (base64 of nonce ‖ ciphertext); None = no secrets.
    pub sealed_secrets: Option<String>,
    pub secret_key_id: Option<String>,
    /// JSON array of the secret keys that are set (readable without unsealing).
    pub secret_keys: String,
    pub contributors_can_use: bool,
    pub profile_limit: i64,
    pub creator: String,
    pub create_time: i64,
    pub update_time: i64,
    pub revision: i64,
}

/// Sealed secrets stay out of Debug output even though they are ciphertext.
impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("connection::Model")
            .field("env", &self.env)
            .field("id", &self.id)
            .field("type_id", &self.type_id)
            .field("secret_keys", &self.secret_keys)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
