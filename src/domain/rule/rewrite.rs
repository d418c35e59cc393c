//! Rewriting a rule's syntax tree at compile time: field references and fixed JSON paths become
//! synthetic identifiers (slots), `x == null` becomes a presence test, and constant
//! sub-expressions are folded into constants; plus the tree walks the other passes share.

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue, SelectExpr, operators};
use cel::common::types::CelTimestamp;
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Value};

use super::*;

pub(super) fn children(expr: &IdedExpr) -> Vec<&IdedExpr> {
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

pub(super) fn entry_exprs(entry: &EntryExpr) -> Vec<&IdedExpr> {
    match entry {
        EntryExpr::MapEntry(e) => vec![&e.key, &e.value],
        EntryExpr::StructField(f) => vec![&f.value],
    }
}

pub(super) fn children_mut(expr: &mut IdedExpr) -> Vec<&mut IdedExpr> {
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

pub(super) fn entry_exprs_mut(entry: &mut EntryExpr) -> Vec<&mut IdedExpr> {
    match entry {
        EntryExpr::MapEntry(e) => vec![&mut e.key, &mut e.value],
        EntryExpr::StructField(f) => vec![&mut f.value],
    }
}

pub(super) fn call(func_name: &str, args: Vec<IdedExpr>) -> Expr {
    Expr::Call(CallExpr {
        func_name: func_name.to_owned(),
        target: None,
        args,
    })
}

/// The segments of `a.b.c` when `expr` spells such a name.
pub(super) fn name_segments(expr: &IdedExpr) -> Option<Vec<&str>> {
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
pub(super) struct Path {
    field: usize,
    keys: Vec<PathKey>,
}

/// The constants alone, for folding at compile time.
pub(super) struct Constants<'a>(&'a [Box<dyn Val>]);

impl VariableResolver for Constants<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        match parse_synthetic(variable)? {
            (CONSTANT, index) => Some(CowVal::Borrowed(self.0.get(index)?.as_ref())),
            _ => None,
        }
    }
}

pub(super) fn descendants(expr: &IdedExpr) -> Vec<&IdedExpr> {
    let mut out = Vec::new();
    let mut stack = children(expr);
    while let Some(e) = stack.pop() {
        out.push(e);
        stack.extend(children(e));
    }
    out
}

impl Compiler<'_> {
    pub(super) fn field(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// The field or fixed JSON path `expr` denotes, if any. A member of a field
    /// that is not JSON is an error: it can never evaluate.
    pub(super) fn path(&self, expr: &IdedExpr, bound: &[String]) -> Result<Option<Path>, RuleError> {
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

    pub(super) fn slot(&mut self, path: Path) -> usize {
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

    pub(super) fn constant(&mut self, value: Box<dyn Val>) -> Expr {
        self.consts.push(value);
        Expr::Ident(synthetic(CONSTANT, self.consts.len() - 1))
    }

    /// A string literal that stands for a timestamp becomes a timestamp
    /// constant, so that `signed_up_at > "2026-01-01"` compares instants.
    pub(super) fn timestamp_literal(&mut self, expr: &mut IdedExpr) -> Result<(), RuleError> {
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

    /// Checks `expr` and rewrites it for evaluation, in one walk because both
    /// need to know which identifiers are fields and which are bound by the
    /// enclosing comprehensions (`bound`); see the module docs.
    pub(super) fn rewrite(&mut self, expr: &mut IdedExpr, bound: &mut Vec<String>) -> Result<(), RuleError> {
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

    /// Checks a comparison or `in` before its operands are rewritten. Returns
    /// the final replacement when the call is rewritten whole (a presence test,
    /// `type(x) == int`), else rewrites timestamp literals in place and leaves
    /// the operands to the caller.
    pub(super) fn rewrite_comparison(&mut self, c: &mut CallExpr, bound: &[String]) -> Result<Option<Expr>, RuleError> {
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

    /// Folds constant sub-expressions. Returns whether `expr` is constant, in
    /// which case the caller folds it as part of something larger, or itself.
    pub(super) fn fold(&mut self, expr: &mut IdedExpr) -> Result<bool, RuleError> {
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

    pub(super) fn fold_node(&mut self, expr: &mut IdedExpr) -> Result<(), RuleError> {
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
