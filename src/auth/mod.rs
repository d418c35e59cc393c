//! Authentication (JWT → [`Principal`]) and authorization (the [`policy`] table).
pub mod jwt;
pub mod layer;
pub mod policy;
pub mod principal;

pub use policy::{Action, Facts};
pub use principal::{Principal, Role};
