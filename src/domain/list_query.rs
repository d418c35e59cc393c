//! Parsing and validation of the `filter` (AIP-160 subset) and `order_by` (AIP-132) strings that
//! list RPCs accept.
//!
//! Both strings come straight from callers, so they are checked here, against a per-RPC table of
//! fields, before anything reaches storage: a bad request fails early with a message that can be
//! returned as `INVALID_ARGUMENT` (it names the problem and the character position), and storage
//! code only ever sees field names it knows and values already normalised to the form it stores.
//!
//! Deliberate differences from full AIP-160:
//! - `AND` binds tighter than `OR` (`a OR b AND c` is `a OR (b AND c)`), because that is what
//!   callers expect from every other query language; the AIP-160 EBNF binds `OR` tighter.
//!   Juxtaposition (`a = 1 b = 2`) is an implicit `AND` at the same precedence as `AND`.
//! - No field-less text search, functions, `*` wildcards or member traversal beyond names that the
//!   field table lists literally: each would need storage support that does not exist.
//! - `AND`, `OR`, `NOT`, `true` and `false` are case-sensitive, as in AIP-160.
//!
//! Error positions are 0-based `char` offsets. When the input ends too early, the position is that
//! of the token left dangling (the `AND`, the `=`, the unclosed `(` or quote), because that is the
//! thing the caller has to fix; otherwise it is the offending token itself.

use std::fmt;

/// Requests are bounded so that one filter cannot buy unbounded parsing work; real filters are
/// far shorter than this.
pub const MAX_INPUT_CHARS: usize = 2_000;

/// The parser recurses per level, so the level count is capped to turn hostile input into an
/// error rather than a stack overflow. Each `( … )` group and each `NOT` / `-` is one level.
pub const MAX_NESTING_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
}

impl CompareOp {
    /// Messages quote operators the way the caller wrote them.
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Has => ":",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Kept apart from [`Value::Word`] because text and time fields insist on quoted values, so a
    /// typo'd enum word is never silently treated as free text.
    String(String),
    Bool(bool),
    Number(f64),
    /// A bare token; also the normalised, prefix-free form of every keyword value, so storage
    /// sees one spelling however the caller wrote it.
    Word(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Compare { field: String, op: CompareOp, value: Value },
}

/// What a list RPC allows for one filter field.
///
/// The kind decides both the operators and the value shape, so storage code can translate a
/// validated [`Filter`] without re-checking anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Free text: `=` / `!=` and `:`, where `:` means case-insensitive substring (the storage
    /// layer implements the matching). Only quoted strings are accepted.
    Text,
    /// An enum-like column: `=` / `!=` with a bare word or a quoted string, checked against
    /// [`FilterField::allowed`] and yielded as [`Value::Word`] without its enum prefix.
    Keyword,
    /// `=` / `!=` with `true` / `false`.
    Bool,
    /// All six ordering operators with a quoted RFC 3339 timestamp, yielded as
    /// [`Value::String`] unchanged so the storage layer parses it with its own time type.
    Time,
}

impl FieldKind {
    fn allows(self, op: CompareOp) -> bool {
        use CompareOp::*;
        match self {
            FieldKind::Text => matches!(op, Eq | Ne | Has),
            FieldKind::Keyword | FieldKind::Bool => matches!(op, Eq | Ne),
            FieldKind::Time => op != Has,
        }
    }

    fn operators(self) -> &'static str {
        match self {
            FieldKind::Text => "=, != or :",
            FieldKind::Keyword | FieldKind::Bool => "= or !=",
            FieldKind::Time => "=, !=, <, <=, > or >=",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            FieldKind::Text => "text",
            FieldKind::Keyword => "keyword",
            FieldKind::Bool => "boolean",
            FieldKind::Time => "timestamp",
        }
    }
}

/// One row of a list RPC's filter table.
#[derive(Debug, Clone, Copy)]
pub struct FilterField {
    pub name: &'static str,
    pub kind: FieldKind,
    /// For [`FieldKind::Keyword`]: the accepted values, written without the enum prefix and
    /// compared case-sensitively (enum names are case-sensitive in the API). Empty = any value.
    pub allowed: &'static [&'static str],
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryError {
    pub message: String,
    /// 0-based `char` offset where the problem is, so a client can point at it.
    pub position: usize,
}

/// `AND` and `OR` mixed at one level of parentheses.
fn ambiguous(position: usize) -> QueryError {
    QueryError::new(
        "`AND` and `OR` without parentheses are ambiguous (AIP-160 binds OR tighter, other languages AND): \
         add parentheses, e.g. `a AND (b OR c)`",
        position,
    )
}

impl QueryError {
    fn new(message: impl Into<String>, position: usize) -> Self {
        QueryError {
            message: message.into(),
            position,
        }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.message, self.position)
    }
}

impl std::error::Error for QueryError {}

/// Lists the filterable fields with what each accepts, so an error message alone tells the caller
/// how to fix the request.
pub fn describe_allowed(fields: &[FilterField]) -> String {
    if fields.is_empty() {
        return "none".to_string();
    }
    fields
        .iter()
        .map(|f| {
            let what = match f.kind {
                FieldKind::Keyword if !f.allowed.is_empty() => {
                    format!("one of {}", f.allowed.join(", "))
                }
                FieldKind::Keyword => "keyword".to_string(),
                FieldKind::Text => "quoted text".to_string(),
                FieldKind::Bool => "true or false".to_string(),
                FieldKind::Time => "quoted RFC 3339 timestamp".to_string(),
            };
            format!("{} ({}; {})", f.name, what, f.kind.operators())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses and validates a list filter.
///
/// `enum_prefixes` maps a keyword field to its proto enum prefix (`("state", "EXPORT_STATE_")`),
/// because callers copy values both from the proto (`EXPORT_STATE_DETACHED`) and from docs
/// (`DETACHED`) and both must mean the same thing. A blank filter means "no filter": `Ok(None)`.
pub fn parse_filter(
    input: &str,
    fields: &[FilterField],
    enum_prefixes: &[(&str, &str)],
) -> Result<Option<Filter>, QueryError> {
    let chars = bounded_chars(input, "filter")?;
    if chars.iter().all(|c| c.is_whitespace()) {
        return Ok(None);
    }
    let mut parser = Parser {
        chars,
        pos: 0,
        peeked: None,
        depth: 0,
        fields,
        enum_prefixes,
    };
    let filter = parser.parse_or(After::Start)?;
    // `parse_or` only stops at the end of input or at a `)` with no matching `(`.
    let rest = parser.next()?;
    match rest.tok {
        Tok::End => Ok(Some(filter)),
        Tok::RParen => Err(QueryError::new(
            "unmatched `)`: there is no `(` for it to close",
            rest.start,
        )),
        _ => Err(QueryError::new(format!("unexpected {}", rest.describe()), rest.start)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKey {
    pub field: String,
    pub desc: bool,
}

/// Parses an AIP-132 `order_by`.
///
/// A blank string yields `default` ascending, so callers always get a deterministic order (which
/// stable page tokens rely on). Field names are matched case-sensitively, like filter fields;
/// `asc` / `desc` are not, because clients commonly upper-case them.
pub fn parse_order_by(input: &str, allowed: &[&str], default: &str) -> Result<Vec<OrderKey>, QueryError> {
    let chars = bounded_chars(input, "order_by")?;
    if chars.iter().all(|c| c.is_whitespace()) {
        return Ok(vec![OrderKey {
            field: default.to_string(),
            desc: false,
        }]);
    }

    let mut segments = Vec::new();
    let mut seg_start = 0;
    for (i, &c) in chars.iter().enumerate() {
        if c == ',' {
            segments.push((seg_start, i));
            seg_start = i + 1;
        }
    }
    segments.push((seg_start, chars.len()));

    let mut keys: Vec<OrderKey> = Vec::new();
    for (start, end) in segments {
        let words = split_words(&chars, start, end);
        let Some((field_pos, field)) = words.first() else {
            // Point at a comma: the one ending this empty key, or for a trailing empty key the
            // one that opened it.
            let at = if end < chars.len() {
                end
            } else {
                start.saturating_sub(1)
            };
            return Err(QueryError::new(
                "empty sort key in order_by; remove the extra comma",
                at,
            ));
        };
        if !allowed.contains(&field.as_str()) {
            let list = if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            };
            return Err(QueryError::new(
                format!("unknown order_by field `{field}`; sortable fields: {list}"),
                *field_pos,
            ));
        }
        if keys.iter().any(|k| k.field == *field) {
            return Err(QueryError::new(
                format!("`{field}` appears more than once in order_by"),
                *field_pos,
            ));
        }
        let desc = match words.get(1) {
            None => false,
            Some((_, dir)) if dir.eq_ignore_ascii_case("asc") => false,
            Some((_, dir)) if dir.eq_ignore_ascii_case("desc") => true,
            Some((pos, other)) => {
                return Err(QueryError::new(
                    format!("expected `asc` or `desc` after `{field}`, found `{other}`"),
                    *pos,
                ));
            }
        };
        if let Some((pos, extra)) = words.get(2) {
            return Err(QueryError::new(
                format!(
                    "unexpected `{extra}` after `{field} {}`; separate sort keys with commas",
                    words[1].1
                ),
                *pos,
            ));
        }
        keys.push(OrderKey {
            field: field.clone(),
            desc,
        });
    }
    Ok(keys)
}

/// Renders a canonical, re-parseable filter (minimal parentheses, explicit `AND`, `NOT` for
/// negation), so a validated filter can be logged or bound into a page token in one spelling.
/// Re-parsing gives back an equal `Filter`, provided no keyword value itself starts with its
/// field's enum prefix.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// A child is parenthesised unless it is a term, or a chain of the same operator on
        /// the left (the parser is left-associative, and refuses `AND` and `OR` mixed at one
        /// level).
        fn child(filter: &Filter, parent: &Filter, left: bool, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let same_chain = left && std::mem::discriminant(filter) == std::mem::discriminant(parent);
            match filter {
                Filter::Or(..) | Filter::And(..) if !same_chain => write!(f, "({filter})"),
                _ => write!(f, "{filter}"),
            }
        }
        match self {
            Filter::Or(l, r) => {
                child(l, self, true, f)?;
                f.write_str(" OR ")?;
                child(r, self, false, f)
            }
            Filter::And(l, r) => {
                child(l, self, true, f)?;
                f.write_str(" AND ")?;
                child(r, self, false, f)
            }
            Filter::Not(inner) => {
                f.write_str("NOT ")?;
                child(inner, self, false, f)
            }
            Filter::Compare { field, op, value } if *op == CompareOp::Has => {
                write!(f, "{field}:{value}")
            }
            Filter::Compare { field, op, value } => write!(f, "{field} {} {value}", op.symbol()),
        }
    }
}

/// Renders values in filter syntax, quoting whenever a bare token would re-parse differently.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write_quoted(s, f),
            Value::Word(w) if is_plain_word(w) => f.write_str(w),
            Value::Word(w) => write_quoted(w, f),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) => write!(f, "{n}"),
        }
    }
}

fn write_quoted(s: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

fn is_plain_word(w: &str) -> bool {
    let mut chars = w.chars();
    chars.next().is_some_and(is_word_start)
        && chars.all(is_word_char)
        && !matches!(w, "AND" | "OR" | "NOT" | "true" | "false")
        && !is_number_shape(w)
}

fn bounded_chars(input: &str, what: &str) -> Result<Vec<char>, QueryError> {
    let mut chars = Vec::with_capacity(input.len().min(MAX_INPUT_CHARS));
    for c in input.chars() {
        if chars.len() == MAX_INPUT_CHARS {
            return Err(QueryError::new(
                format!("{what} is longer than {MAX_INPUT_CHARS} characters"),
                MAX_INPUT_CHARS,
            ));
        }
        chars.push(c);
    }
    Ok(chars)
}

fn split_words(chars: &[char], start: usize, end: usize) -> Vec<(usize, String)> {
    let mut words = Vec::new();
    let mut i = start;
    while i < end {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let word_start = i;
        while i < end && !chars[i].is_whitespace() {
            i += 1;
        }
        words.push((word_start, chars[word_start..i].iter().collect()));
    }
    words
}

fn is_word_start(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_word_char(c: char) -> bool {
    is_word_start(c) || c == '-' || c == '.'
}

/// Only plain decimals count as numbers; `1e5`, `inf` or `1.2.3` stay words so that version-like
/// or enum-like tokens are never reinterpreted.
fn is_number_shape(w: &str) -> bool {
    let (int, frac) = match w.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (w, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    all_digits(int) && frac.is_none_or(all_digits)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Cmp(CompareOp),
    Minus,
    Str(String),
    /// Identifiers, numbers, `true`/`false` and the `AND`/`OR`/`NOT` keywords; which one it is
    /// depends on where it appears, so the parser decides.
    Bare(String),
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

impl Token {
    fn keyword(&self) -> Option<&'static str> {
        match &self.tok {
            Tok::Bare(w) => match w.as_str() {
                "AND" => Some("AND"),
                "OR" => Some("OR"),
                "NOT" => Some("NOT"),
                _ => None,
            },
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match &self.tok {
            Tok::LParen => "`(`".to_string(),
            Tok::RParen => "`)`".to_string(),
            Tok::Cmp(op) => format!("`{}`", op.symbol()),
            Tok::Minus => "`-`".to_string(),
            Tok::Str(_) => "a quoted string".to_string(),
            Tok::Bare(w) if self.keyword().is_some() => format!("keyword `{w}`"),
            Tok::Bare(w) => format!("`{w}`"),
            Tok::End => "the end of the filter".to_string(),
        }
    }
}

/// What precedes a term the parser is about to read, so a missing term is reported against the
/// token that needs it.
#[derive(Debug, Clone, Copy)]
enum After {
    Start,
    Token(&'static str, usize),
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    peeked: Option<Token>,
    depth: usize,
    fields: &'a [FilterField],
    enum_prefixes: &'a [(&'a str, &'a str)],
}

impl Parser<'_> {
    // Tokens are lexed on demand rather than up front so that the earliest problem in the input
    // is the one reported, whether it is lexical or grammatical.
    fn peek(&mut self) -> Result<Token, QueryError> {
        if let Some(tok) = &self.peeked {
            return Ok(tok.clone());
        }
        let tok = self.lex()?;
        self.peeked = Some(tok.clone());
        Ok(tok)
    }

    fn next(&mut self) -> Result<Token, QueryError> {
        match self.peeked.take() {
            Some(tok) => Ok(tok),
            None => self.lex(),
        }
    }

    fn bump(&mut self) {
        self.peeked = None;
    }

    fn lex(&mut self) -> Result<Token, QueryError> {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(&c) = self.chars.get(start) else {
            return Ok(Token {
                tok: Tok::End,
                start,
                end: start,
            });
        };
        let followed_by_eq = self.chars.get(start + 1) == Some(&'=');
        let (tok, len) = match c {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '=' => (Tok::Cmp(CompareOp::Eq), 1),
            ':' => (Tok::Cmp(CompareOp::Has), 1),
            '<' if followed_by_eq => (Tok::Cmp(CompareOp::Le), 2),
            '<' => (Tok::Cmp(CompareOp::Lt), 1),
            '>' if followed_by_eq => (Tok::Cmp(CompareOp::Ge), 2),
            '>' => (Tok::Cmp(CompareOp::Gt), 1),
            '!' if followed_by_eq => (Tok::Cmp(CompareOp::Ne), 2),
            '!' => {
                return Err(QueryError::new(
                    "unexpected `!`; use `!=` for \"not equal\", or `NOT` or `-` to negate a term",
                    start,
                ));
            }
            '-' => (Tok::Minus, 1),
            '"' | '\'' => return self.lex_string(c),
            c if is_word_start(c) => {
                let mut end = start;
                while self.chars.get(end).is_some_and(|&c| is_word_char(c)) {
                    end += 1;
                }
                (Tok::Bare(self.chars[start..end].iter().collect()), end - start)
            }
            other => {
                return Err(QueryError::new(format!("unexpected character {other:?}"), start));
            }
        };
        self.pos = start + len;
        Ok(Token {
            tok,
            start,
            end: self.pos,
        })
    }

    fn lex_string(&mut self, quote: char) -> Result<Token, QueryError> {
        let start = self.pos;
        let unterminated = || {
            QueryError::new(
                format!("unterminated string: no closing {quote} for the one opened here"),
                start,
            )
        };
        let mut out = String::new();
        let mut i = start + 1;
        loop {
            match self.chars.get(i) {
                None => return Err(unterminated()),
                Some(&c) if c == quote => {
                    i += 1;
                    break;
                }
                Some('\\') => match self.chars.get(i + 1) {
                    Some(&escaped @ ('"' | '\'' | '\\')) => {
                        out.push(escaped);
                        i += 2;
                    }
                    None => return Err(unterminated()),
                    Some(other) => {
                        return Err(QueryError::new(
                            format!("unsupported escape `\\{other}` in string; only \\\", \\' and \\\\ are allowed"),
                            i,
                        ));
                    }
                },
                Some(&c) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        self.pos = i;
        Ok(Token {
            tok: Tok::Str(out),
            start,
            end: i,
        })
    }

    /// A sequence joined by `OR`, or by `AND` — not both: AIP-160 binds `OR` tighter than
    /// `AND`, most other filter languages the other way round, so a filter that mixes them
    /// without parentheses means different things to different readers and is refused at the
    /// second operator.
    fn parse_or(&mut self, after: After) -> Result<Filter, QueryError> {
        let (mut left, mut and_at) = self.parse_and(after)?;
        loop {
            let tok = self.peek()?;
            if tok.keyword() != Some("OR") {
                return Ok(left);
            }
            if and_at.is_some() {
                return Err(ambiguous(tok.start));
            }
            self.bump();
            let (right, right_and) = self.parse_and(After::Token("OR", tok.start))?;
            if let Some(at) = right_and {
                return Err(ambiguous(at));
            }
            and_at = right_and;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
    }

    /// Terms joined by `AND` (or juxtaposed); also where the first `AND` was.
    fn parse_and(&mut self, after: After) -> Result<(Filter, Option<usize>), QueryError> {
        let mut left = self.parse_unary(after)?;
        let mut first_and = None;
        loop {
            let tok = self.peek()?;
            let right = match (&tok.tok, tok.keyword()) {
                (Tok::End | Tok::RParen, _) | (_, Some("OR")) => return Ok((left, first_and)),
                (_, Some("AND")) => {
                    self.bump();
                    self.parse_unary(After::Token("AND", tok.start))?
                }
                // Juxtaposed terms are an implicit AND.
                _ => self.parse_unary(After::Start)?,
            };
            first_and.get_or_insert(tok.start);
            left = Filter::And(Box::new(left), Box::new(right));
        }
    }

    fn enter(&mut self, at: usize) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_NESTING_DEPTH {
            return Err(QueryError::new(
                format!(
                    "filter is nested too deeply (more than {MAX_NESTING_DEPTH} levels of parentheses and negations)"
                ),
                at,
            ));
        }
        Ok(())
    }

    fn parse_unary(&mut self, after: After) -> Result<Filter, QueryError> {
        let tok = self.peek()?;
        let negation = match (&tok.tok, tok.keyword()) {
            (_, Some("NOT")) => Some("NOT"),
            (Tok::Minus, _) => Some("-"),
            _ => None,
        };
        if let Some(what) = negation {
            self.bump();
            self.enter(tok.start)?;
            let inner = self.parse_unary(After::Token(what, tok.start))?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        match (&tok.tok, tok.keyword()) {
            (Tok::LParen, _) => {
                self.bump();
                self.enter(tok.start)?;
                let inner = self.parse_or(After::Token("(", tok.start))?;
                let close = self.next()?;
                match close.tok {
                    Tok::RParen => {
                        self.depth -= 1;
                        Ok(inner)
                    }
                    Tok::End => Err(QueryError::new("unclosed `(`: no matching `)`", tok.start)),
                    _ => Err(QueryError::new(
                        format!("expected `)`, found {}", close.describe()),
                        close.start,
                    )),
                }
            }
            (Tok::Bare(_), None) => self.parse_comparison(),
            _ => Err(missing_term(after, &tok)),
        }
    }

    fn parse_comparison(&mut self) -> Result<Filter, QueryError> {
        let field_tok = self.next()?;
        let Tok::Bare(name) = &field_tok.tok else {
            return Err(QueryError::new(
                format!("expected a field name, found {}", field_tok.describe()),
                field_tok.start,
            ));
        };
        let op_tok = self.peek()?;
        let Tok::Cmp(op) = op_tok.tok else {
            return Err(missing_operator(name, &field_tok, &op_tok));
        };
        self.bump();

        let Some(field) = self.fields.iter().find(|f| f.name == name) else {
            let message = if self.fields.is_empty() {
                format!("unknown filter field `{name}`: this list does not support filtering")
            } else {
                format!(
                    "unknown filter field `{name}`; filterable fields: {}",
                    describe_allowed(self.fields)
                )
            };
            return Err(QueryError::new(message, field_tok.start));
        };
        if !field.kind.allows(op) {
            return Err(QueryError::new(
                format!(
                    "operator `{}` is not supported for {} field `{name}`; use {}",
                    op.symbol(),
                    field.kind.noun(),
                    field.kind.operators()
                ),
                op_tok.start,
            ));
        }
        let (value, value_pos) = self.parse_value(op, op_tok.start)?;
        let value = self.check_value(field, value, value_pos)?;
        Ok(Filter::Compare {
            field: name.clone(),
            op,
            value,
        })
    }

    fn parse_value(&mut self, op: CompareOp, op_pos: usize) -> Result<(Value, usize), QueryError> {
        let tok = self.next()?;
        let expected = || format!("expected a value after `{}`", op.symbol());
        match &tok.tok {
            Tok::Str(s) => Ok((Value::String(s.clone()), tok.start)),
            Tok::Bare(w) if tok.keyword().is_none() => Ok((classify_bare(w, tok.start)?, tok.start)),
            Tok::Minus => {
                let next = self.peek()?;
                if let Tok::Bare(w) = &next.tok
                    && next.start == tok.end
                    && is_number_shape(w)
                {
                    self.bump();
                    if let Value::Number(n) = classify_bare(w, tok.start)? {
                        return Ok((Value::Number(-n), tok.start));
                    }
                }
                Err(QueryError::new(format!("{}, found `-`", expected()), tok.start))
            }
            Tok::End => Err(QueryError::new(
                format!("{}, but the filter ends there", expected()),
                op_pos,
            )),
            _ => Err(QueryError::new(
                format!("{}, found {}", expected(), tok.describe()),
                tok.start,
            )),
        }
    }

    fn check_value(&self, field: &FilterField, value: Value, at: usize) -> Result<Value, QueryError> {
        let name = field.name;
        match (field.kind, value) {
            (FieldKind::Text, Value::String(s)) => Ok(Value::String(s)),
            (FieldKind::Text, other) => Err(QueryError::new(
                format!(
                    "text field `{name}` needs a quoted string, e.g. {name} = \"…\"; found {}",
                    describe_value(&other)
                ),
                at,
            )),
            (FieldKind::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
            (FieldKind::Bool, other) => Err(QueryError::new(
                format!(
                    "boolean field `{name}` needs true or false (lower-case, unquoted); found {}",
                    describe_value(&other)
                ),
                at,
            )),
            (FieldKind::Time, Value::String(s)) if is_rfc3339(&s) => Ok(Value::String(s)),
            (FieldKind::Time, Value::String(s)) => Err(QueryError::new(
                format!(
                    "\"{s}\" is not an RFC 3339 timestamp for `{name}`; expected e.g. \"2024-05-01T12:00:00Z\" or \"2024-05-01T12:00:00.5+02:00\""
                ),
                at,
            )),
            (FieldKind::Time, other) => Err(QueryError::new(
                format!(
                    "timestamp field `{name}` needs a quoted RFC 3339 timestamp, e.g. {name} > \"2024-05-01T12:00:00Z\"; found {}",
                    describe_value(&other)
                ),
                at,
            )),
            (FieldKind::Keyword, Value::String(s) | Value::Word(s)) => {
                self.normalise_keyword(field, &s, at).map(Value::Word)
            }
            (FieldKind::Keyword, other) => Err(QueryError::new(
                format!(
                    "keyword field `{name}` needs {}; found {}",
                    expected_keywords(field),
                    describe_value(&other)
                ),
                at,
            )),
        }
    }

    fn normalise_keyword(&self, field: &FilterField, raw: &str, at: usize) -> Result<String, QueryError> {
        let prefix = self
            .enum_prefixes
            .iter()
            .find(|(name, _)| *name == field.name)
            .map(|(_, prefix)| *prefix)
            .filter(|prefix| !prefix.is_empty());
        let bare = prefix
            .and_then(|p| raw.strip_prefix(p))
            .filter(|rest| !rest.is_empty())
            .unwrap_or(raw);
        if field.allowed.is_empty() || field.allowed.contains(&bare) {
            return Ok(bare.to_string());
        }
        let mut message = format!(
            "`{raw}` is not a valid value for `{}`; allowed values: {}",
            field.name,
            field.allowed.join(", ")
        );
        if let Some(p) = prefix {
            message.push_str(&format!(" (optionally prefixed with {p})"));
        }
        if let Some(close) = field.allowed.iter().find(|a| a.eq_ignore_ascii_case(bare)) {
            message.push_str(&format!("; values are case-sensitive, did you mean {close}?"));
        }
        Err(QueryError::new(message, at))
    }
}

fn missing_term(after: After, found: &Token) -> QueryError {
    match (after, &found.tok) {
        (After::Token(what, at), Tok::End) => QueryError::new(
            format!("`{what}` must be followed by a filter term, but the filter ends there"),
            at,
        ),
        (After::Start, Tok::RParen) => QueryError::new("unmatched `)`: there is no `(` for it to close", found.start),
        (_, Tok::Cmp(op)) => QueryError::new(format!("expected a field name before `{}`", op.symbol()), found.start),
        (After::Token(what, _), _) => QueryError::new(
            format!("expected a filter term after `{what}`, found {}", found.describe()),
            found.start,
        ),
        (After::Start, _) => QueryError::new(
            format!(
                "expected a filter term such as `field = value`, found {}",
                found.describe()
            ),
            found.start,
        ),
    }
}

fn missing_operator(name: &str, field_tok: &Token, found: &Token) -> QueryError {
    let lower = name.to_ascii_lowercase();
    if matches!(lower.as_str(), "and" | "or" | "not") {
        return QueryError::new(
            format!(
                "`{name}` is not a keyword; write {} in upper case",
                lower.to_ascii_uppercase()
            ),
            field_tok.start,
        );
    }
    const OPS: &str = "=, !=, <, <=, >, >= or :";
    match found.tok {
        Tok::End => QueryError::new(
            format!(
                "`{name}` must be followed by a comparison operator ({OPS}) and a value; free-text search is not supported"
            ),
            field_tok.start,
        ),
        _ => QueryError::new(
            format!(
                "expected a comparison operator ({OPS}) after `{name}`, found {}",
                found.describe()
            ),
            found.start,
        ),
    }
}

fn classify_bare(w: &str, at: usize) -> Result<Value, QueryError> {
    Ok(match w {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ if is_number_shape(w) => match w.parse::<f64>() {
            Ok(n) if n.is_finite() => Value::Number(n),
            _ => return Err(QueryError::new(format!("number `{w}` is out of range"), at)),
        },
        _ => Value::Word(w.to_string()),
    })
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string \"{s}\""),
        Value::Word(w) => format!("`{w}`"),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
    }
}

fn expected_keywords(field: &FilterField) -> String {
    if field.allowed.is_empty() {
        "a word or a quoted string".to_string()
    } else {
        format!("one of {}", field.allowed.join(", "))
    }
}

/// Checks shape and ranges (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, real calendar dates) so that
/// nonsense is rejected at the API boundary instead of surfacing as a storage error.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) =
        (num(0, 4), num(5, 2), num(8, 2), num(11, 2), num(14, 2), num(17, 2))
    else {
        return false;
    };
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt") && at(13, b":") && at(16, b":")) {
        return false;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    // Second 60 is a leap second, which RFC 3339 permits.
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut i = 19;
    if at(i, b".") {
        i += 1;
        let frac_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == frac_start {
            return false;
        }
    }
    match b.get(i..) {
        Some(b"Z" | b"z") => true,
        Some([sign, ..]) if (*sign == b'+' || *sign == b'-') && b.len() == i + 6 => {
            at(i + 3, b":") && num(i + 1, 2).is_some_and(|h| h <= 23) && num(i + 4, 2).is_some_and(|m| m <= 59)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[FilterField] = &[
        FilterField {
            name: "display_name",
            kind: FieldKind::Text,
            allowed: &[],
        },
        FilterField {
            name: "state",
            kind: FieldKind::Keyword,
            allowed: &["ACTIVE", "DETACHED", "FAILED"],
        },
        FilterField {
            name: "connection_type",
            kind: FieldKind::Keyword,
            allowed: &["SEGMENT", "WEBHOOK"],
        },
        FilterField {
            name: "status",
            kind: FieldKind::Keyword,
            allowed: &["RUNNING", "SUCCEEDED", "FAILED"],
        },
        FilterField {
            name: "label",
            kind: FieldKind::Keyword,
            allowed: &[],
        },
        FilterField {
            name: "archived",
            kind: FieldKind::Bool,
            allowed: &[],
        },
        FilterField {
            name: "create_time",
            kind: FieldKind::Time,
            allowed: &[],
        },
    ];
    const PREFIXES: &[(&str, &str)] = &[("state", "EXPORT_STATE_"), ("status", "RUN_STATE_")];
    const SORTABLE: &[&str] = &["create_time", "display_name", "state"];

    fn parse(input: &str) -> Result<Option<Filter>, QueryError> {
        parse_filter(input, FIELDS, PREFIXES)
    }

    fn ok(input: &str) -> Filter {
        match parse(input) {
            Ok(Some(f)) => f,
            other => panic!("{input:?} should parse, got {other:?}"),
        }
    }

    fn err(input: &str) -> QueryError {
        match parse(input) {
            Err(e) => e,
            other => panic!("{input:?} should fail, got {other:?}"),
        }
    }

    /// Asserts the error position and that the message mentions each `needle`.
    fn assert_err(input: &str, position: usize, needles: &[&str]) {
        let e = err(input);
        assert_eq!(e.position, position, "position for {input:?}: {}", e.message);
        for needle in needles {
            assert!(
                e.message.contains(needle),
                "message for {input:?} should contain {needle:?}: {}",
                e.message
            );
        }
    }

    fn cmp(field: &str, op: CompareOp, value: Value) -> Filter {
        Filter::Compare {
            field: field.to_string(),
            op,
            value,
        }
    }
    fn s(v: &str) -> Value {
        Value::String(v.to_string())
    }
    fn w(v: &str) -> Value {
        Value::Word(v.to_string())
    }
    fn and(l: Filter, r: Filter) -> Filter {
        Filter::And(Box::new(l), Box::new(r))
    }
    fn or(l: Filter, r: Filter) -> Filter {
        Filter::Or(Box::new(l), Box::new(r))
    }
    fn not(f: Filter) -> Filter {
        Filter::Not(Box::new(f))
    }
    fn name_is(v: &str) -> Filter {
        cmp("display_name", CompareOp::Eq, s(v))
    }
    fn state_is(v: &str) -> Filter {
        cmp("state", CompareOp::Eq, w(v))
    }
    fn archived_is(b: bool) -> Filter {
        cmp("archived", CompareOp::Eq, Value::Bool(b))
    }

    #[test]
    fn blank_filter_means_no_filter() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   \t\n "), Ok(None));
    }

    #[test]
    fn operators_with_and_without_whitespace() {
        assert_eq!(ok("display_name=\"a\""), name_is("a"));
        assert_eq!(ok("  display_name   =   \"a\"  "), name_is("a"));
        assert_eq!(
            ok("display_name:\"nightly\""),
            cmp("display_name", CompareOp::Has, s("nightly"))
        );
        assert_eq!(ok("display_name != 'x'"), cmp("display_name", CompareOp::Ne, s("x")));
        let t = "\"2024-05-01T12:00:00Z\"";
        for (op_text, op) in [
            ("<", CompareOp::Lt),
            ("<=", CompareOp::Le),
            (">", CompareOp::Gt),
            (">=", CompareOp::Ge),
            ("=", CompareOp::Eq),
            ("!=", CompareOp::Ne),
        ] {
            let expected = cmp("create_time", op, s("2024-05-01T12:00:00Z"));
            assert_eq!(ok(&format!("create_time{op_text}{t}")), expected);
            assert_eq!(ok(&format!("create_time {op_text} {t}")), expected);
        }
    }

    #[test]
    fn and_and_or_need_parentheses_when_mixed() {
        assert_err(
            "display_name = \"x\" OR state = FAILED AND archived = true",
            37,
            &["ambiguous", "parentheses"],
        );
        assert_err(
            "display_name = \"x\" AND state = FAILED OR archived = true",
            38,
            &["ambiguous"],
        );
        assert_err(
            "state = FAILED archived = true OR display_name = \"x\"",
            31,
            &["ambiguous"],
        );
        assert_eq!(
            ok("display_name = \"x\" OR (state = FAILED AND archived = true)"),
            or(name_is("x"), and(state_is("FAILED"), archived_is(true)))
        );
        assert_eq!(
            ok("(display_name = \"x\" AND state = FAILED) OR archived = true"),
            or(and(name_is("x"), state_is("FAILED")), archived_is(true))
        );
    }

    #[test]
    fn chains_are_left_associative() {
        assert_eq!(
            ok("state = ACTIVE OR state = FAILED OR state = DETACHED"),
            or(or(state_is("ACTIVE"), state_is("FAILED")), state_is("DETACHED"))
        );
        assert_eq!(
            ok("state = ACTIVE AND archived = true AND display_name = \"x\""),
            and(and(state_is("ACTIVE"), archived_is(true)), name_is("x"))
        );
    }

    #[test]
    fn parentheses_override_precedence() {
        assert_eq!(
            ok("(display_name = \"x\" OR state = FAILED) AND archived = true"),
            and(or(name_is("x"), state_is("FAILED")), archived_is(true))
        );
        assert_eq!(
            ok("((state = FAILED))"),
            state_is("FAILED"),
            "redundant parentheses leave no trace"
        );
        assert_eq!(
            ok("archived=true AND(state=FAILED OR state=ACTIVE)"),
            and(archived_is(true), or(state_is("FAILED"), state_is("ACTIVE")))
        );
    }

    #[test]
    fn juxtaposition_is_implicit_and() {
        assert_eq!(
            ok("state = FAILED archived = true"),
            and(state_is("FAILED"), archived_is(true))
        );
        assert_eq!(
            ok("state=FAILED (archived=true)"),
            and(state_is("FAILED"), archived_is(true))
        );
    }

    #[test]
    fn not_and_minus_negate() {
        assert_eq!(ok("NOT archived = true"), not(archived_is(true)));
        assert_eq!(ok("-archived = true"), not(archived_is(true)));
        assert_eq!(ok("- archived = true"), not(archived_is(true)));
        assert_eq!(ok("NOT NOT archived = true"), not(not(archived_is(true))));
        assert_eq!(
            ok("-(state = FAILED OR state = ACTIVE)"),
            not(or(state_is("FAILED"), state_is("ACTIVE")))
        );
        assert_eq!(
            ok("NOT(state = FAILED)"),
            not(state_is("FAILED")),
            "NOT needs no space before ("
        );
        assert_eq!(
            ok("NOT state = FAILED AND archived = true"),
            and(not(state_is("FAILED")), archived_is(true)),
            "negation binds tighter than AND"
        );
        assert_eq!(
            ok("state = FAILED -archived = true"),
            and(state_is("FAILED"), not(archived_is(true)))
        );
        assert_eq!(
            ok("state = FAILED NOT archived = true"),
            and(state_is("FAILED"), not(archived_is(true)))
        );
    }

    #[test]
    fn text_fields() {
        assert_eq!(
            ok(r#"display_name = "say \"hi\" \\ bye""#),
            name_is(r#"say "hi" \ bye"#)
        );
        assert_eq!(ok(r"display_name = 'it\'s'"), name_is("it's"));
        assert_eq!(ok(r#"display_name = 'a "b"'"#), name_is("a \"b\""));
        assert_eq!(ok("display_name = \"\""), name_is(""));
        assert_eq!(ok("display_name = \"ünïcødé ✓\""), name_is("ünïcødé ✓"));

        assert_err("display_name < \"x\"", 13, &["`<`", "text", "=, != or :"]);
        assert_err("display_name >= \"x\"", 13, &["`>=`"]);
        assert_err("display_name = nightly", 15, &["quoted string", "`nightly`"]);
        assert_err("display_name = 42", 15, &["quoted string", "number 42"]);
        assert_err("display_name = -1.5", 15, &["number -1.5"]);
        assert_err("display_name = true", 15, &["quoted string", "`true`"]);
    }

    #[test]
    fn keyword_fields_normalise_enum_prefix() {
        for input in [
            "state = DETACHED",
            "state = EXPORT_STATE_DETACHED",
            "state = \"DETACHED\"",
            "state = 'EXPORT_STATE_DETACHED'",
            "state=EXPORT_STATE_DETACHED",
        ] {
            assert_eq!(ok(input), state_is("DETACHED"), "{input}");
        }
        assert_eq!(
            ok("status = RUN_STATE_FAILED"),
            cmp("status", CompareOp::Eq, w("FAILED"))
        );
        assert_eq!(ok("status != FAILED"), cmp("status", CompareOp::Ne, w("FAILED")));
        assert_eq!(
            ok("connection_type = SEGMENT"),
            cmp("connection_type", CompareOp::Eq, w("SEGMENT"))
        );
        // An empty allow-list accepts any word, including ones with '-' and '.'.
        assert_eq!(ok("label = team-a.v2"), cmp("label", CompareOp::Eq, w("team-a.v2")));
        assert_eq!(ok("label = \"two words\""), cmp("label", CompareOp::Eq, w("two words")));
    }

    #[test]
    fn keyword_field_errors() {
        assert_err(
            "state = BOGUS",
            8,
            &["`BOGUS`", "`state`", "ACTIVE, DETACHED, FAILED", "EXPORT_STATE_"],
        );
        assert_err("state = detached", 8, &["case-sensitive", "did you mean DETACHED"]);
        assert_err("state = EXPORT_STATE_", 8, &["`EXPORT_STATE_`"]);
        // A prefix belongs to its own field only.
        assert_err("connection_type = EXPORT_STATE_SEGMENT", 18, &["SEGMENT, WEBHOOK"]);
        assert_err("state = RUN_STATE_FAILED", 8, &["`RUN_STATE_FAILED`"]);
        assert_err("state : FAILED", 6, &["`:`", "keyword", "= or !="]);
        assert_err("state < FAILED", 6, &["`<`"]);
        assert_err("state = 1", 8, &["one of ACTIVE", "number 1"]);
        assert_err("state = false", 8, &["`false`"]);
    }

    #[test]
    fn bool_fields() {
        assert_eq!(ok("archived = true"), archived_is(true));
        assert_eq!(ok("archived=false"), archived_is(false));
        assert_eq!(
            ok("archived != false"),
            cmp("archived", CompareOp::Ne, Value::Bool(false))
        );
        assert_err("archived = \"true\"", 11, &["true or false", "string"]);
        assert_err("archived = TRUE", 11, &["lower-case", "`TRUE`"]);
        assert_err("archived = 1", 11, &["number 1"]);
        assert_err("archived < true", 9, &["`<`", "boolean"]);
        assert_err("archived:true", 8, &["`:`"]);
    }

    #[test]
    fn time_fields() {
        for ts in [
            "2024-05-01T12:00:00Z",
            "2024-05-01t12:00:00z",
            "2024-05-01T12:00:00.123456789Z",
            "2024-05-01T12:00:00+02:00",
            "2024-05-01T23:59:60-05:30",
            "2024-02-29T00:00:00Z",
            "2000-02-29T00:00:00Z",
        ] {
            assert_eq!(
                ok(&format!("create_time >= \"{ts}\"")),
                cmp("create_time", CompareOp::Ge, s(ts)),
                "{ts}"
            );
        }
        for bad in [
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-05-01 12:00:00Z",
            "2024-13-01T12:00:00Z",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-05-00T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:60:00Z",
            "2024-05-01T12:00:61Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00+24:00",
            "2024-05-01T12:00:00+02:00:00",
            "2024-05-01T12:00:00ZZ",
            "２０２４-05-01T12:00:00Z",
            "yesterday",
        ] {
            assert_err(&format!("create_time > \"{bad}\""), 14, &["not an RFC 3339 timestamp"]);
        }
        assert_err("create_time : \"2024-05-01T12:00:00Z\"", 12, &["`:`", "timestamp"]);
        assert_err("create_time > yesterday", 14, &["quoted RFC 3339", "`yesterday`"]);
        assert_err("create_time > 2024", 14, &["quoted RFC 3339"]);
    }

    #[test]
    fn unknown_field_lists_allowed_fields() {
        let e = err("owner = \"bob\"");
        assert_eq!(e.position, 0);
        assert!(e.message.contains("`owner`"), "{}", e.message);
        assert!(e.message.contains(&describe_allowed(FIELDS)), "{}", e.message);

        assert_err("state = FAILED AND Owner = \"x\"", 19, &["`Owner`"]);
        let e = parse_filter("a = 1", &[], &[]).unwrap_err();
        assert_eq!(e.position, 0);
        assert!(e.message.contains("does not support filtering"), "{}", e.message);
    }

    #[test]
    fn describe_allowed_is_self_explanatory() {
        assert_eq!(describe_allowed(&[]), "none");
        assert_eq!(
            describe_allowed(&FIELDS[..2]),
            "display_name (quoted text; =, != or :), state (one of ACTIVE, DETACHED, FAILED; = or !=)"
        );
        assert_eq!(
            describe_allowed(&FIELDS[4..]),
            "label (keyword; = or !=), archived (true or false; = or !=), \
             create_time (quoted RFC 3339 timestamp; =, !=, <, <=, > or >=)"
        );
    }

    #[test]
    fn parenthesis_errors() {
        assert_err("(state = FAILED", 0, &["unclosed `(`"]);
        assert_err(
            "archived = true AND (state = FAILED OR (state = ACTIVE)",
            20,
            &["unclosed"],
        );
        assert_err("state = FAILED)", 14, &["unmatched `)`"]);
        assert_err("(state = FAILED))", 16, &["unmatched `)`"]);
        assert_err(")", 0, &["unmatched `)`"]);
        assert_err("()", 1, &["after `(`", "`)`"]);
        assert_err("(", 0, &["`(`", "ends there"]);
    }

    #[test]
    fn dangling_combinator_errors() {
        assert_err("state = FAILED AND", 15, &["`AND`", "ends there"]);
        assert_err("state = FAILED OR  ", 15, &["`OR`", "ends there"]);
        assert_err("state = FAILED NOT", 15, &["`NOT`", "ends there"]);
        assert_err("state = FAILED -", 15, &["`-`", "ends there"]);
        assert_err("AND state = FAILED", 0, &["keyword `AND`"]);
        assert_err("OR state = FAILED", 0, &["keyword `OR`"]);
        assert_err("state = FAILED AND OR archived = true", 19, &["after `AND`", "`OR`"]);
        assert_err("state = FAILED OR AND archived = true", 18, &["after `OR`", "`AND`"]);
        assert_err("(state = FAILED OR)", 18, &["after `OR`", "`)`"]);
        assert_err("NOT AND archived = true", 4, &["after `NOT`"]);
    }

    #[test]
    fn lowercase_keywords_get_a_hint() {
        assert_err("state = FAILED and archived = true", 15, &["upper case", "AND"]);
        assert_err("state = FAILED or archived = true", 15, &["OR"]);
    }

    #[test]
    fn string_errors() {
        assert_err("display_name = \"abc", 15, &["unterminated"]);
        assert_err("display_name = 'abc\"", 15, &["unterminated"]);
        assert_err("display_name = \"abc\\\"", 15, &["unterminated"]);
        assert_err("display_name = \"abc\\", 15, &["unterminated"]);
        assert_err("display_name = \"C:\\temp\"", 18, &["unsupported escape `\\t`"]);
    }

    #[test]
    fn operator_and_value_errors() {
        assert_err("display_name", 0, &["comparison operator", "free-text"]);
        assert_err("nightly", 0, &["free-text"]);
        assert_err("display_name \"x\"", 13, &["comparison operator", "quoted string"]);
        assert_err("state =", 6, &["value after `=`", "ends there"]);
        assert_err("state = )", 8, &["value after `=`", "`)`"]);
        assert_err("state = AND archived = true", 8, &["keyword `AND`"]);
        assert_err("state = = FAILED", 8, &["value after `=`", "`=`"]);
        assert_err("state = - FAILED", 8, &["found `-`"]);
        assert_err("= FAILED", 0, &["field name before `=`"]);
        assert_err("\"state\" = FAILED", 0, &["quoted string"]);
        assert_err("state ! FAILED", 6, &["`!=`"]);
        assert_err(&format!("display_name = {}", "9".repeat(400)), 15, &["out of range"]);
    }

    #[test]
    fn trailing_garbage_errors() {
        assert_err("state = FAILED #", 15, &["unexpected character '#'"]);
        assert_err("state = FAILED \"x\"", 15, &["quoted string"]);
        assert_err("state = FAILED =", 15, &["field name before `=`"]);
        assert_err("state = FAILED;", 14, &["';'"]);
        assert_err("state = FAILED archived", 15, &["`archived`", "free-text"]);
    }

    #[test]
    fn positions_count_chars_not_bytes() {
        // "é" and "✓" are multi-byte in UTF-8 but one char each.
        assert_err("display_name = \"é✓\" #", 20, &["'#'"]);
        assert_err("display_name = \"é\" OR ñ = \"x\"", 22, &["`ñ`"]);
    }

    #[test]
    fn numbers_are_plain_decimals() {
        assert_eq!(classify_bare("42", 0), Ok(Value::Number(42.0)));
        assert_eq!(classify_bare("1.5", 0), Ok(Value::Number(1.5)));
        assert_eq!(classify_bare("1.2.3", 0), Ok(w("1.2.3")));
        assert_eq!(classify_bare("1e5", 0), Ok(w("1e5")));
        assert_eq!(classify_bare("inf", 0), Ok(w("inf")));
        assert_eq!(classify_bare("true", 0), Ok(Value::Bool(true)));
        assert_eq!(classify_bare("True", 0), Ok(w("True")));
    }

    #[test]
    fn length_limit() {
        let at_limit = format!("display_name = \"{}\"", "x".repeat(MAX_INPUT_CHARS - 17));
        assert_eq!(at_limit.chars().count(), MAX_INPUT_CHARS);
        assert!(parse(&at_limit).is_ok());
        let over = format!("display_name = \"{}\"", "x".repeat(MAX_INPUT_CHARS - 16));
        assert_err(&over, MAX_INPUT_CHARS, &["longer than 2000"]);
        // The limit is in characters: 2000 multi-byte chars are still fine.
        let wide = format!("display_name = \"{}\"", "é".repeat(MAX_INPUT_CHARS - 17));
        assert!(parse(&wide).is_ok());
        assert_err(&" ".repeat(MAX_INPUT_CHARS + 1), MAX_INPUT_CHARS, &["longer"]);
        // Huge inputs are rejected without reading them whole.
        assert_err(&"(".repeat(1_000_000), MAX_INPUT_CHARS, &["longer"]);
    }

    #[test]
    fn nesting_limit() {
        let nested = |n: usize| format!("{}state = FAILED{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(ok(&nested(MAX_NESTING_DEPTH)), state_is("FAILED"));
        assert_err(
            &nested(MAX_NESTING_DEPTH + 1),
            MAX_NESTING_DEPTH,
            &["nested too deeply"],
        );
        assert_err(&"(".repeat(1_500), MAX_NESTING_DEPTH, &["nested too deeply"]);

        let nots = |n: usize| format!("{}state = FAILED", "NOT ".repeat(n));
        assert!(parse(&nots(MAX_NESTING_DEPTH)).is_ok());
        assert_err(
            &nots(MAX_NESTING_DEPTH + 1),
            4 * MAX_NESTING_DEPTH,
            &["nested too deeply"],
        );
        assert_err(&"-".repeat(1_999), MAX_NESTING_DEPTH, &["nested too deeply"]);

        // Depth is about nesting, not length: a long flat chain is fine.
        let chain = vec!["archived=true"; 100].join(" AND ");
        assert!(chain.chars().count() <= MAX_INPUT_CHARS);
        assert!(parse(&chain).is_ok());
        let mixed = format!("{}state = FAILED{}", "(NOT ".repeat(16), ")".repeat(16));
        assert!(parse(&mixed).is_ok());
        let mixed = format!("{}state = FAILED{}", "(NOT ".repeat(17), ")".repeat(17));
        assert_err(&mixed, 5 * 16, &["nested too deeply"]);
    }

    #[test]
    fn display_is_canonical_and_reparses() {
        for (input, canonical) in [
            ("state=EXPORT_STATE_FAILED", "state = FAILED"),
            ("display_name:'a\"b'", r#"display_name:"a\"b""#),
            (
                "display_name = \"x\" OR (state = FAILED archived = true)",
                "display_name = \"x\" OR (state = FAILED AND archived = true)",
            ),
            (
                "(display_name = \"x\" OR state = FAILED) archived = true",
                "(display_name = \"x\" OR state = FAILED) AND archived = true",
            ),
            (
                "state = FAILED OR (state = ACTIVE OR state = DETACHED)",
                "state = FAILED OR (state = ACTIVE OR state = DETACHED)",
            ),
            (
                "-(state = FAILED archived = true)",
                "NOT (state = FAILED AND archived = true)",
            ),
            ("label = \"two words\"", "label = \"two words\""),
            ("label = 'AND'", "label = \"AND\""),
            ("label = \"7\"", "label = \"7\""),
        ] {
            let filter = ok(input);
            assert_eq!(filter.to_string(), canonical, "{input}");
            assert_eq!(ok(canonical), filter, "{canonical}");
        }
    }

    #[test]
    fn query_error_display_includes_position() {
        let e = err("state = BOGUS");
        assert!(e.to_string().ends_with("(at character 8)"), "{e}");
    }

    #[test]
    fn order_by_forms() {
        let key = |field: &str, desc: bool| OrderKey {
            field: field.to_string(),
            desc,
        };
        assert_eq!(
            parse_order_by("", SORTABLE, "create_time"),
            Ok(vec![key("create_time", false)])
        );
        assert_eq!(parse_order_by("  \t", SORTABLE, "state"), Ok(vec![key("state", false)]));
        assert_eq!(
            parse_order_by("display_name", SORTABLE, "create_time"),
            Ok(vec![key("display_name", false)])
        );
        assert_eq!(
            parse_order_by("create_time desc, display_name", SORTABLE, "create_time"),
            Ok(vec![key("create_time", true), key("display_name", false)])
        );
        assert_eq!(
            parse_order_by(" create_time\tDESC ,display_name   Asc,state\n", SORTABLE, "x"),
            Ok(vec![
                key("create_time", true),
                key("display_name", false),
                key("state", false)
            ])
        );
        assert_eq!(
            parse_order_by("state aSc", SORTABLE, "x"),
            Ok(vec![key("state", false)])
        );
    }

    #[test]
    fn order_by_errors() {
        let order_err = |input: &str, position: usize, needles: &[&str]| {
            let e = parse_order_by(input, SORTABLE, "create_time").unwrap_err();
            assert_eq!(e.position, position, "{input:?}: {}", e.message);
            for needle in needles {
                assert!(e.message.contains(needle), "{input:?}: {}", e.message);
            }
        };
        order_err("owner", 0, &["`owner`", "create_time, display_name, state"]);
        order_err("create_time, Owner desc", 13, &["`Owner`"]);
        order_err("create_time desc, state, create_time", 25, &["more than once"]);
        order_err("create_time down", 12, &["`asc` or `desc`", "`down`"]);
        order_err("create_time desc display_name", 17, &["`display_name`", "commas"]);
        order_err("create_time,,state", 12, &["empty sort key"]);
        order_err("create_time,", 11, &["empty sort key"]);
        order_err("create_time, ", 11, &["empty sort key"]);
        order_err(",create_time", 0, &["empty sort key"]);
        order_err("create_time -desc", 12, &["`-desc`"]);
        order_err(&"x".repeat(MAX_INPUT_CHARS + 1), MAX_INPUT_CHARS, &["longer"]);
        let e = parse_order_by("a", &[], "a").unwrap_err();
        assert!(e.message.contains("sortable fields: none"), "{}", e.message);
    }

    /// Deterministic xorshift so the no-panic test is reproducible without dependencies.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn check_no_panic(input: &str, parsed: &mut usize) {
        let len = input.chars().count();
        match parse(input) {
            Ok(Some(filter)) => {
                *parsed += 1;
                let canonical = filter.to_string();
                if canonical.chars().count() <= MAX_INPUT_CHARS {
                    assert_eq!(parse(&canonical), Ok(Some(filter)), "{input:?} -> {canonical:?}");
                }
            }
            Ok(None) => assert!(input.trim().is_empty(), "{input:?}"),
            Err(e) => {
                assert!(e.position <= len, "{input:?}: {e:?}");
                assert!(!e.message.is_empty());
            }
        }
        if let Err(e) = parse_order_by(input, SORTABLE, "create_time") {
            assert!(e.position <= len, "{input:?}: {e:?}");
        }
    }

    #[test]
    fn garbled_input_never_panics() {
        const FRAGMENTS: &[&str] = &[
            "(",
            ")",
            "AND",
            "OR",
            "NOT",
            "and",
            "-",
            "--",
            "=",
            "!=",
            "!",
            "<",
            "<=",
            ">",
            ">=",
            ":",
            "\"",
            "'",
            "\\",
            "\"x\"",
            "'y'",
            "\"a\\\"b\"",
            "state",
            "display_name",
            "archived",
            "create_time",
            "label",
            "status",
            "connection_type",
            "DETACHED",
            "EXPORT_STATE_FAILED",
            "RUN_STATE_FAILED",
            "FAILED",
            "SEGMENT",
            "true",
            "false",
            "1",
            "-2.5",
            "1.2.3",
            "\"2024-05-01T12:00:00Z\"",
            "\"2024-02-30T00:00:00+01:00\"",
            "é",
            "✓",
            "\u{0}",
            "\u{202e}",
            "*",
            ",",
            " desc",
            " ASC",
            "#",
            ".",
            "_",
            " ",
            "  ",
            "\t",
            "\n",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut parsed = 0;
        for _ in 0..30_000 {
            let mut input = String::new();
            for _ in 0..rng.below(14) {
                input.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]);
                if rng.below(3) > 0 {
                    input.push(' ');
                }
            }
            check_no_panic(&input, &mut parsed);
        }
        for _ in 0..5_000 {
            let input: String = (0..rng.below(40))
                .map(|_| char::from_u32(rng.below(0x3000) as u32).unwrap_or('?'))
                .collect();
            check_no_panic(&input, &mut parsed);
        }
        // Grammar-shaped input, so that many cases parse and the round trip is exercised too.
        const TERMS: &[&str] = &[
            "state = FAILED",
            "state!=EXPORT_STATE_ACTIVE",
            "status = 'RUN_STATE_RUNNING'",
            "display_name:\"a b\"",
            "display_name = 'q\\'s'",
            "archived = true",
            "archived!=false",
            "create_time >= \"2024-05-01T12:00:00Z\"",
            "label = x-1.2",
            "label = \"AND\"",
            "connection_type = WEBHOOK",
            "state = BOGUS",
            "state <",
        ];
        const JOINS: &[&str] = &[" AND ", " OR ", " ", " AND NOT ", " OR -", " (", ") ", ")"];
        for _ in 0..20_000 {
            let mut input = String::new();
            for i in 0..=rng.below(6) {
                if i > 0 {
                    input.push_str(JOINS[rng.below(JOINS.len())]);
                }
                if rng.below(4) == 0 {
                    input.push_str(["(", "NOT ", "-"][rng.below(3)]);
                }
                input.push_str(TERMS[rng.below(TERMS.len())]);
            }
            check_no_panic(&input, &mut parsed);
        }
        // Every prefix of valid filters exercises the "input ends too early" paths.
        for valid in [
            "(display_name:\"a\\\"b\" OR -state = EXPORT_STATE_FAILED) archived != false AND NOT create_time >= '2024-05-01T12:00:00.5+02:00'",
            "status=RUN_STATE_FAILED OR (label = x-y.z AND NOT (connection_type = SEGMENT))",
        ] {
            let chars: Vec<char> = valid.chars().collect();
            for end in 0..=chars.len() {
                let prefix: String = chars[..end].iter().collect();
                check_no_panic(&prefix, &mut parsed);
            }
            assert!(parse(valid).is_ok());
        }
        assert!(
            parsed > 2_000,
            "the generator should also produce valid filters, got {parsed}"
        );
    }
}
