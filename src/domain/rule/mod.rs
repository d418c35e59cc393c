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
//!
//! # Files
//!
//! [`compile`] is here; it runs two passes over the syntax tree, `check` (what can be decided
//! against the schema: types, functions, conditions, source positions) and `rewrite` (slots,
//! presence tests, constant folding), then `cost` bounds what a record can cost. `evaluate` is
//! what runs per record.

mod check;
pub mod cost;
mod evaluate;
mod rewrite;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::Env;
use cel::common::ast::IdedExpr;
use cel::common::types::CelBool;
use cel::common::value::Val;

use crate::domain::catalog::FieldType;
use check::*;
use evaluate::*;
use rewrite::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value as Json, json};

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
