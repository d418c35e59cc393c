//! A static bound on what one record can cost a rule, checked when the rule is saved.
//!
//! A refresh evaluates a rule once per record, so a rule that is cheap to write can be ruinous
//! to run: macros (`exists`, `all`, `map`, …) become loops, and loops nested over literal lists
//! multiply — `L.exists(a, L.exists(b, L.exists(c, L.exists(d, x < 0.0))))` with a 60-element
//! `L` is 60⁴ ≈ 13 million steps per record, minutes for one record set. The bound counts the
//! steps of the worst case: every node costs one, `x in list` costs the list's length, and a
//! comprehension costs its range's size times its body. Sizes are exact for literal lists and
//! maps; a list that comes from a record has no size until it is read, so it counts as
//! [`ASSUMED_DYNAMIC_SIZE`] (the per-refresh time budget catches what that underestimates).

use cel::common::ast::{Expr, IdedExpr, operators};

use super::children;

/// The most steps a rule may take on one record. A rule over a million records at this bound
/// is still well within a refresh's time budget on one core; ordinary rules cost a few dozen.
pub const MAX_COST_PER_RECORD: u64 = 100_000;

/// The most macros (each one a loop) one rule may use.
pub const MAX_MACROS: usize = 8;

/// The most syntax-tree nodes one rule may have (a literal list of a thousand numbers fits).
pub const MAX_NODES: usize = 2_000;

/// The size assumed for a list or map read from a record.
pub const ASSUMED_DYNAMIC_SIZE: u64 = 100;

/// Why a rule is too expensive, and the node to point at.
pub struct TooCostly<'e> {
    pub at: &'e IdedExpr,
    pub message: String,
}

/// Refuses a rule whose worst case is over the bounds above.
pub fn check(expr: &IdedExpr) -> Result<(), TooCostly<'_>> {
    let mut nodes = 0usize;
    let mut macros = Vec::new();
    count(expr, &mut nodes, &mut macros);
    if nodes > MAX_NODES {
        return Err(TooCostly {
            at: expr,
            message: format!("the rule has {nodes} expression nodes, over the limit of {MAX_NODES}"),
        });
    }
    if macros.len() > MAX_MACROS {
        return Err(TooCostly {
            at: macros[MAX_MACROS],
            message: format!(
                "the rule uses {} macros (exists, all, exists_one, map, filter), over the limit of {MAX_MACROS}",
                macros.len()
            ),
        });
    }
    let cost = cost(expr);
    if cost > MAX_COST_PER_RECORD {
        let at = macros.first().copied().unwrap_or(expr);
        return Err(TooCostly {
            at,
            message: format!(
                "the rule would cost up to {} evaluation steps per record, over the limit of {}: \
                 macros nested over lists multiply their sizes (a list read from a record counts as \
                 {ASSUMED_DYNAMIC_SIZE} elements)",
                display_cost(cost),
                display_cost(MAX_COST_PER_RECORD)
            ),
        });
    }
    Ok(())
}

fn count<'e>(expr: &'e IdedExpr, nodes: &mut usize, macros: &mut Vec<&'e IdedExpr>) {
    *nodes += 1;
    if matches!(expr.expr, Expr::Comprehension(_)) {
        macros.push(expr);
    }
    for child in children(expr) {
        count(child, nodes, macros);
    }
}

/// Steps in the worst case, saturating (a bound, not an exact count).
fn cost(expr: &IdedExpr) -> u64 {
    let own = match &expr.expr {
        Expr::Comprehension(c) => {
            let per_element = cost(&c.loop_cond).saturating_add(cost(&c.loop_step));
            return cost(&c.iter_range)
                .saturating_add(cost(&c.accu_init))
                .saturating_add(size(&c.iter_range).saturating_mul(per_element))
                .saturating_add(cost(&c.result));
        }
        // Membership in a list is a scan of it.
        Expr::Call(call) if call.func_name == operators::IN => call.args.get(1).map_or(1, size),
        _ => 1,
    };
    children(expr)
        .into_iter()
        .fold(own, |total, child| total.saturating_add(cost(child)))
}

/// How many elements a collection expression has at most.
fn size(expr: &IdedExpr) -> u64 {
    match &expr.expr {
        Expr::List(list) => list.elements.len() as u64,
        Expr::Map(map) => map.entries.len() as u64,
        Expr::Call(call) if call.func_name == operators::ADD && call.args.len() == 2 => {
            size(&call.args[0]).saturating_add(size(&call.args[1]))
        }
        // `map` and `filter` give at most one element per element of their range.
        Expr::Comprehension(c) if matches!(c.accu_init.expr, Expr::List(_)) => size(&c.iter_range),
        _ => ASSUMED_DYNAMIC_SIZE,
    }
}

fn display_cost(cost: u64) -> String {
    if cost == u64::MAX {
        "more than 18 quintillion".to_string()
    } else {
        // Thousands separated, as people read large numbers.
        let digits = cost.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(source: &str) -> IdedExpr {
        cel::Env::stdlib().parser().parse(source).expect("parses")
    }

    fn refusal(source: &str) -> String {
        match check(&parsed(source)) {
            Err(too_costly) => too_costly.message,
            Ok(()) => panic!("{source} was accepted"),
        }
    }

    fn list(n: usize) -> String {
        let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        format!("[{}]", items.join(","))
    }

    #[test]
    fn nested_macros_over_literal_lists_multiply() {
        let l = list(60);
        let rule = format!("{l}.exists(a, {l}.exists(b, {l}.exists(c, {l}.exists(d, ltv < 0.0))))");
        let message = refusal(&rule);
        assert!(message.contains("per record"), "{message}");
        // Two levels of the same list are fine.
        let two = format!("{l}.exists(a, {l}.exists(b, a == b))");
        assert!(check(&parsed(&two)).is_ok());
    }

    #[test]
    fn ordinary_rules_are_cheap() {
        for rule in [
            "ltv > 500.0 && country in [\"ID\", \"SG\"]",
            "tags.exists(t, t == \"vip\")",
            "email.endsWith(\"@example.com\") || size(tags) > 3",
        ] {
            let expr = parsed(rule);
            assert!(cost(&expr) < 1_000, "{rule}: {}", cost(&expr));
            assert!(check(&expr).is_ok());
        }
    }

    #[test]
    fn membership_costs_the_list_length() {
        assert!(cost(&parsed(&format!("x in {}", list(500)))) >= 500);
    }

    #[test]
    fn dynamic_lists_count_as_assumed_size() {
        // Two nested loops over record lists: 100 × 100 × a few steps, allowed; three are not.
        assert!(check(&parsed("a.exists(x, b.exists(y, x == y))")).is_ok());
        assert!(check(&parsed("a.exists(x, b.exists(y, c.exists(z, x == y && y == z)))")).is_err());
    }

    #[test]
    fn too_many_macros_and_nodes() {
        let many = (0..9)
            .map(|i| format!("t{i}.exists(x, x == 1)"))
            .collect::<Vec<_>>()
            .join(" || ");
        let message = refusal(&many);
        assert!(message.contains("9 macros"), "{message}");
        let big = format!("x in {}", list(2_100));
        let message = refusal(&big);
        assert!(message.contains("expression nodes"), "{message}");
    }

    #[test]
    fn costs_read_with_separators() {
        assert_eq!(display_cost(12_960_000), "12,960,000");
        assert_eq!(display_cost(999), "999");
    }
}
