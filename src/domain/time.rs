//! Times are stored as microseconds since the Unix epoch: portable between SQLite and
//! PostgreSQL and trivially sortable.

use chrono::{DateTime, TimeZone, Utc};

pub type Micros = i64;

pub fn now_micros() -> Micros {
    Utc::now().timestamp_micros()
}

pub fn to_datetime(micros: Micros) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

pub fn from_datetime(time: DateTime<Utc>) -> Micros {
    time.timestamp_micros()
}
