//! Checking a rule against the schema at compile time: what is known of each operand's type,
//! comparisons that can never hold, unknown functions, what a condition must be, and where in
//! the source a problem is (line and column).

use cel::common::ast::{CallExpr, Expr, IdedExpr, LiteralValue, operators};
use cel::{Context, ExecutionError, Value};

use super::*;

/// 1-based line and character column of a byte offset.
pub(super) fn line_column(source: &str, offset: usize) -> (u32, u32) {
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

pub(super) fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn parse_error(source: &str, errors: cel::ParseErrors) -> RuleError {
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

pub(super) fn depth(expr: &IdedExpr) -> usize {
    1 + children(expr).into_iter().map(depth).max().unwrap_or(0)
}

pub(super) fn is_operator(name: &str) -> bool {
    name.starts_with(['_', '@', '!', '-'])
}

pub(super) fn is_comparison(name: &str) -> bool {
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

pub(super) fn is_arithmetic(name: &str) -> bool {
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
pub(super) const TYPE_NAMES: [&str; 10] = [
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
pub(super) enum Static {
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

pub(super) fn literal_static(literal: &LiteralValue) -> Static {
    match literal {
        LiteralValue::Boolean(_) => Static::Bool,
        LiteralValue::Bytes(_) => Static::Bytes,
        LiteralValue::Double(_) | LiteralValue::Int(_) | LiteralValue::UInt(_) => Static::Num,
        LiteralValue::Null => Static::Null,
        LiteralValue::String(_) => Static::Str,
    }
}

pub(super) fn string_literal(expr: &IdedExpr) -> Option<&str> {
    match &expr.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

pub(super) fn is_null_literal(expr: &IdedExpr) -> bool {
    matches!(expr.expr, Expr::Literal(LiteralValue::Null))
}

impl Compiler<'_> {
    pub(super) fn position(&self, expr: &IdedExpr) -> (u32, u32) {
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

    pub(super) fn error_at(&self, expr: &IdedExpr, message: impl Into<String>) -> RuleError {
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

    /// The schema type of `expr` when it is a whole typed field.
    pub(super) fn field_type(&self, expr: &IdedExpr, bound: &[String]) -> Option<(&FieldDef, FieldType)> {
        match &expr.expr {
            Expr::Ident(name) if !bound.iter().any(|b| b == name) => {
                let def = &self.fields[self.field(name)?];
                Some((def, def.ty))
            }
            _ => None,
        }
    }

    pub(super) fn static_type(&self, expr: &IdedExpr, bound: &[String]) -> Static {
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

    /// Rejects comparing a typed field with something it can never equal or be
    /// ordered against. `other` is the operand that is not the field.
    pub(super) fn check_comparison(
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

    pub(super) fn function_known(&mut self, name: &str, member: bool) -> bool {
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

    /// Rejects calls that cannot be evaluated; returns whether the call is to a
    /// namespaced function such as `strings.quote(x)` rather than a method.
    pub(super) fn check_call(&mut self, expr: &IdedExpr, bound: &[String]) -> Result<bool, RuleError> {
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
    pub(super) fn name_before_paren(&self, id: u64, name: &str) -> Option<(u32, u32)> {
        let (start, _) = self.info.offset_for(id)?;
        let before = self.source.get(..start as usize)?.trim_end();
        before
            .ends_with(name)
            .then(|| line_column(self.source, before.len() - name.len()))
    }

    /// Rejects a rule that can never be a condition: one whose result, or an
    /// operand of `&&`, `||`, `!` or `?:`, is plainly not a bool.
    pub(super) fn check_condition(&self, expr: &IdedExpr) -> Result<(), RuleError> {
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
}
