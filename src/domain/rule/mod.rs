//! Segment rules: CEL expressions over the fields of one record.
//!
//! A rule is checked once against the schema when it is saved and then evaluated
//! over every record of a refresh, so everything that can be decided without a
//! record is decided in [`compile`]: unknown fields and functions, comparisons
//! that can never hold, constant sub-expressions (a `timestamp("…")`, a literal
//! list), and which record values the rule reads.
//!
//! # How a rule reads a record
//!
//! Every reference to a field, or to a fixed path inside a JSON field
//! (`props.plan`, `tags[0]`), is replaced at compile time by a synthetic
//! identifier starting with `@`, which no CEL source can spell. At evaluation a
//! [`VariableResolver`] over the record answers those identifiers, converting
//! only the JSON value the path points at and borrowing its strings. So a record
//! is never converted as a whole, and a field the rule does not name costs
//! nothing.
//!
//! # Null
//!
//! A field that is absent or JSON `null` has no value for CEL: any operation on
//! it is an evaluation error. CEL's `&&` and `||` absorb errors the way SQL's
//! three-valued logic absorbs `NULL` (`error || true` is `true`,
//! `error && false` is `false`) and a rule whose result is an error does not
//! match. `x == null` and `x != null` are rewritten into presence tests, and
//! `has(x.f)` tests a key without failing when `x` is absent.

pub mod cost;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue, SelectExpr, operators};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp, CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, Value};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
use serde_json::{Map, Value as Json};

use crate::domain::catalog::FieldType;

/// A field of the entity schema a rule is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDef {
    pub name: String,
    pub ty: FieldType,
}

impl FieldDef {
    pub fn new(name: impl Into<String>, ty: FieldType) -> Self {
        FieldDef { name: name.into(), ty }
    }
}

/// Why a rule was rejected, placed where an editor can underline it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub message: String,
    /// 1-based.
    pub line: u32,
    /// 1-based, in characters rather than bytes, as an editor counts columns.
    pub column: u32,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for RuleError {}

/// Longer rules are rejected: a segment rule is a condition, not a program.
pub const MAX_RULE_CHARS: usize = 4096;

/// Evaluation recurses once per level of the expression tree, on the caller's
/// stack (2 MiB on a spawned or Tokio thread). In an unoptimised build a level
/// takes tens of KiB, so deeper trees are rejected; no sensible rule nests this
/// deep (`a && b && …` and `a || b || …` are balanced by the parser).
const MAX_DEPTH: usize = 32;

/// Parsing is recursive too, and the parser's frames are large: a rule of
/// [`MAX_RULE_CHARS`] nested as deep as the grammar allows needs close to
/// 32 MiB unoptimised. Compiling runs on a thread of its own with this stack
/// (only reserved, not committed) so that no rule can overflow the caller's.
const COMPILE_STACK_BYTES: usize = 64 << 20;

/// A rule checked against a schema, ready to be evaluated over many records.
///
/// It owns its (rewritten) syntax tree and its constants only: the CEL
/// environment is per thread, so evaluating one rule from several threads shares
/// nothing mutable, not even a reference count.
#[derive(Debug)]
pub struct CompiledRule {
    source: String,
    expr: IdedExpr,
    slots: Vec<Slot>,
    consts: Vec<Box<dyn Val>>,
    fields: Vec<String>,
}

/// Where a synthetic identifier reads from: a field, and keys into its JSON.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    field: String,
    ty: FieldType,
    keys: Vec<PathKey>,
}

#[derive(Debug, Clone, PartialEq)]
enum PathKey {
    Name(String),
    Index(i64),
}

/// The synthetic identifiers. The second byte says what the resolver answers.
const VALUE: u8 = b'v';
const IS_NULL: u8 = b'n';
const HAS_KEY: u8 = b'h';
const CONSTANT: u8 = b'c';

/// Constants 0 and 1 are the answers of the `IS_NULL` and `HAS_KEY` slots, so
/// those cost no allocation per record.
const FALSE_CONST: usize = 0;
const TRUE_CONST: usize = 1;

fn synthetic(kind: u8, index: usize) -> String {
    format!("@{}{index}", kind as char)
}

fn parse_synthetic(name: &str) -> Option<(u8, usize)> {
    let bytes = name.as_bytes();
    if bytes.len() < 3 || bytes[0] != b'@' {
        return None;
    }
    let mut index = 0usize;
    for &b in &bytes[2..] {
        if !b.is_ascii_digit() {
            return None;
        }
        index = index.checked_mul(10)?.checked_add(usize::from(b - b'0'))?;
    }
    Some((bytes[1], index))
}

thread_local! {
    /// Per thread, so that evaluations on different threads never touch the same
    /// reference count; built once per thread.
    static ENV: Arc<Env> = Arc::new(build_env());
}

/// Compiling runs on a fresh thread each time, where a thread-local
/// environment would be built anew for every rule.
fn compile_env() -> &'static Arc<Env> {
    static COMPILE_ENV: OnceLock<Arc<Env>> = OnceLock::new();
    COMPILE_ENV.get_or_init(|| Arc::new(build_env()))
}

fn build_env() -> Env {
    let mut env = Env::stdlib();
    // The strings extension (lowerAscii, trim, split, …) only declares
    // overloads that the standard library does not have.
    env.add_extension(cel::extensions::strings)
        .expect("the strings extension does not clash with the standard library");
    env
}

/// Everything that can be known without a record is settled here, once: a rule
/// that could never work (an unknown field, a comparison that cannot hold) is
/// refused when it is saved, with a position, instead of silently matching
/// nobody during every refresh.
pub fn compile(expression: &str, fields: &[FieldDef]) -> Result<CompiledRule, RuleError> {
    std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("rule-compile".into())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn_scoped(scope, || compile_here(expression, fields))
        {
            Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // Without a thread of its own, a rule of sensible depth still parses.
            Err(_) => compile_here(expression, fields),
        }
    })
}

fn compile_here(expression: &str, fields: &[FieldDef]) -> Result<CompiledRule, RuleError> {
    if expression.trim().is_empty() {
        return Err(RuleError {
            message: "the rule is empty".into(),
            line: 1,
            column: 1,
        });
    }
    if let Some((offset, _)) = expression.char_indices().nth(MAX_RULE_CHARS) {
        let (line, column) = line_column(expression, offset);
        return Err(RuleError {
            message: format!("the rule is longer than {MAX_RULE_CHARS} characters"),
            line,
            column,
        });
    }
    let env = compile_env();
    let (mut expr, info) = env
        .parser()
        .parse_with_source_info(expression)
        .map_err(|errors| parse_error(expression, errors))?;
    let mut compiler = Compiler {
        source: expression,
        info: &info,
        env,
        fields,
        slots: Vec::new(),
        consts: vec![
            Box::new(CelBool::from(false)) as Box<dyn Val>,
            Box::new(CelBool::from(true)),
        ],
        referenced: Vec::new(),
        known_functions: HashMap::new(),
    };
    if depth(&expr) > MAX_DEPTH {
        return Err(compiler.error_at(&expr, format!("the rule nests more than {MAX_DEPTH} levels deep")));
    }
    if let Err(too_costly) = cost::check(&expr) {
        return Err(compiler.error_at(too_costly.at, too_costly.message));
    }
    let original = expr.clone();
    compiler.rewrite(&mut expr, &mut Vec::new())?;
    compiler.check_condition(&original)?;
    if compiler.fold(&mut expr)? {
        compiler.fold_node(&mut expr)?;
    }
    Ok(CompiledRule {
        source: expression.to_owned(),
        expr,
        slots: compiler.slots,
        consts: compiler.consts,
        fields: compiler.referenced,
    })
}

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

    /// The top-level fields the rule reads, in order of first use, so that a
    /// caller can fetch only those columns.
    pub fn referenced_fields(&self) -> &[String] {
        &self.fields
    }

    /// Kept so that a stored rule can be shown, or recompiled when the schema
    /// changes.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Answers the synthetic identifiers of one rule from one record.
struct RecordScope<'a> {
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

fn step<'r>(value: &'r Json, key: &PathKey) -> Option<&'r Json> {
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
fn typed_value(value: &Json, ty: FieldType) -> CowVal<'_, '_> {
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
fn number_as_int<'b>(f: f64) -> CowVal<'b, 'b> {
    if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
        CowVal::owned(CelInt::from(f as i64))
    } else {
        CowVal::owned(CelDouble::from(f))
    }
}

fn json_value(value: &Json) -> Box<dyn Val + '_> {
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
fn parse_timestamp(s: &str) -> Option<DateTime<FixedOffset>> {
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
fn looks_like_date(s: &str, whole: bool) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    match b.len() {
        10 => digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10),
        7 if !whole => digits(0..4) && b[4] == b'-' && digits(5..7),
        4 if !whole => digits(0..4),
        _ => false,
    }
}

/// 1-based line and character column of a byte offset.
fn line_column(source: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..offset].chars().count() + 1;
    (to_u32(line), to_u32(column))
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn parse_error(source: &str, errors: cel::ParseErrors) -> RuleError {
    let Some(first) = errors.errors.into_iter().next() else {
        return RuleError {
            message: "syntax error".into(),
            line: 1,
            column: 1,
        };
    };
    let lines = source.split('\n').count();
    let (line, column) = first.pos;
    // Some errors, like the parser's recursion limit, carry no real position.
    let valid = line >= 1 && column >= 1 && usize::try_from(line).is_ok_and(|l| l <= lines);
    let (line, column) = if valid {
        (u32::try_from(line).unwrap_or(1), u32::try_from(column).unwrap_or(1))
    } else {
        (1, 1)
    };
    let message = if first.msg.contains("Recursion limit") {
        "the rule nests too deeply".to_string()
    } else {
        first.msg
    };
    RuleError { message, line, column }
}

fn depth(expr: &IdedExpr) -> usize {
    1 + children(expr).into_iter().map(depth).max().unwrap_or(0)
}

fn children(expr: &IdedExpr) -> Vec<&IdedExpr> {
    match &expr.expr {
        Expr::Call(call) => call.target.as_deref().into_iter().chain(&call.args).collect(),
        Expr::Comprehension(c) => vec![&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => map.entries.iter().flat_map(|e| entry_exprs(&e.expr)).collect(),
        Expr::Struct(s) => s.entries.iter().flat_map(|e| entry_exprs(&e.expr)).collect(),
        Expr::Select(select) => vec![&select.operand],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn entry_exprs(entry: &EntryExpr) -> Vec<&IdedExpr> {
    match entry {
        EntryExpr::MapEntry(e) => vec![&e.key, &e.value],
        EntryExpr::StructField(f) => vec![&f.value],
    }
}

fn children_mut(expr: &mut IdedExpr) -> Vec<&mut IdedExpr> {
    match &mut expr.expr {
        Expr::Call(call) => call.target.as_deref_mut().into_iter().chain(&mut call.args).collect(),
        Expr::Comprehension(c) => {
            let c = &mut **c;
            vec![
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ]
        }
        Expr::List(list) => list.elements.iter_mut().collect(),
        Expr::Map(map) => map
            .entries
            .iter_mut()
            .flat_map(|e| entry_exprs_mut(&mut e.expr))
            .collect(),
        Expr::Struct(s) => s
            .entries
            .iter_mut()
            .flat_map(|e| entry_exprs_mut(&mut e.expr))
            .collect(),
        Expr::Select(select) => vec![&mut *select.operand],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn entry_exprs_mut(entry: &mut EntryExpr) -> Vec<&mut IdedExpr> {
    match entry {
        EntryExpr::MapEntry(e) => vec![&mut e.key, &mut e.value],
        EntryExpr::StructField(f) => vec![&mut f.value],
    }
}

fn is_operator(name: &str) -> bool {
    name.starts_with(['_', '@', '!', '-'])
}

fn is_comparison(name: &str) -> bool {
    [
        operators::EQUALS,
        operators::NOT_EQUALS,
        operators::LESS,
        operators::LESS_EQUALS,
        operators::GREATER,
        operators::GREATER_EQUALS,
    ]
    .contains(&name)
}

fn is_arithmetic(name: &str) -> bool {
    [
        operators::ADD,
        operators::SUBSTRACT,
        operators::MULTIPLY,
        operators::DIVIDE,
        operators::MODULO,
        operators::NEGATE,
    ]
    .contains(&name)
}

/// Type names a rule may mention only as in `type(x) == int`.
const TYPE_NAMES: [&str; 10] = [
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// What is statically known of an operand's type, for catching comparisons that
/// can never hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Static {
    Str,
    Num,
    Bool,
    Bytes,
    Null,
    Timestamp,
    Duration,
    Unknown,
}

impl Static {
    fn describe(self) -> &'static str {
        match self {
            Static::Str => "a string",
            Static::Num => "a number",
            Static::Bool => "a bool",
            Static::Bytes => "bytes",
            Static::Null => "null",
            Static::Timestamp => "a timestamp",
            Static::Duration => "a duration",
            Static::Unknown => "a value",
        }
    }

    fn of_field(ty: FieldType) -> Static {
        match ty {
            FieldType::String | FieldType::Date => Static::Str,
            FieldType::Int64 | FieldType::Double => Static::Num,
            FieldType::Bool => Static::Bool,
            FieldType::Timestamp => Static::Timestamp,
            FieldType::Json => Static::Unknown,
        }
    }
}

fn literal_static(literal: &LiteralValue) -> Static {
    match literal {
        LiteralValue::Boolean(_) => Static::Bool,
        LiteralValue::Bytes(_) => Static::Bytes,
        LiteralValue::Double(_) | LiteralValue::Int(_) | LiteralValue::UInt(_) => Static::Num,
        LiteralValue::Null => Static::Null,
        LiteralValue::String(_) => Static::Str,
    }
}

fn string_literal(expr: &IdedExpr) -> Option<&str> {
    match &expr.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

fn is_null_literal(expr: &IdedExpr) -> bool {
    matches!(expr.expr, Expr::Literal(LiteralValue::Null))
}

fn call(func_name: &str, args: Vec<IdedExpr>) -> Expr {
    Expr::Call(CallExpr {
        func_name: func_name.to_owned(),
        target: None,
        args,
    })
}

/// The segments of `a.b.c` when `expr` spells such a name.
fn name_segments(expr: &IdedExpr) -> Option<Vec<&str>> {
    match &expr.expr {
        Expr::Ident(name) => Some(vec![name.as_str()]),
        Expr::Select(SelectExpr {
            operand,
            field,
            test: false,
        }) => {
            let mut segments = name_segments(operand)?;
            segments.push(field);
            Some(segments)
        }
        _ => None,
    }
}

/// A field, or a fixed path into one, as written in the rule.
struct Path {
    field: usize,
    keys: Vec<PathKey>,
}

struct Compiler<'a> {
    source: &'a str,
    info: &'a cel::common::ast::SourceInfo,
    env: &'a Arc<Env>,
    fields: &'a [FieldDef],
    slots: Vec<Slot>,
    consts: Vec<Box<dyn Val>>,
    referenced: Vec<String>,
    known_functions: HashMap<(String, bool), bool>,
}

impl Compiler<'_> {
    fn position(&self, expr: &IdedExpr) -> (u32, u32) {
        // The leftmost token of the expression: an operator node is placed at
        // its operator, which is not where a reader looks for "this part".
        let start = std::iter::once(expr)
            .chain(descendants(expr))
            .filter_map(|e| self.info.offset_for(e.id))
            .map(|(start, _)| start)
            .min()
            .unwrap_or(0);
        line_column(self.source, start as usize)
    }

    fn error_at(&self, expr: &IdedExpr, message: impl Into<String>) -> RuleError {
        let (line, column) = match self.info.offset_for(expr.id) {
            Some((start, _)) if matches!(expr.expr, Expr::Ident(_) | Expr::Literal(_)) => {
                line_column(self.source, start as usize)
            }
            _ => self.position(expr),
        };
        RuleError {
            message: message.into(),
            line,
            column,
        }
    }

    fn field(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// The field or fixed JSON path `expr` denotes, if any. A member of a field
    /// that is not JSON is an error: it can never evaluate.
    fn path(&self, expr: &IdedExpr, bound: &[String]) -> Result<Option<Path>, RuleError> {
        let (operand, key) = match &expr.expr {
            Expr::Ident(name) => {
                if bound.iter().any(|b| b == name) {
                    return Ok(None);
                }
                return Ok(self.field(name).map(|field| Path {
                    field,
                    keys: Vec::new(),
                }));
            }
            Expr::Select(SelectExpr {
                operand,
                field,
                test: false,
            }) => (&**operand, PathKey::Name(field.clone())),
            Expr::Call(CallExpr {
                func_name,
                target: None,
                args,
            }) if func_name == operators::INDEX && args.len() == 2 => {
                let key = match &args[1].expr {
                    Expr::Literal(LiteralValue::String(s)) => PathKey::Name(s.inner().to_owned()),
                    Expr::Literal(LiteralValue::Int(i)) => PathKey::Index(*i.inner()),
                    _ => return Ok(None),
                };
                (&args[0], key)
            }
            _ => return Ok(None),
        };
        let Some(mut path) = self.path(operand, bound)? else {
            return Ok(None);
        };
        let def = &self.fields[path.field];
        if def.ty != FieldType::Json {
            return Err(self.error_at(
                expr,
                format!(
                    "field '{}' is {} and has no members; only JSON fields do",
                    def.name,
                    def.ty.as_str()
                ),
            ));
        }
        path.keys.push(key);
        Ok(Some(path))
    }

    fn slot(&mut self, path: Path) -> usize {
        let def = &self.fields[path.field];
        if !self.referenced.contains(&def.name) {
            self.referenced.push(def.name.clone());
        }
        let slot = Slot {
            field: def.name.clone(),
            ty: def.ty,
            keys: path.keys,
        };
        match self.slots.iter().position(|s| *s == slot) {
            Some(index) => index,
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    /// The schema type of `expr` when it is a whole typed field.
    fn field_type(&self, expr: &IdedExpr, bound: &[String]) -> Option<(&FieldDef, FieldType)> {
        match &expr.expr {
            Expr::Ident(name) if !bound.iter().any(|b| b == name) => {
                let def = &self.fields[self.field(name)?];
                Some((def, def.ty))
            }
            _ => None,
        }
    }

    fn static_type(&self, expr: &IdedExpr, bound: &[String]) -> Static {
        if let Some((_, ty)) = self.field_type(expr, bound) {
            return Static::of_field(ty);
        }
        match &expr.expr {
            Expr::Literal(literal) => literal_static(literal),
            Expr::Call(CallExpr {
                func_name,
                target: None,
                args,
            }) if args.len() == 1 => match func_name.as_str() {
                "timestamp" => Static::Timestamp,
                "duration" => Static::Duration,
                operators::NEGATE => match &args[0].expr {
                    Expr::Literal(literal) => literal_static(literal),
                    _ => Static::Unknown,
                },
                _ => Static::Unknown,
            },
            _ => Static::Unknown,
        }
    }

    fn constant(&mut self, value: Box<dyn Val>) -> Expr {
        self.consts.push(value);
        Expr::Ident(synthetic(CONSTANT, self.consts.len() - 1))
    }

    /// A string literal that stands for a timestamp becomes a timestamp
    /// constant, so that `signed_up_at > "2026-01-01"` compares instants.
    fn timestamp_literal(&mut self, expr: &mut IdedExpr) -> Result<(), RuleError> {
        let Some(text) = string_literal(expr) else {
            return Ok(());
        };
        let Some(ts) = parse_timestamp(text) else {
            return Err(self.error_at(
                expr,
                format!("'{text}' is not a timestamp: write RFC 3339 (2026-01-01T00:00:00Z) or a date (2026-01-01)"),
            ));
        };
        expr.expr = self.constant(Box::new(CelTimestamp::from(ts)));
        Ok(())
    }

    /// Rejects comparing a typed field with something it can never equal or be
    /// ordered against. `other` is the operand that is not the field.
    fn check_comparison(
        &self,
        op: &str,
        def: &FieldDef,
        other: &IdedExpr,
        other_type: Static,
        other_field: Option<&FieldDef>,
    ) -> Result<(), RuleError> {
        let ordering = op != operators::EQUALS && op != operators::NOT_EQUALS && op != operators::IN;
        let field_type = Static::of_field(def.ty);
        if other_type == Static::Null {
            if ordering {
                return Err(self.error_at(
                    other,
                    format!("field '{}' can only be compared with null using == or !=", def.name),
                ));
            }
            return Ok(());
        }
        if field_type == Static::Unknown || other_type == Static::Unknown {
            return Ok(());
        }
        if def.ty == FieldType::Timestamp && other_type == Static::Str && other_field.is_none() {
            return Ok(()); // coerced by timestamp_literal
        }
        if def.ty == FieldType::Date && other_field.is_none() {
            if let Some(text) = string_literal(other)
                && !looks_like_date(text, false)
            {
                return Err(self.error_at(
                    other,
                    format!(
                        "field '{}' is DATE and is compared as text written YYYY-MM-DD; '{text}' is not such a date",
                        def.name
                    ),
                ));
            }
            if other_type == Static::Timestamp {
                return Err(self.error_at(
                    other,
                    format!(
                        "field '{}' is DATE, written YYYY-MM-DD: compare it with a string such as \"2026-01-01\", not a timestamp",
                        def.name
                    ),
                ));
            }
        }
        if field_type == other_type {
            return Ok(());
        }
        let what = match other_field {
            Some(other) => format!("{} field '{}'", other.ty.as_str(), other.name),
            None => other_type.describe().to_string(),
        };
        Err(self.error_at(
            other,
            format!(
                "field '{}' is {} and cannot be compared with {what}",
                def.name,
                def.ty.as_str()
            ),
        ))
    }

    fn function_known(&mut self, name: &str, member: bool) -> bool {
        let key = (name.to_owned(), member);
        if let Some(&known) = self.known_functions.get(&key) {
            return known;
        }
        // The environment keeps its overloads to itself: call the function
        // with no arguments and see whether it is missing or merely misapplied.
        let probe = IdedExpr {
            id: 0,
            expr: Expr::Call(CallExpr {
                func_name: name.to_owned(),
                target: member.then(|| {
                    Box::new(IdedExpr {
                        id: 0,
                        expr: Expr::Literal(LiteralValue::Null),
                    })
                }),
                args: Vec::new(),
            }),
        };
        let context = Context::with_env(Arc::clone(self.env));
        let known = !matches!(
            Value::resolve_val(&probe, &context),
            Err(ExecutionError::UndeclaredReference(ref missing)) if missing.as_str() == name
        );
        self.known_functions.insert(key, known);
        known
    }

    /// Checks `expr` and rewrites it for evaluation, in one walk because both
    /// need to know which identifiers are fields and which are bound by the
    /// enclosing comprehensions (`bound`); see the module docs.
    fn rewrite(&mut self, expr: &mut IdedExpr, bound: &mut Vec<String>) -> Result<(), RuleError> {
        if let Some(path) = self.path(expr, bound)? {
            let slot = self.slot(path);
            expr.expr = Expr::Ident(synthetic(VALUE, slot));
            return Ok(());
        }
        let namespaced = self.check_call(expr, bound)?;
        match &mut expr.expr {
            Expr::Ident(name) => {
                // Synthetic names (no source can spell '@') were put there by
                // an earlier rewrite of this node's parent.
                if !bound.iter().any(|b| b == name) && parse_synthetic(name).is_none() {
                    let message = format!("unknown field '{name}'");
                    return Err(self.error_at(expr, message));
                }
                Ok(())
            }
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
            Expr::Select(select) => {
                if select.test
                    && let Some(mut path) = self.path(&select.operand, bound)?
                {
                    path.keys.push(PathKey::Name(select.field.clone()));
                    let slot = self.slot(path);
                    expr.expr = Expr::Ident(synthetic(HAS_KEY, slot));
                    return Ok(());
                }
                self.rewrite(&mut select.operand, bound)
            }
            Expr::Call(c) => {
                let name = c.func_name.clone();
                if c.args.len() == 2 && (is_comparison(&name) || name == operators::IN) {
                    if let Some(replacement) = self.rewrite_comparison(c, bound)? {
                        expr.expr = replacement;
                        return Ok(());
                    }
                } else if name == "timestamp"
                    && c.target.is_none()
                    && c.args.len() == 1
                    && string_literal(&c.args[0]).is_some()
                {
                    let mut literal = c.args[0].clone();
                    self.timestamp_literal(&mut literal)?;
                    expr.expr = literal.expr;
                    return Ok(());
                }
                if namespaced {
                    for arg in &mut c.args {
                        self.rewrite(arg, bound)?;
                    }
                    return Ok(());
                }
                if let Some(target) = &mut c.target {
                    self.rewrite(target, bound)?;
                }
                for arg in &mut c.args {
                    self.rewrite(arg, bound)?;
                }
                Ok(())
            }
            Expr::Comprehension(c) => {
                self.rewrite(&mut c.iter_range, bound)?;
                self.rewrite(&mut c.accu_init, bound)?;
                let depth = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.clone());
                bound.push(c.accu_var.clone());
                self.rewrite(&mut c.loop_cond, bound)?;
                self.rewrite(&mut c.loop_step, bound)?;
                self.rewrite(&mut c.result, bound)?;
                bound.truncate(depth);
                Ok(())
            }
            Expr::List(list) => {
                for element in &mut list.elements {
                    self.rewrite(element, bound)?;
                }
                Ok(())
            }
            Expr::Map(map) => {
                for entry in &mut map.entries {
                    for e in entry_exprs_mut(&mut entry.expr) {
                        self.rewrite(e, bound)?;
                    }
                }
                Ok(())
            }
            Expr::Struct(_) => Ok(()),
        }
    }

    /// Rejects calls that cannot be evaluated; returns whether the call is to a
    /// namespaced function such as `strings.quote(x)` rather than a method.
    fn check_call(&mut self, expr: &IdedExpr, bound: &[String]) -> Result<bool, RuleError> {
        let c = match &expr.expr {
            Expr::Call(c) if !is_operator(&c.func_name) => c,
            Expr::Struct(s) => {
                return Err(self.error_at(
                    expr,
                    format!("message literals like '{}{{…}}' are not supported", s.type_name),
                ));
            }
            _ => return Ok(false),
        };
        if let Some(target) = &c.target
            && let Some(segments) = name_segments(target)
            && !bound.iter().any(|b| b == segments[0])
            && self.field(segments[0]).is_none()
        {
            let qualified = format!("{}.{}", segments.join("."), c.func_name);
            if self.function_known(&qualified, false) {
                return Ok(true);
            }
        }
        if !self.function_known(&c.func_name, c.target.is_some()) {
            let mut error = self.error_at(expr, format!("unknown function '{}'", c.func_name));
            if let Some((line, column)) = self.name_before_paren(expr.id, &c.func_name) {
                (error.line, error.column) = (line, column);
            }
            return Err(error);
        }
        Ok(false)
    }

    /// A call is placed at its `(`; the function's name, which is what is
    /// wrong, is written just before it.
    fn name_before_paren(&self, id: u64, name: &str) -> Option<(u32, u32)> {
        let (start, _) = self.info.offset_for(id)?;
        let before = self.source.get(..start as usize)?.trim_end();
        before
            .ends_with(name)
            .then(|| line_column(self.source, before.len() - name.len()))
    }

    /// Checks a comparison or `in` before its operands are rewritten. Returns
    /// the final replacement when the call is rewritten whole (a presence test,
    /// `type(x) == int`), else rewrites timestamp literals in place and leaves
    /// the operands to the caller.
    fn rewrite_comparison(&mut self, c: &mut CallExpr, bound: &[String]) -> Result<Option<Expr>, RuleError> {
        let op = c.func_name.clone();
        if op == operators::EQUALS || op == operators::NOT_EQUALS {
            let (a, b) = (&c.args[0], &c.args[1]);
            let path_side = if is_null_literal(b) {
                Some(a)
            } else if is_null_literal(a) {
                Some(b)
            } else {
                None
            };
            if let Some(side) = path_side
                && let Some(path) = self.path(side, bound)?
            {
                let slot = self.slot(path);
                let test = Expr::Ident(synthetic(IS_NULL, slot));
                return Ok(Some(if op == operators::EQUALS {
                    test
                } else {
                    call(
                        operators::LOGICAL_NOT,
                        vec![IdedExpr {
                            id: c.args[0].id,
                            expr: test,
                        }],
                    )
                }));
            }
            // `type(x) == int`: the type name is no field.
            for (name_side, other_side) in [(0, 1), (1, 0)] {
                if let Expr::Ident(name) = &c.args[name_side].expr
                    && TYPE_NAMES.contains(&name.as_str())
                    && self.field(name).is_none()
                    && !bound.iter().any(|b| b == name)
                    && matches!(&c.args[other_side].expr, Expr::Call(t) if t.func_name == "type")
                {
                    let mut args = c.args.clone();
                    self.rewrite(&mut args[other_side], &mut bound.to_vec())?;
                    return Ok(Some(Expr::Call(CallExpr {
                        func_name: op,
                        target: None,
                        args,
                    })));
                }
            }
        }
        if op == operators::IN {
            if let Some((def, ty)) = self.field_type(&c.args[1], bound)
                && ty != FieldType::Json
            {
                return Err(self.error_at(
                    &c.args[1],
                    format!("'in' needs a list or a map; field '{}' is {}", def.name, ty.as_str()),
                ));
            }
            if let Some((def, ty)) = self.field_type(&c.args[0], bound)
                && let Expr::List(list) = &c.args[1].expr
            {
                let def = def.clone();
                for element in &list.elements {
                    let element_type = self.static_type(element, bound);
                    let other_field = self.field_type(element, bound).map(|(d, _)| d.clone());
                    self.check_comparison(&op, &def, element, element_type, other_field.as_ref())?;
                }
                if ty == FieldType::Timestamp
                    && let Expr::List(list) = &mut c.args[1].expr
                {
                    for element in &mut list.elements {
                        self.timestamp_literal(element)?;
                    }
                }
            }
            return Ok(None);
        }
        for (field_side, other_side) in [(0, 1), (1, 0)] {
            let Some((def, ty)) = self.field_type(&c.args[field_side], bound) else {
                continue;
            };
            let def = def.clone();
            let other = &c.args[other_side];
            let other_type = self.static_type(other, bound);
            let other_field = self.field_type(other, bound).map(|(d, _)| d.clone());
            self.check_comparison(&op, &def, other, other_type, other_field.as_ref())?;
            if ty == FieldType::Timestamp && other_field.is_none() {
                self.timestamp_literal(&mut c.args[other_side])?;
            }
        }
        Ok(None)
    }

    /// Rejects a rule that can never be a condition: one whose result, or an
    /// operand of `&&`, `||`, `!` or `?:`, is plainly not a bool.
    fn check_condition(&self, expr: &IdedExpr) -> Result<(), RuleError> {
        let not_a_condition = |what: String| {
            Err(self.error_at(
                expr,
                format!("{what} is not a condition; a rule must evaluate to true or false"),
            ))
        };
        match &expr.expr {
            Expr::Literal(LiteralValue::Boolean(_)) => Ok(()),
            Expr::Literal(literal) => not_a_condition(format!("{} literal", literal_static(literal).describe())),
            Expr::List(_) => not_a_condition("a list".into()),
            Expr::Map(_) => not_a_condition("a map".into()),
            Expr::Ident(name) => match self.field(name).map(|i| &self.fields[i]) {
                Some(def) if def.ty != FieldType::Bool && def.ty != FieldType::Json => {
                    not_a_condition(format!("field '{name}' ({})", def.ty.as_str()))
                }
                _ => Ok(()),
            },
            Expr::Call(c) if c.target.is_none() => match c.func_name.as_str() {
                operators::LOGICAL_AND | operators::LOGICAL_OR | operators::LOGICAL_NOT => {
                    c.args.iter().try_for_each(|a| self.check_condition(a))
                }
                operators::CONDITIONAL if c.args.len() == 3 => c.args.iter().try_for_each(|a| self.check_condition(a)),
                name if is_arithmetic(name) => not_a_condition("arithmetic".into()),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Folds constant sub-expressions. Returns whether `expr` is constant, in
    /// which case the caller folds it as part of something larger, or itself.
    fn fold(&mut self, expr: &mut IdedExpr) -> Result<bool, RuleError> {
        let own = match &expr.expr {
            Expr::Literal(_) => return Ok(true),
            Expr::Ident(name) => {
                return Ok(parse_synthetic(name).is_some_and(|(kind, _)| kind == CONSTANT));
            }
            Expr::Call(_) | Expr::List(_) | Expr::Map(_) | Expr::Select(_) => true,
            Expr::Comprehension(_) | Expr::Struct(_) | Expr::Unspecified => false,
        };
        let mut constant = Vec::new();
        for child in children_mut(expr) {
            constant.push(self.fold(child)?);
        }
        if own && constant.iter().all(|c| *c) {
            return Ok(true);
        }
        let kids = children_mut(expr);
        let folding: Vec<_> = kids
            .into_iter()
            .zip(constant)
            .filter(|(child, c)| *c && !matches!(child.expr, Expr::Literal(_) | Expr::Ident(_)))
            .map(|(child, _)| child)
            .collect();
        for child in folding {
            self.fold_node(child)?;
        }
        Ok(false)
    }

    fn fold_node(&mut self, expr: &mut IdedExpr) -> Result<(), RuleError> {
        if matches!(expr.expr, Expr::Literal(_) | Expr::Ident(_)) {
            return Ok(());
        }
        let value = {
            let constants = Constants(&self.consts);
            let mut context = Context::with_env(Arc::clone(self.env));
            context.set_variable_resolver(&constants);
            Value::resolve_val(expr, &context).map(|v| Value::try_from(v.as_ref()))
        };
        match value {
            // A constant that always fails would make the rule fail on every
            // record, which is never what its author meant.
            Err(error) => Err(self.error_at(expr, format!("this part of the rule always fails: {error}"))),
            Ok(Ok(value)) => {
                if let Ok(value) = Box::<dyn Val>::try_from(value) {
                    expr.expr = self.constant(value);
                }
                Ok(())
            }
            // No owned form (a type value, say): evaluated per record instead.
            Ok(Err(_)) => Ok(()),
        }
    }
}

/// The constants alone, for folding at compile time.
struct Constants<'a>(&'a [Box<dyn Val>]);

impl VariableResolver for Constants<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        match parse_synthetic(variable)? {
            (CONSTANT, index) => Some(CowVal::Borrowed(self.0.get(index)?.as_ref())),
            _ => None,
        }
    }
}

fn descendants(expr: &IdedExpr) -> Vec<&IdedExpr> {
    let mut out = Vec::new();
    let mut stack = children(expr);
    while let Some(e) = stack.pop() {
        out.push(e);
        stack.extend(children(e));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Vec<FieldDef> {
        vec![
            FieldDef::new("country", FieldType::String),
            FieldDef::new("age", FieldType::Int64),
            FieldDef::new("lifetime_value", FieldType::Double),
            FieldDef::new("vip", FieldType::Bool),
            FieldDef::new("signed_up_at", FieldType::Timestamp),
            FieldDef::new("birth_date", FieldType::Date),
            FieldDef::new("tags", FieldType::Json),
            FieldDef::new("props", FieldType::Json),
            FieldDef::new("email", FieldType::String),
        ]
    }

    fn record(value: serde_json::Value) -> Map<String, Json> {
        match value {
            Json::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn full() -> Map<String, Json> {
        record(json!({
            "country": "ID",
            "age": 30,
            "lifetime_value": 750.5,
            "vip": true,
            "signed_up_at": "2026-02-01T10:00:00Z",
            "birth_date": "1995-06-15",
            "tags": ["vip", "newsletter"],
            "props": {"plan": "pro", "seats": 5, "score": 4.5, "nested": {"x": null}},
            "email": "Ana@Example.com"
        }))
    }

    #[track_caller]
    fn eval(rule: &str, rec: &Map<String, Json>) -> bool {
        compile(rule, &schema())
            .unwrap_or_else(|e| panic!("{rule}: {e}"))
            .matches(rec)
    }

    #[track_caller]
    fn rejected(rule: &str) -> RuleError {
        match compile(rule, &schema()) {
            Ok(_) => panic!("{rule} compiled"),
            Err(e) => e,
        }
    }

    #[test]
    fn compiled_rule_is_send_and_sync() {
        fn assert<T: Send + Sync>() {}
        assert::<CompiledRule>();
    }

    #[test]
    fn integers() {
        let r = full();
        assert!(eval("age >= 18", &r));
        assert!(eval("age == 30", &r));
        assert!(!eval("age < 30", &r));
        assert!(eval("age != 31", &r));
        assert!(eval("age + 1 == 31", &r));
        assert!(eval("age % 2 == 0", &r));
        assert!(!eval("age > 30", &r));
    }

    #[test]
    fn doubles() {
        let r = full();
        assert!(eval("lifetime_value > 750.0", &r));
        assert!(eval("lifetime_value == 750.5", &r));
        assert!(!eval("lifetime_value < 750.5", &r));
    }

    #[test]
    fn mixed_int_and_double() {
        let r = full();
        assert!(eval("lifetime_value > 500", &r));
        assert!(!eval("lifetime_value > 1000", &r));
        assert!(eval("age >= 18.0", &r));
        assert!(eval("age == 30.0", &r));
        assert!(!eval("age > 30.5", &r));
        assert!(eval("age < 30.5", &r));
        assert!(eval("age in [30.0, 40.0]", &r));
        // A DOUBLE written without decimals is still a double.
        let whole = record(json!({"lifetime_value": 500}));
        assert!(eval("lifetime_value == 500", &whole));
        assert!(eval("lifetime_value == 500.0", &whole));
        assert!(eval("lifetime_value >= 500 && lifetime_value < 500.5", &whole));
        // An INT64 written with decimals is still an int; a fraction is kept.
        assert!(eval("age == 30", &record(json!({"age": 30.0}))));
        assert!(eval("age > 30", &record(json!({"age": 30.5}))));
        // Warehouses export INT64 as strings.
        assert!(eval("age >= 18", &record(json!({"age": "42"}))));
        assert!(eval("lifetime_value > 1.5", &record(json!({"lifetime_value": "2.25"}))));
    }

    #[test]
    fn strings() {
        let r = full();
        assert!(eval("country == \"ID\"", &r));
        assert!(eval("country != 'SG'", &r));
        assert!(eval("country > 'AA' && country < 'ZZ'", &r));
        assert!(eval("email.endsWith('@Example.com')", &r));
        assert!(eval("email.startsWith('Ana')", &r));
        assert!(eval("email.contains('@')", &r));
        assert!(eval("size(email) == 15", &r));
        assert!(eval("email.size() > 3", &r));
        assert!(eval("email.lowerAscii() == 'ana@example.com'", &r));
        assert!(!eval("email.startsWith('Bob')", &r));
    }

    #[test]
    fn booleans() {
        let r = full();
        assert!(eval("vip", &r));
        assert!(!eval("!vip", &r));
        assert!(eval("vip == true", &r));
        assert!(eval("vip && age > 18", &r));
        assert!(eval("!vip || age > 18", &r));
        assert!(eval("(vip || false) && !(age < 18)", &r));
        assert!(eval("true", &r));
        assert!(!eval("false", &r));
        assert!(!eval("vip", &record(json!({"vip": false}))));
    }

    #[test]
    fn in_literal_lists() {
        let r = full();
        assert!(eval("country in ['ID', 'SG']", &r));
        assert!(!eval("country in ['MY', 'SG']", &r));
        assert!(eval("!(country in ['MY', 'SG'])", &r));
        assert!(eval("age in [18, 30]", &r));
    }

    #[test]
    fn json_fields() {
        let r = full();
        assert!(eval("'vip' in tags", &r));
        assert!(!eval("'churned' in tags", &r));
        assert!(eval("tags.exists(t, t == 'newsletter')", &r));
        assert!(eval("tags.all(t, size(t) > 2)", &r));
        assert!(eval("size(tags) == 2", &r));
        assert!(eval("tags[0] == 'vip'", &r));
        assert!(eval("props.plan == 'pro'", &r));
        assert!(eval("props['plan'] == 'pro'", &r));
        assert!(eval("props.seats > 3 && props.score < 5", &r));
        assert!(eval("props.seats >= 4.5", &r));
        assert!(eval("has(props.plan)", &r));
        assert!(!eval("has(props.missing)", &r));
        assert!(eval("!has(props.missing)", &r));
        assert!(eval("'plan' in props", &r));
        // A missing key is not a match, in either direction.
        assert!(!eval("props.missing == 'x'", &r));
        assert!(!eval("props.missing != 'x'", &r));
        // Not a list: `in` fails, and the record does not match.
        assert!(!eval("'x' in props.plan", &r));
    }

    #[test]
    fn absent_and_null_fields_never_match_a_comparison() {
        for rec in [
            record(json!({})),
            record(json!({
                "country": null, "age": null, "lifetime_value": null, "vip": null,
                "signed_up_at": null, "birth_date": null, "tags": null, "props": null
            })),
        ] {
            for rule in [
                "country == 'ID'",
                "country != 'ID'",
                "country < 'ZZ'",
                "country >= ''",
                "country in ['ID', 'SG']",
                "!(country in ['ID'])",
                "!(country == 'ID')",
                "country.startsWith('I')",
                "!country.startsWith('I')",
                "age > 18",
                "age <= 18",
                "age == 0",
                "age != 0",
                "lifetime_value > 500",
                "vip",
                "!vip",
                "vip == false",
                "signed_up_at > timestamp('2020-01-01T00:00:00Z')",
                "signed_up_at <= timestamp('2020-01-01T00:00:00Z')",
                "birth_date < '2000-01-01'",
                "'vip' in tags",
                "tags.exists(t, t == 'vip')",
                "!tags.exists(t, t == 'vip')",
                "props.plan == 'pro'",
                "props.plan != 'pro'",
                "has(props.plan)",
                "size(country) == 0",
            ] {
                assert!(!eval(rule, &rec), "{rule} matched {rec:?}");
            }
            // Null-absorbing logic: a known side decides.
            assert!(eval("age > 18 || true", &rec));
            assert!(!eval("age > 18 && true", &rec));
            assert!(eval("!has(props.plan)", &rec));
        }
    }

    #[test]
    fn null_tests() {
        let present = full();
        let absent = record(json!({}));
        let null = record(json!({"country": null, "props": {"plan": null}}));
        assert!(eval("country == null", &absent));
        assert!(eval("null == country", &absent));
        assert!(eval("country == null", &null));
        assert!(!eval("country == null", &present));
        assert!(eval("country != null", &present));
        assert!(eval("null != country", &present));
        assert!(!eval("country != null", &absent));
        assert!(!eval("country != null", &null));
        assert!(eval("country == null || country == 'ID'", &absent));
        assert!(eval("country == null || country == 'ID'", &present));
        // Paths into JSON: a missing key or parent is null too.
        assert!(eval("props.plan == null", &null));
        assert!(eval("props.plan == null", &absent));
        assert!(eval("props.nested.x == null", &present));
        assert!(!eval("props.plan == null", &present));
        assert!(eval("props.plan != null", &present));
        assert!(!eval("props.plan != null", &null));
        // Comprehension variables keep CEL's own null.
        assert!(eval("props.nested.exists(k, props.nested[k] == null)", &present));
    }

    #[test]
    fn timestamps() {
        let r = full();
        assert!(eval("signed_up_at > timestamp('2026-01-01T00:00:00Z')", &r));
        assert!(eval("signed_up_at < timestamp('2026-02-01T17:00:01+07:00')", &r));
        assert!(!eval("signed_up_at < timestamp('2026-02-01T17:00:00+07:00')", &r));
        // Strings compared with a TIMESTAMP field are timestamps.
        assert!(eval("signed_up_at > '2026-01-01T00:00:00Z'", &r));
        assert!(eval("signed_up_at >= '2026-02-01'", &r));
        assert!(!eval("signed_up_at >= '2026-02-02'", &r));
        assert!(eval("signed_up_at in ['2026-02-01T10:00:00Z']", &r));
        assert!(eval("timestamp('2026-01-01') < signed_up_at", &r));
        assert!(eval(
            "signed_up_at - duration('24h') > timestamp('2026-01-31T00:00:00Z')",
            &r
        ));
        assert!(eval("signed_up_at.getFullYear() == 2026", &r));
        // Records may hold a timestamp without offset, as UTC.
        let naive = record(json!({"signed_up_at": "2026-02-01 10:00:00"}));
        assert!(eval("signed_up_at == '2026-02-01T10:00:00Z'", &naive));
        // Unparseable data is no timestamp: no match.
        let bad = record(json!({"signed_up_at": "yesterday"}));
        assert!(!eval("signed_up_at > '2020-01-01'", &bad));
        assert!(!eval("signed_up_at < '2020-01-01'", &bad));
    }

    #[test]
    fn dates() {
        let r = full();
        assert!(eval("birth_date < '2000-01-01'", &r));
        assert!(eval("birth_date >= '1995-06-15' && birth_date <= '1995-06-15'", &r));
        assert!(eval("birth_date == '1995-06-15'", &r));
        assert!(eval("birth_date >= '1995-06'", &r));
        assert!(eval("birth_date.startsWith('1995')", &r));
        // A date written with a time compares by its date.
        let with_time = record(json!({"birth_date": "1995-06-15T23:00:00Z"}));
        assert!(eval("birth_date <= '1995-06-15'", &with_time));
    }

    #[test]
    fn comprehension_variables_are_not_fields() {
        let r = full();
        assert!(eval("tags.exists(x, x == 'vip')", &r));
        assert!(eval("tags.exists_one(x, x.startsWith('news'))", &r));
        assert!(eval("tags.filter(x, x != 'vip').size() == 1", &r));
        assert!(eval("tags.map(x, size(x)).exists(n, n == 3)", &r));
        assert!(eval("[1, 2, 3].all(n, n < age)", &r));
        // A variable that shadows a field is the variable.
        assert!(eval("tags.exists(country, country == 'newsletter')", &r));
        // Once out of scope, the name is unknown again.
        let e = rejected("tags.exists(x, x == 'a') && x == 'b'");
        assert_eq!(e.message, "unknown field 'x'");
        assert_eq!((e.line, e.column), (1, 29));
    }

    #[test]
    fn unknown_field_is_reported_where_it_is() {
        let e = rejected("country == 'ID' && plan == 'pro'");
        assert_eq!(e.message, "unknown field 'plan'");
        assert_eq!((e.line, e.column), (1, 20));
        let e = rejected("age > 18 &&\n  'héllo'.size() > 0 && hello");
        assert_eq!(e.message, "unknown field 'hello'");
        assert_eq!((e.line, e.column), (2, 25));
        let e = rejected("'é' == country && zz");
        assert_eq!((e.line, e.column, e.message.as_str()), (1, 19, "unknown field 'zz'"));
        assert_eq!(e.to_string(), "line 1, column 19: unknown field 'zz'");
        let e = rejected("has(profile.plan)");
        assert_eq!((e.line, e.column), (1, 5));
    }

    #[test]
    fn syntax_error_has_the_parsers_position() {
        let e = rejected("age >");
        assert_eq!((e.line, e.column), (1, 6));
        assert!(e.message.contains("Syntax error"), "{}", e.message);
        let e = rejected("age > 18 &&\n  country ==");
        assert_eq!((e.line, e.column), (2, 13));
        let e = rejected("country == \"ID");
        assert_eq!((e.line, e.column), (1, 12));
        let e = rejected("has(country)");
        assert_eq!((e.line, e.column), (1, 5));
    }

    #[test]
    fn empty_or_too_long_rules_are_rejected() {
        assert_eq!(rejected("").message, "the rule is empty");
        assert_eq!(rejected("  \n ").message, "the rule is empty");
        let long = format!("country == '{}'", "x".repeat(MAX_RULE_CHARS));
        let e = rejected(&long);
        assert!(e.message.contains("longer than 4096"), "{}", e.message);
        let deep = format!("{}age{} > 1", "(".repeat(120), ")".repeat(120));
        assert_eq!(rejected(&deep).message, "the rule nests too deeply");
        let chain = format!("{} > 1", vec!["age"; 40].join(" + "));
        assert!(rejected(&chain).message.contains("nests more than"));
        // The worst the length limit lets through is rejected, not a crash.
        for worst in [
            format!("{}1 > 1", "1+".repeat(2045)),
            format!("{}vip", "-".repeat(4093)),
            format!("{}1{}", "[".repeat(2048), "]".repeat(2047)),
            format!("{} == 1", "age.x".repeat(800)),
            format!("age{} == 1", "[0]".repeat(1360)),
            format!("age{} == 1", ".f()".repeat(1020)),
            format!("{}1", "vip ? 1 : ".repeat(400)),
            format!("{}1{}", "[{1:".repeat(800), "}]".repeat(800)),
        ] {
            assert!(compile(&worst, &schema()).is_err(), "{}", &worst[..20]);
        }
        // The parser folds a run of `!` into at most one.
        let nots = format!("{}vip", "!".repeat(4093));
        assert!(!compile(&nots, &schema()).unwrap().matches(&full()));
    }

    #[test]
    fn type_mismatches_are_rejected() {
        let e = rejected("country > 5");
        assert_eq!((e.line, e.column), (1, 11));
        assert_eq!(
            e.message,
            "field 'country' is STRING and cannot be compared with a number"
        );
        let e = rejected("vip == \"yes\"");
        assert_eq!((e.line, e.column), (1, 8));
        assert!(rejected("5 < country").message.contains("STRING"));
        assert!(rejected("age == 'thirty'").message.contains("INT64"));
        assert!(rejected("age > -1 && lifetime_value < true").message.contains("DOUBLE"));
        assert!(rejected("country in ['ID', 5]").message.contains("STRING"));
        assert!(rejected("'vip' in country").message.contains("'in' needs a list"));
        assert!(rejected("signed_up_at > 5").message.contains("TIMESTAMP"));
        assert!(rejected("signed_up_at > 'soon'").message.contains("not a timestamp"));
        assert!(
            rejected("birth_date > timestamp('2026-01-01T00:00:00Z')")
                .message
                .contains("DATE")
        );
        assert!(rejected("birth_date > '2026-1-5'").message.contains("YYYY-MM-DD"));
        assert!(rejected("country == age").message.contains("INT64 field 'age'"));
        assert!(rejected("age > null").message.contains("== or !="));
        assert!(rejected("country.name == 'x'").message.contains("no members"));
        let e = rejected("country.matchesRegex('x')");
        assert_eq!(e.message, "unknown function 'matchesRegex'");
        assert_eq!((e.line, e.column), (1, 9));
        assert!(
            rejected("timestamp('not a time') > signed_up_at")
                .message
                .contains("not a timestamp")
        );
        assert!(rejected("age > 1 / 0").message.contains("always fails"));
        // Sensible rules stay accepted.
        for ok in [
            "age > 18u",
            "age == lifetime_value",
            "birth_date == country",
            "props.x > 5 || props.x == 'five'",
            "type(props.x) == int",
            "int == type(age)",
            "string(age) == '30'",
            "strings.quote(country) == '\"ID\"'",
            "signed_up_at == signed_up_at",
            "vip != false",
        ] {
            compile(ok, &schema()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert!(eval("type(props.seats) == int", &full()));
        assert!(eval("strings.quote(country) == '\"ID\"'", &full()));
    }

    #[test]
    fn non_boolean_rules_are_rejected() {
        for (rule, column) in [
            ("5", 1),
            ("'yes'", 1),
            ("country", 1),
            ("age + 1", 1),
            ("  [1, 2]", 3),
            ("vip && age", 8),
            ("!country", 2),
            ("vip ? 1 : 2", 7),
        ] {
            let e = rejected(rule);
            assert!(e.message.contains("not a condition"), "{rule}: {e}");
            assert_eq!((e.line, e.column), (1, column), "{rule}: {e}");
        }
        // A JSON field may hold a bool.
        assert!(eval("props.active", &record(json!({"props": {"active": true}}))));
        assert!(!eval("props.plan", &full()));
    }

    #[test]
    fn evaluation_errors_do_not_match() {
        let r = full();
        assert!(!eval("age / (age - 30) > 1", &r));
        assert!(!eval("props.seats / 0 == 1", &r));
        assert!(!eval("tags[5] == 'x'", &r));
        assert!(!eval("props.plan > 5", &r));
        assert!(!eval("int(country) > 0", &r));
        // ... yet an error can be outweighed, as in CEL.
        assert!(eval("age / (age - 30) > 1 || vip", &r));
        // A JSON value that is not a bool is not a match either.
        assert!(!eval("props.seats", &r));
    }

    #[test]
    fn record_values_are_read_as_their_field_type() {
        assert!(eval("vip", &record(json!({"vip": "true"}))));
        assert!(eval("country == '62'", &record(json!({"country": 62}))));
        assert!(eval("props.plan in ['pro', 'team']", &full()));
        assert!(eval("has(props.nested.x)", &full()));
        assert!(eval(
            "// members only\ncountry == null && age > 18 // trailing",
            &record(json!({"age": 20}))
        ));
        // No lenient reading where the intent is unclear: no match.
        assert!(!eval("age > 1", &record(json!({"age": "many"}))));
        assert!(!eval("vip", &record(json!({"vip": 1}))));
    }

    #[test]
    fn unknown_functions_and_names_are_rejected() {
        let e = rejected("age > 1 && frobnicate(age)");
        assert_eq!((e.line, e.column), (1, 12));
        assert_eq!(e.message, "unknown function 'frobnicate'");
        // Type names are names only next to type().
        assert_eq!(rejected("age == int").message, "unknown field 'int'");
        assert!(rejected("Foo{a: 1} == age").message.contains("not supported"));
    }

    #[test]
    fn referenced_fields_are_collected() {
        let rule = compile(
            "age > 18 && (props.plan == 'pro' || age < 5) && country != null",
            &schema(),
        )
        .unwrap();
        assert_eq!(rule.referenced_fields(), ["age", "props", "country"]);
        assert_eq!(
            rule.source(),
            "age > 18 && (props.plan == 'pro' || age < 5) && country != null"
        );
    }

    #[test]
    fn shared_across_threads() {
        let rule = Arc::new(compile("age >= 18 && country in ['ID', 'SG']", &schema()).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let rule = Arc::clone(&rule);
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|i| {
                            let rec = record(json!({"age": (i + t) % 40, "country": "ID"}));
                            rule.matches(&rec)
                        })
                        .count()
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 550);
        }
    }

    #[test]
    fn deepest_accepted_rules_evaluate_on_a_small_stack() {
        // `a + … + a > 1` with n terms is n + 1 levels deep.
        let sum = |n: usize| format!("{} > 1", vec!["age"; n].join(" + "));
        assert!(rejected(&sum(MAX_DEPTH)).message.contains("nests more than"));
        // Comprehensions nested as deep as allowed, each iterating (over one-element lists
        // around the record's list, so that the cost bound allows the nesting).
        let mut nested = "tags.exists(t, t == 'b')".to_string();
        while compile(&format!("[1].exists(u, {nested})"), &schema()).is_ok() {
            nested = format!("[1].exists(u, {nested})");
        }
        assert!(nested.matches("exists").count() >= 5, "{nested}");
        let rec = record(json!({"age": 1, "tags": ["a", "b"]}));
        for rule in [sum(MAX_DEPTH - 1), nested] {
            let compiled = compile(&rule, &schema()).unwrap_or_else(|e| panic!("{rule}: {e}"));
            let rec = rec.clone();
            let matched = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || compiled.matches(&rec))
                .unwrap()
                .join()
                .unwrap();
            assert!(matched, "{rule}");
        }
    }
}
