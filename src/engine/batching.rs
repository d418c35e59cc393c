//! Cutting a part's rows to the limits a sink declares (records and bytes per request), so
//! that no connector re-batches: the pipeline hands a sink one batch at a time, and knows which
//! batches are the part's last (one batch is held back until more rows or the end of the part
//! say so).

use std::collections::VecDeque;

use serde_json::Value;

use crate::connectors::SinkLimits;

pub type Row = Vec<Value>;

pub struct Cutter {
    limits: SinkLimits,
    filling: Vec<Row>,
    filling_bytes: usize,
    full: VecDeque<Vec<Row>>,
}

impl Cutter {
    pub fn new(limits: SinkLimits) -> Cutter {
        Cutter {
            limits: SinkLimits {
                records_per_batch: limits.records_per_batch.max(1),
                ..limits
            },
            filling: Vec::new(),
            filling_bytes: 0,
            full: VecDeque::new(),
        }
    }

    pub fn push(&mut self, rows: Vec<Row>) {
        for row in rows {
            // The row's JSON size bounds its share of a request body (only measured when the
            // sink limits bytes).
            let size = self
                .limits
                .bytes_per_batch
                .map(|_| serde_json::to_vec(&row).map(|b| b.len() + 1).unwrap_or(0))
                .unwrap_or(0);
            let over_bytes = self
                .limits
                .bytes_per_batch
                .is_some_and(|max| self.filling_bytes + size > max);
            if !self.filling.is_empty() && over_bytes {
                self.close_batch();
            }
            self.filling.push(row);
            self.filling_bytes += size;
            if self.filling.len() >= self.limits.records_per_batch {
                self.close_batch();
            }
        }
    }

    fn close_batch(&mut self) {
        self.full.push_back(std::mem::take(&mut self.filling));
        self.filling_bytes = 0;
    }

    /// A full batch that is certainly not the part's last (more rows are already waiting
    /// behind it), if there is one.
    pub fn next_batch(&mut self) -> Option<Vec<Row>> {
        let more_behind = self.full.len() > 1 || (self.full.len() == 1 && !self.filling.is_empty());
        if more_behind { self.full.pop_front() } else { None }
    }

    /// The part ended: the remaining batches, the last one last.
    pub fn finish(&mut self) -> Vec<Vec<Row>> {
        if !self.filling.is_empty() {
            self.close_batch();
        }
        self.full.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn limits(records: usize, bytes: Option<usize>, concurrency: usize) -> SinkLimits {
        SinkLimits {
            records_per_batch: records,
            bytes_per_batch: bytes,
            requests_per_second: None,
            concurrency,
        }
    }

    fn rows(n: usize) -> Vec<Row> {
        (0..n).map(|i| vec![json!(format!("k{i:03}"))]).collect()
    }

    fn sizes(batches: &[Vec<Row>]) -> Vec<usize> {
        batches.iter().map(Vec::len).collect()
    }

    #[test]
    fn batches_hold_at_most_the_records_per_batch() {
        let mut cutter = Cutter::new(limits(3, None, 2));
        cutter.push(rows(7));
        // Two full batches; the second might still be the last until more rows come.
        assert_eq!(cutter.next_batch().expect("a batch waits behind the first").len(), 3);
        assert_eq!(cutter.next_batch().expect("a row waits behind the second").len(), 3);
        assert!(cutter.next_batch().is_none());
        cutter.push(rows(6));
        assert_eq!(cutter.next_batch().unwrap().len(), 3);
        assert_eq!(cutter.next_batch().unwrap().len(), 3);
        assert!(
            cutter.next_batch().is_none(),
            "the row behind is alone: it may be the last"
        );
        assert_eq!(sizes(&cutter.finish()), [1]);
        assert!(cutter.finish().is_empty());
    }

    #[test]
    fn the_last_batch_waits_for_the_end_of_the_part() {
        let mut cutter = Cutter::new(limits(2, None, 2));
        cutter.push(rows(4));
        assert_eq!(cutter.next_batch().map(|b| b.len()), Some(2));
        assert!(cutter.next_batch().is_none(), "nothing behind it: it may be the last");
        assert_eq!(sizes(&cutter.finish()), [2]);
    }

    #[test]
    fn a_byte_limit_closes_a_batch_before_it_would_be_exceeded() {
        // Each row is `["k000"]` (8 bytes) + 1.
        let mut cutter = Cutter::new(limits(100, Some(20), 1));
        cutter.push(rows(5));
        assert_eq!(sizes(&cutter.finish()), [2, 2, 1]);
        // A row larger than the limit still goes, alone.
        let mut cutter = Cutter::new(limits(100, Some(4), 1));
        cutter.push(rows(2));
        assert_eq!(sizes(&cutter.finish()), [1, 1]);
    }
}
