//! No answer exceeds 4 MiB (PRODUCT.md §3), the largest message a gRPC client accepts by
//! default: a list page keeps the leading items that fit and leaves the others to the next page
//! (its token continues after the last item kept), whatever the page size asked.

use prost::Message;

/// The largest answer exportd sends: gRPC's default client limit.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Room kept for the rest of a list answer (page token, total size).
const ENVELOPE_BYTES: usize = 4 * 1024;

/// Cuts `items` (one repeated field of a list answer) to the leading ones that fit in an answer;
/// keeps at least one, which the bounds of every resource let fit on its own.
pub fn fit<T: Message>(items: &mut Vec<T>) {
    let budget = MAX_ANSWER_BYTES - ENVELOPE_BYTES;
    let mut used = 0usize;
    let fitting = items
        .iter()
        .position(|item| {
            let len = item.encoded_len();
            // A repeated message field: its tag, the length, the message.
            used += 1 + prost::length_delimiter_len(len) + len;
            used > budget
        })
        .unwrap_or(items.len());
    items.truncate(fitting.max(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn pages_stop_before_the_answer_limit() {
        let big = pb::Connection {
            description: "x".repeat(100_000),
            ..Default::default()
        };
        let mut items = vec![big; 100];
        fit(&mut items);
        assert_eq!(items.len(), 41);
        let answer = pb::ListConnectionsResponse {
            connections: items,
            next_page_token: "t".repeat(100),
            total_size: 100,
        };
        assert!(answer.encoded_len() <= MAX_ANSWER_BYTES);
        let mut small = vec![pb::Connection::default(); 3];
        fit(&mut small);
        assert_eq!(small.len(), 3);
    }

    /// `fit` keeps at least one item; the bounds must make sure one item fits. The entity is the
    /// largest resource they allow.
    #[test]
    fn the_largest_entity_the_bounds_allow_fits_one_answer() {
        use crate::domain::bounds;
        let wide = |bound: bounds::Text| "\u{1F600}".repeat(bound.max);
        let entity = pb::Entity {
            name: "n".repeat(bounds::NAME.max),
            display_name: wide(bounds::DISPLAY_NAME),
            primary_key: "k".repeat(bounds::FIELD_NAME.max),
            fields: (0..bounds::ENTITY_FIELDS)
                .map(|_| pb::EntityField {
                    name: "f".repeat(bounds::FIELD_NAME.max),
                    r#type: pb::FieldType::String as i32,
                    description: wide(bounds::FIELD_DESCRIPTION),
                    mapping: wide(bounds::FIELD_MAPPING_DETAILS),
                })
                .collect(),
            ..Default::default()
        };
        assert!(
            entity.encoded_len() < MAX_ANSWER_BYTES - ENVELOPE_BYTES,
            "{}",
            entity.encoded_len()
        );
    }
}
