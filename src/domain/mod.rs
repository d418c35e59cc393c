//! Pure rules: resource names, validation, eligibility, limits, schedules, list queries.
//! Nothing here does I/O.
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
