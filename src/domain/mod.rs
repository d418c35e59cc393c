//! Pure rules: resource names, validation, eligibility, limits, schedules, list queries.
//! Nothing here does I/O.

/// An enum that is stored, filtered on or sent by name (`DATA_OUT`, `WAITING_FOR_DEPENDENCIES`):
/// its names come from one derive (`strum`, the variant names in SCREAMING_SNAKE_CASE), and
/// every such enum gets the same small API over them, so that no enum writes its table by hand.
///
/// `numbered` enums carry the API's enum numbers (they are stored and sorted on as numbers).
macro_rules! named_enum {
    (numbered $($enum:tt)+) => {
        named_enum! { $($enum)+ }
        named_enum!(@numbers $($enum)+);
    };
    (@numbers $(#[$meta:meta])* pub enum $name:ident $body:tt) => {
        impl $name {
            /// The API's number of the variant.
            pub fn number(self) -> i32 {
                self as i32
            }

            /// The variant of an API number, if it is one.
            pub fn from_number(n: i32) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.number() == n)
            }
        }
    };
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$variant_meta:meta])* $variant:ident $(= $number:literal)?,)+ }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
            strum::EnumString, strum::IntoStaticStr, strum::VariantArray, strum::VariantNames,
        )]
        #[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($(#[$variant_meta])* $variant $(= $number)?,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;
            /// Every name, in declaration order.
            pub const NAMES: &'static [&'static str] = <Self as strum::VariantNames>::VARIANTS;

            /// The name.
            pub fn as_str(self) -> &'static str {
                self.into()
            }

            /// The variant of a name, if it is one.
            pub fn parse(text: &str) -> Option<Self> {
                text.parse().ok()
            }
        }
    };
}

pub mod alert;
pub mod audit;
pub mod bounds;
pub mod catalog;
pub mod connection;
pub mod connection_type;
pub mod eligibility;
pub mod environment;
pub mod etag;
pub mod export;
pub mod list_query;
pub mod names;
pub mod output_area;
pub mod paging;
pub mod rule;
pub mod run;
pub mod schedule;
pub mod schema_change;
pub mod time;
