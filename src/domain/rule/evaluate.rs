//! Evaluating a compiled rule over one record: the resolver that answers the rule's synthetic
//! identifiers from the record, converting only the JSON values the rule's paths point at.

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp, CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, Value};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
use serde_json::{Map, Value as Json};

use super::*;

impl CompiledRule {
    /// Does this record belong to the segment? Record = the JSON object of one
    /// record; absent keys and JSON null are null.
    ///
    /// Any evaluation error, or a result that is not a bool, is "not a member":
    /// one bad record must not abort a refresh over millions.
    pub fn matches(&self, record: &Map<String, Json>) -> bool {
        let evaluate = |env: &Arc<Env>| {
            let scope = RecordScope { rule: self, record };
            let mut context = Context::with_env(Arc::clone(env));
            context.set_variable_resolver(&scope);
            match Value::resolve_val(&self.expr, &context) {
                Ok(value) => value.downcast_ref::<CelBool>().is_some_and(|b| *b.inner()),
                Err(_) => false,
            }
        };
        // The thread-local is gone only while the thread is exiting.
        ENV.try_with(evaluate).unwrap_or_else(|_| evaluate(compile_env()))
    }
}

/// Answers the synthetic identifiers of one rule from one record.
pub(super) struct RecordScope<'a> {
    rule: &'a CompiledRule,
    record: &'a Map<String, Json>,
}

impl VariableResolver for RecordScope<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let (kind, index) = parse_synthetic(variable)?;
        let answer = |yes: bool| {
            let constant = if yes { TRUE_CONST } else { FALSE_CONST };
            Some(CowVal::Borrowed(self.rule.consts[constant].as_ref()))
        };
        match kind {
            CONSTANT => Some(CowVal::Borrowed(self.rule.consts.get(index)?.as_ref())),
            VALUE => {
                let slot = self.rule.slots.get(index)?;
                match slot.walk(self.record)? {
                    Json::Null => None,
                    value if slot.keys.is_empty() => Some(typed_value(value, slot.ty)),
                    value => Some(CowVal::Owned(json_value(value))),
                }
            }
            IS_NULL => {
                let slot = self.rule.slots.get(index)?;
                answer(matches!(slot.walk(self.record), None | Some(Json::Null)))
            }
            HAS_KEY => answer(self.rule.slots.get(index)?.has_key(self.record)),
            _ => None,
        }
    }
}

impl Slot {
    fn walk<'r>(&self, record: &'r Map<String, Json>) -> Option<&'r Json> {
        let root = record.get(&self.field)?;
        self.keys.iter().try_fold(root, step)
    }

    /// CEL's `has()` on the last key, false rather than an error when a parent
    /// is missing.
    fn has_key(&self, record: &Map<String, Json>) -> bool {
        let Some((last, parents)) = self.keys.split_last() else {
            return false;
        };
        let Some(parent) = record
            .get(&self.field)
            .and_then(|root| parents.iter().try_fold(root, step))
        else {
            return false;
        };
        step(parent, last).is_some()
    }
}

pub(super) fn step<'r>(value: &'r Json, key: &PathKey) -> Option<&'r Json> {
    match (key, value) {
        (PathKey::Name(name), Json::Object(map)) => map.get(name),
        (PathKey::Index(i), Json::Array(items)) => items.get(usize::try_from(*i).ok()?),
        _ => None,
    }
}

/// A record value as the CEL type its field declares. Values of another JSON
/// type are converted when the intent is unambiguous (exports from warehouses
/// write INT64 as JSON strings), else passed as they are, which makes typed
/// comparisons on them fail and the record not match.
pub(super) fn typed_value(value: &Json, ty: FieldType) -> CowVal<'_, '_> {
    match (ty, value) {
        (FieldType::String, Json::String(s)) => CowVal::owned(CelString::from(s.as_str())),
        (FieldType::String, Json::Number(n)) => CowVal::owned(CelString::from(n.to_string())),
        (FieldType::String, Json::Bool(b)) => CowVal::owned(CelString::from(b.to_string())),
        (FieldType::Int64, Json::Number(n)) => match n.as_i64() {
            Some(i) => CowVal::owned(CelInt::from(i)),
            None => number_as_int(n.as_f64().unwrap_or(f64::NAN)),
        },
        (FieldType::Int64, Json::String(s)) => match s.trim().parse::<i64>() {
            Ok(i) => CowVal::owned(CelInt::from(i)),
            Err(_) => match s.trim().parse::<f64>() {
                Ok(f) => number_as_int(f),
                Err(_) => CowVal::owned(CelString::from(s.as_str())),
            },
        },
        (FieldType::Double, Json::Number(n)) => CowVal::owned(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        (FieldType::Double, Json::String(s)) => match s.trim().parse::<f64>() {
            Ok(f) => CowVal::owned(CelDouble::from(f)),
            Err(_) => CowVal::owned(CelString::from(s.as_str())),
        },
        (FieldType::Bool, Json::String(s)) if s == "true" || s == "false" => CowVal::owned(CelBool::from(s == "true")),
        (FieldType::Timestamp, Json::String(s)) => match parse_timestamp(s) {
            Some(ts) => CowVal::owned(CelTimestamp::from(ts)),
            None => CowVal::owned(CelString::from(s.as_str())),
        },
        // A DATE written with a time of day would compare wrongly with
        // "YYYY-MM-DD" bounds: keep the date part.
        (FieldType::Date, Json::String(s)) => {
            let date = match s.as_bytes().get(10) {
                Some(b'T' | b' ') if looks_like_date(&s[..10], true) => &s[..10],
                _ => s.as_str(),
            };
            CowVal::owned(CelString::from(date))
        }
        _ => CowVal::Owned(json_value(value)),
    }
}

/// An INT64 field holding a fractional number keeps the fraction rather than
/// silently truncating it; CEL compares int with double.
pub(super) fn number_as_int<'b>(f: f64) -> CowVal<'b, 'b> {
    if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
        CowVal::owned(CelInt::from(f as i64))
    } else {
        CowVal::owned(CelDouble::from(f))
    }
}

pub(super) fn json_value(value: &Json) -> Box<dyn Val + '_> {
    match value {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Json::String(s) => Box::new(CelString::from(s.as_str())),
        Json::Array(items) => Box::new(CelList::from(items.iter().map(json_value).collect::<Vec<_>>())),
        Json::Object(map) => Box::new(CelMap::from(
            map.iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json_value(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

/// RFC 3339, as CEL's `timestamp()` takes, and, read as UTC, the forms records
/// and people often write instead: without an offset, and a bare date.
pub(super) fn parse_timestamp(s: &str) -> Option<DateTime<FixedOffset>> {
    let s = s.trim();
    if let Ok(ts) = DateTime::parse_from_rfc3339(s) {
        return Some(ts);
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, format) {
            return Some(naive.and_utc().fixed_offset());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|naive| naive.and_utc().fixed_offset())
}

/// `YYYY-MM-DD`, or with `whole` false also `YYYY` and `YYYY-MM`, which are
/// sound lexicographic bounds too.
pub(super) fn looks_like_date(s: &str, whole: bool) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    match b.len() {
        10 => digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10),
        7 if !whole => digits(0..4) && b[4] == b'-' && digits(5..7),
        4 if !whole => digits(0..4),
        _ => false,
    }
}
