//! Turns a parsed list filter and order (domain::list_query) into SQL conditions and ORDER BY
//! clauses. Each repository supplies only how its fields map to columns.

use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{
    Condition, ConnectionTrait, EntityTrait, Order, PaginatorTrait, QueryOrder, QuerySelect, Select,
    sea_query::NullOrdering,
};

use crate::domain::list_query::{CompareOp, Filter, OrderKey, Value};
use crate::domain::paging::Page;
use crate::error::Result;

/// One page of the rows `select` finds, in the order `order` gives them, as domain values; and
/// the number of all the rows it finds (a list's `total_size`).
pub async fn page_of<E: EntityTrait, T>(
    db: &impl ConnectionTrait,
    select: Select<E>,
    order: impl FnOnce(Select<E>) -> Select<E>,
    page: Page,
    to_domain: impl Fn(E::Model) -> Result<T>,
) -> Result<(Vec<T>, u64)>
where
    E::Model: Sync,
{
    let total = select.clone().count(db).await?;
    let models = order(select).offset(page.offset).limit(page.limit).all(db).await?;
    Ok((models.into_iter().map(to_domain).collect::<Result<_>>()?, total))
}

/// Builds the condition of a filter; `leaf` turns one comparison into an expression.
pub fn to_condition(filter: &Filter, leaf: &dyn Fn(&str, CompareOp, &Value) -> Expr) -> Condition {
    match filter {
        Filter::And(a, b) => Condition::all().add(to_condition(a, leaf)).add(to_condition(b, leaf)),
        Filter::Or(a, b) => Condition::any().add(to_condition(a, leaf)).add(to_condition(b, leaf)),
        Filter::Not(inner) => to_condition(inner, leaf).not(),
        Filter::Compare { field, op, value } => Condition::all().add(leaf(field, *op, value)),
    }
}

/// Case-insensitive substring match, with LIKE's wildcards in the text escaped.
pub fn contains_ci(column: Expr, text: &str) -> Expr {
    let escaped = text
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    Expr::expr(Func::lower(column)).like(LikeExpr::new(format!("%{escaped}%")).escape('\\'))
}

/// A comparison of a column with a value.
pub fn compare<V: Into<sea_orm::Value>>(column: Expr, op: CompareOp, value: V) -> Expr {
    let value = Expr::val(value);
    match op {
        CompareOp::Eq | CompareOp::Has => column.eq(value),
        CompareOp::Ne => column.ne(value),
        CompareOp::Lt => column.lt(value),
        CompareOp::Le => column.lte(value),
        CompareOp::Gt => column.gt(value),
        CompareOp::Ge => column.gte(value),
    }
}

/// How one order key sorts: an expression, and whether empty values go last regardless of
/// direction ("never run last", "detached last").
pub struct SortColumn {
    pub expr: Expr,
    pub nulls_last: bool,
}

/// Applies the order keys, then `tie_breakers` ascending so that pages are stable.
pub fn apply_order<Q: QueryOrder>(
    mut query: Q,
    keys: &[OrderKey],
    column: &dyn Fn(&str) -> SortColumn,
    tie_breakers: Vec<Expr>,
) -> Q {
    for key in keys {
        let sort = column(&key.field);
        let order = if key.desc { Order::Desc } else { Order::Asc };
        query = if sort.nulls_last {
            query.order_by_with_nulls(sort.expr, order, NullOrdering::Last)
        } else {
            query.order_by(sort.expr, order)
        };
    }
    for expr in tie_breakers {
        query = query.order_by(expr, Order::Asc);
    }
    query
}
