//! Pure rules: resource names, validation, eligibility, limits, schedules, list queries.
//! Nothing here does I/O.

/// The names of an enum that is stored, filtered on or sent by name (`DATA_OUT`,
/// `WAITING_FOR_DEPENDENCIES`) come from one derive (`strum`, written beside the enum); this
/// gives every such enum the same small API over them, so no enum writes its table by hand.
macro_rules! named_enum {
    ($($t:ty),+ $(,)?) => {$(
        impl $t {
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
    )+};
}
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
