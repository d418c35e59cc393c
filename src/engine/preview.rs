//! `PreviewExport` (PRODUCT.md §13): what a run started now would do, found the way a run finds
//! it — the run's own checks and plan (`Engine::check`, which writes nothing), the run's own
//! reader over each part, and the connector's own preparation of rows (`Connector::sample`) —
//! stopping before the sink: no request reaches the target and nothing is stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::Engine;
use super::pipeline::{Checked, Part, Plan, retried_in, spawn_reader};
use crate::connectors::{self, PartSchema, RunTarget, Target};
use crate::domain::eligibility::{SEGMENT_OVER_LIMIT, SEGMENT_UNDER_MINIMUM};
use crate::domain::export::Export;
use crate::domain::names::ExportName;
use crate::domain::run::Warning;
use crate::domain::time::now_micros;
use crate::error::Result;

/// A preview's sample when the request asks for none.
pub const DEFAULT_SAMPLE: usize = 10;
/// The largest sample a preview gives.
pub const MAX_SAMPLE: usize = 100;
/// Warning of a preview of an export whose sources are being refreshed: a run started now
/// would wait for the refresh, and then send what the refresh leaves.
const WAITING_FOR_REFRESH: &str = "WAITING_FOR_REFRESH";

/// What a run would do with one source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePreview {
    pub source: String,
    pub records_total: i64,
    /// Everything the run would send (not removals), retries included.
    pub to_send: i64,
    pub to_remove: i64,
    /// Outstanding rejects among `to_send`.
    pub to_retry: i64,
    pub over_limit: bool,
    pub under_minimum: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Preview {
    pub sources: Vec<SourcePreview>,
    /// Rows as the target would receive them.
    pub sample: Vec<Map<String, Value>>,
    pub warnings: Vec<Warning>,
    /// Set when a run started now would be SKIPPED (the run's own reason).
    pub skip_reason: Option<String>,
}

impl Engine {
    /// Previews a run of `name` with up to `sample_size` sample rows.
    pub async fn preview(self: &Arc<Self>, name: &ExportName, sample_size: usize) -> Result<Preview> {
        match self.check(name, false).await? {
            Checked::Go(plan) => self.preview_plan(*plan, sample_size).await,
            Checked::Skip { reason, warnings } => {
                // Nothing would be sent: the sources are shown with their totals and flags.
                let export = self.store.export_or_not_found(name).await?.export;
                let sources = self.source_totals(&export).await?;
                Ok(Preview {
                    sources: sources
                        .into_iter()
                        .map(|(source, records_total)| flagged(source, records_total, &warnings))
                        .collect(),
                    sample: Vec::new(),
                    warnings,
                    skip_reason: Some(reason),
                })
            }
            Checked::Wait(_) => unreachable!("a preview's check does not wait"),
        }
    }

    async fn preview_plan(self: &Arc<Self>, plan: Plan, sample_size: usize) -> Result<Preview> {
        let Plan {
            export,
            connection,
            parts,
            mut warnings,
            refreshing,
            ..
        } = plan;
        if !refreshing.is_empty() {
            warnings.push(Warning {
                code: WAITING_FOR_REFRESH.into(),
                message: format!(
                    "a run started now would wait until {} {} refreshed",
                    refreshing.join(", "),
                    if refreshing.len() == 1 { "is" } else { "are" }
                ),
                subject: export.name.to_string(),
            });
        }
        let schemas: Vec<PartSchema> = parts.iter().map(|p| p.schema.clone()).collect();
        // A preview makes no request: the connector gets no secrets.
        let (secrets, audiences) = (BTreeMap::new(), BTreeMap::new());
        let export_name = export.name.to_string();
        let run = RunTarget {
            target: Target {
                connection: &connection,
                secrets: &secrets,
                local_roots: self.settings.local_roots(),
                export_file_mode: self.settings.export_file_mode,
            },
            export_id: &export.name.id,
            run_id: "",
            export_name: &export_name,
            run_name: "",
            attempt: 0,
            cancellation: connectors::Cancellation::default(),
            run_time: crate::domain::time::to_datetime(now_micros()),
            settings: &export.settings,
            parts: &schemas,
            keep_runs: None,
            audiences: &audiences,
        };
        let connector = connectors::connector_for(&connection.type_id);
        let mut preview = Preview::default();
        for part in parts {
            let schema = part.schema.clone();
            let (mut source, rows) = self.count_part(&export.name, part, sample_size).await?;
            source.over_limit = raised(&warnings, &schema.source, SEGMENT_OVER_LIMIT);
            source.under_minimum = raised(&warnings, &schema.source, SEGMENT_UNDER_MINIMUM);
            preview.sources.push(source);
            let room = sample_size.saturating_sub(preview.sample.len());
            if room > 0 && !rows.is_empty() {
                let mut shown = connector.sample(&run, &schema, rows);
                shown.truncate(room);
                preview.sample.extend(shown);
            }
        }
        preview.warnings = warnings;
        Ok(preview)
    }

    /// Reads a part as its run would and counts what the run would send, remove and retry;
    /// keeps the first `keep` rows to send.
    async fn count_part(
        &self,
        export: &ExportName,
        part: Part,
        keep: usize,
    ) -> Result<(SourcePreview, Vec<Vec<Value>>)> {
        let mut counted = SourcePreview {
            source: part.schema.source.clone(),
            records_total: part.source.records_total(),
            ..SourcePreview::default()
        };
        // Outstanding as a new run would see them (no run of the preview's id exists).
        let mut outstanding = self.store.outstanding_keys(export, &part.schema.source, "").await?;
        let fields = part.fields.clone();
        let key_column = part.key_column();
        let incremental = part.schema.incremental;
        let deleted_column = incremental.then_some(fields.len());
        let (reader, mut batches) = spawn_reader(self.store.clone(), part);
        let mut kept = Vec::new();
        let counting = async {
            while let Some(batch) = batches.recv().await {
                let (_, batch) = batch?;
                let rows = batch.into_rows(&fields, incremental)?;
                counted.to_retry += retried_in(&rows, key_column, &mut outstanding);
                for row in rows {
                    if deleted_column.and_then(|i| row.get(i)) == Some(&Value::Bool(true)) {
                        counted.to_remove += 1;
                    } else {
                        counted.to_send += 1;
                        if kept.len() < keep {
                            kept.push(row);
                        }
                    }
                }
            }
            Ok::<_, crate::error::Error>(())
        }
        .await;
        reader.abort();
        counting?;
        Ok((counted, kept))
    }

    /// The export's sources with the records or members each has now.
    async fn source_totals(&self, export: &Export) -> Result<Vec<(String, i64)>> {
        let catalog = self.store.catalog_facts(export).await?;
        let entities = export.entities.iter().map(|name| {
            let total = catalog.entities.get(name).map_or(0, |e| e.record_count);
            (name.to_string(), total)
        });
        let segments = export.segments.iter().map(|name| {
            let total = catalog.segments.get(name).map_or(0, |s| s.member_count);
            (name.to_string(), total)
        });
        Ok(entities.chain(segments).collect())
    }
}

/// Whether a warning `code` is raised about `source`.
fn raised(warnings: &[Warning], source: &str, code: &str) -> bool {
    warnings.iter().any(|w| w.code == code && w.subject == source)
}

/// A source that sends nothing, with the limit flags its warnings raise.
fn flagged(source: String, records_total: i64, warnings: &[Warning]) -> SourcePreview {
    SourcePreview {
        over_limit: raised(warnings, &source, SEGMENT_OVER_LIMIT),
        under_minimum: raised(warnings, &source, SEGMENT_UNDER_MINIMUM),
        source,
        records_total,
        ..SourcePreview::default()
    }
}
