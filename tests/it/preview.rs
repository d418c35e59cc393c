//! `PreviewExport` (PRODUCT.md §13) through the gRPC API: what a run started now would do —
//! counts, skip reason, sample rows as the target receives them — with no request to the target
//! and nothing changed, checked against the run that follows.

use exportd::auth::Role;
use exportd::pb;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::common::meta_double::{AD_ACCOUNT, MetaDouble};
use crate::common::*;

const TOKEN: &str = "EAAB-system-user-token-0123456789";

fn sha(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// acme (see `setup`) with a Meta connection `meta` to `double`; `profile_limit` 0 is none.
async fn with_meta(double: &MetaDouble, profile_limit: i64) -> TestServer {
    let t = setup(Options::default()).await;
    let mut meta = connection(
        "acme",
        "meta",
        "Meta",
        "facebook-ads",
        &[("ad_account_id", AD_ACCOUNT), ("base_url", &double.url)],
        &[("access_token", TOKEN)],
        true,
    );
    meta.connection.as_mut().unwrap().profile_limit = profile_limit;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(meta)
        .await
        .unwrap();
    t
}

/// A segment export over `connection` in `mode`.
fn export_of(
    id: &str,
    connection: &str,
    segment: &str,
    mode: pb::SyncMode,
    mappings: &[(&str, &str)],
) -> pb::CreateExportRequest {
    let mut request = segment_export("acme", id, id, connection, &[segment], mappings);
    request.export.as_mut().unwrap().sync_mode = mode as i32;
    request
}

/// The Meta mapping: email, country and the key as EXTERN_ID.
const META_FIELDS: [(&str, &str); 3] = [("email", "email"), ("country", "country"), ("id", "external_id")];

async fn preview(exports: &mut Exports, export: &str, sample_size: i32) -> pb::ExportPreview {
    exports
        .preview_export(pb::PreviewExportRequest {
            name: export.into(),
            sample_size,
        })
        .await
        .unwrap_or_else(|s| panic!("PreviewExport {export}: {s:?}"))
        .into_inner()
}

async fn run_to_end(exports: &mut Exports, export: &str) -> pb::ExportRun {
    let run = run_export(exports, export).await;
    wait_for_end(exports, &run.name).await
}

/// A sample row as JSON.
fn json_of(row: &prost_types::Struct) -> Value {
    use prost_types::value::Kind;
    fn value(v: &prost_types::Value) -> Value {
        match &v.kind {
            Some(Kind::StringValue(s)) => json!(s),
            Some(Kind::NumberValue(n)) => json!(n),
            Some(Kind::BoolValue(b)) => json!(b),
            Some(Kind::StructValue(s)) => json_of(s),
            Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
            Some(Kind::NullValue(_)) | None => Value::Null,
        }
    }
    Value::Object(row.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect())
}

/// The sample rows in Meta's row form: the values of `schema`'s target fields, "" when absent.
fn as_meta_rows(preview: &pb::ExportPreview, fields: &[&str]) -> Value {
    Value::Array(
        preview
            .sample
            .iter()
            .map(|row| {
                let row = json_of(row);
                Value::Array(
                    fields
                        .iter()
                        .map(|f| row.get(*f).cloned().unwrap_or(json!("")))
                        .collect(),
                )
            })
            .collect(),
    )
}

/// The only source of a preview.
fn only_source(preview: &pb::ExportPreview) -> &pb::SourcePreview {
    assert_eq!(preview.sources.len(), 1, "{preview:#?}");
    &preview.sources[0]
}

#[tokio::test]
async fn a_preview_sends_nothing_and_shows_the_rows_and_counts_meta_then_receives() {
    let double = MetaDouble::start(TOKEN).await;
    let t = with_meta(&double, 0).await;
    let mut exports = t.exports("acme", Role::Contributor).await;
    create_export(
        &mut exports,
        export_of("ads", "meta", VIP, pb::SyncMode::Full, &META_FIELDS),
    )
    .await;
    let export = export_name("acme", "ads");
    let before = exports
        .get_export(pb::GetExportRequest { name: export.clone() })
        .await
        .unwrap()
        .into_inner();

    let shown = preview(&mut exports, &export, 0).await;
    assert!(double.calls().is_empty(), "no request: {:?}", double.calls());
    assert_eq!(shown.export, export);
    assert_eq!(shown.skip_reason, "");
    let source = only_source(&shown);
    assert_eq!(source.source, VIP);
    assert_eq!(
        (source.records_total, source.to_send, source.to_remove, source.to_retry),
        (5, 5, 0, 0)
    );
    assert!(!source.over_limit && !source.under_minimum);
    assert_eq!(shown.sample.len(), 5, "all five (the default sample is 10)");
    // Hashed as Meta receives them: sha256 of the normalised email and country, the key as is.
    assert_eq!(
        json_of(&shown.sample[0]),
        json!({"email": sha("user0@example.com"), "country": sha("id"), "external_id": "c00"})
    );
    // Nothing changed: the export is as it was, and it has no run.
    let after = exports
        .get_export(pb::GetExportRequest { name: export.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.etag, before.etag);
    assert!(list_runs(&mut exports, &export, "", "").await.is_empty());

    let run = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!(run.records_exported, source.to_send);
    let calls = double.user_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        calls[0].body["payload"]["schema"],
        json!(["EMAIL", "COUNTRY", "EXTERN_ID"])
    );
    assert_eq!(
        calls[0].body["payload"]["data"],
        as_meta_rows(&shown, &["email", "country", "external_id"]),
        "the sample is what Meta received"
    );

    // A smaller sample is the first rows.
    let two = preview(&mut exports, &export, 2).await;
    assert_eq!(two.sample, shown.sample[..2]);
    t.stop().await;
}

#[tokio::test]
async fn a_mirror_preview_after_a_segment_change_shows_the_runs_joiners_and_leavers() {
    let double = MetaDouble::start(TOKEN).await;
    let t = with_meta(&double, 0).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    create_pushed_segment(&mut catalog, "acme", "club", "customers", "Club").await;
    let club = "environments/acme/segments/club";
    let members = |keys: &[&str]| vec![strings(keys)];
    set_members(&mut catalog, club, members(&["c01", "c02"])).await.unwrap();
    let mut exports = t.exports("acme", Role::Contributor).await;
    create_export(
        &mut exports,
        export_of("club", "meta", club, pb::SyncMode::Mirror, &META_FIELDS),
    )
    .await;
    let export = export_name("acme", "club");
    let first = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&first), pb::RunState::Succeeded, "{:?}", first.error);

    set_members(&mut catalog, club, members(&["c02", "c03"])).await.unwrap();
    double.clear_calls();
    let shown = preview(&mut exports, &export, 0).await;
    assert!(double.calls().is_empty(), "{:?}", double.calls());
    let source = only_source(&shown);
    assert_eq!(
        (source.records_total, source.to_send, source.to_remove, source.to_retry),
        (2, 1, 1, 0)
    );
    // The sample is the joiner (removals are counted, not sampled).
    assert_eq!(
        json_of(&shown.sample[0]),
        json!({"email": sha("user3@example.com"), "country": sha("id"), "external_id": "c03"})
    );
    assert_eq!(shown.sample.len(), 1);
    // Previewing again says the same: the first preview remembered nothing.
    assert_eq!(preview(&mut exports, &export, 0).await, shown);

    let second = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    assert_eq!(
        (second.records_exported, second.records_removed),
        (source.to_send, source.to_remove)
    );
    let calls = double.user_calls();
    assert_eq!(
        calls[0].body["payload"]["data"],
        as_meta_rows(&shown, &["email", "country", "external_id"])
    );
    // Once delivered, nothing is left to do.
    let settled = preview(&mut exports, &export, 0).await;
    let source = only_source(&settled);
    assert_eq!((source.to_send, source.to_remove), (0, 0));
    assert!(settled.sample.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn outstanding_rejects_are_counted_in_to_retry_and_in_to_send() {
    let double = MetaDouble::start(TOKEN).await;
    double.invalid(&sha("user4@example.com"), "Invalid email format");
    let t = with_meta(&double, 0).await;
    let mut exports = t.exports("acme", Role::Contributor).await;
    create_export(
        &mut exports,
        export_of("ads", "meta", VIP, pb::SyncMode::Mirror, &META_FIELDS),
    )
    .await;
    let export = export_name("acme", "ads");
    let first = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&first), pb::RunState::Succeeded, "{:?}", first.error);
    assert_eq!((first.records_exported, first.records_rejected), (4, 1));

    double.accept_all();
    double.clear_calls();
    let shown = preview(&mut exports, &export, 0).await;
    assert!(double.calls().is_empty(), "{:?}", double.calls());
    let source = only_source(&shown);
    assert_eq!((source.to_send, source.to_remove, source.to_retry), (1, 0, 1));
    assert_eq!(json_of(&shown.sample[0])["external_id"], json!("c04"));

    let second = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    assert_eq!(
        (second.records_exported, second.records_retried),
        (source.to_send, source.to_retry)
    );
    t.stop().await;
}

#[tokio::test]
async fn a_segment_over_the_limit_previews_the_skip_the_run_then_makes() {
    let double = MetaDouble::start(TOKEN).await;
    let t = with_meta(&double, 3).await;
    let mut exports = t.exports("acme", Role::Contributor).await;
    create_export(
        &mut exports,
        export_of("ads", "meta", VIP, pb::SyncMode::Full, &META_FIELDS),
    )
    .await;
    let export = export_name("acme", "ads");
    let shown = preview(&mut exports, &export, 0).await;
    assert!(!shown.skip_reason.is_empty(), "{shown:#?}");
    let source = only_source(&shown);
    assert_eq!(source.source, VIP);
    assert!(source.over_limit && !source.under_minimum, "{source:?}");
    assert_eq!((source.records_total, source.to_send), (5, 0));
    assert!(shown.sample.is_empty());
    assert!(
        shown.warnings.iter().any(|w| w.code == "SEGMENT_OVER_LIMIT"),
        "{:?}",
        shown.warnings
    );

    let run = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&run), pb::RunState::Skipped, "{run:#?}");
    assert_eq!(run.skip_reason, shown.skip_reason, "the same checks, the same reason");
    assert!(double.calls().is_empty(), "{:?}", double.calls());
    t.stop().await;
}

#[tokio::test]
async fn an_incremental_preview_changes_nothing_and_the_next_run_sends_what_it_showed() {
    let t = setup(Options::default()).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    create_pushed_segment(&mut catalog, "acme", "club", "customers", "Club").await;
    let club = "environments/acme/segments/club";
    set_members(&mut catalog, club, vec![strings(&["c01", "c02"])])
        .await
        .unwrap();
    let mut exports = t.exports("acme", Role::Contributor).await;
    create_export(
        &mut exports,
        export_of(
            "club",
            "files",
            club,
            pb::SyncMode::Incremental,
            &[("id", "id"), ("email", "email")],
        ),
    )
    .await;
    let export = export_name("acme", "club");
    let first = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&first), pb::RunState::Succeeded, "{:?}", first.error);
    assert_eq!(first.records_exported, 2);

    // c01 leaves, c03 joins, c02's email changes.
    set_members(&mut catalog, club, vec![strings(&["c02", "c03"])])
        .await
        .unwrap();
    let mut c02 = ten_customers()[2].clone();
    c02["email"] = json!("new2@example.com");
    write_all(&mut catalog, vec![write(CUSTOMERS, vec![c02], &[])])
        .await
        .unwrap();
    let before = exports
        .get_export(pb::GetExportRequest { name: export.clone() })
        .await
        .unwrap()
        .into_inner();
    let shown = preview(&mut exports, &export, 0).await;
    let source = only_source(&shown);
    assert_eq!((source.to_send, source.to_remove, source.to_retry), (2, 1, 0));
    // Files receive the mapped columns as they are, then `_deleted`.
    let sample: Vec<Value> = shown.sample.iter().map(json_of).collect();
    assert_eq!(
        sample,
        [
            json!({"id": "c02", "email": "new2@example.com", "_deleted": false}),
            json!({"id": "c03", "email": "user3@example.com", "_deleted": false})
        ]
    );
    assert_eq!(
        preview(&mut exports, &export, 0).await,
        shown,
        "a second look sees the same"
    );
    let after = exports
        .get_export(pb::GetExportRequest { name: export.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.etag, before.etag);
    assert_eq!(list_runs(&mut exports, &export, "", "").await.len(), 1);

    let second = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    // A file target is sent each removal as a row (`_deleted` true), which the run counts
    // among the records it wrote.
    assert_eq!(second.records_exported, source.to_send + source.to_remove);
    t.stop().await;
}

#[tokio::test]
async fn previews_are_for_editors_of_an_existing_export_with_a_bounded_sample() {
    let t = setup(Options::default()).await;
    let mut exports = t.exports("acme", Role::Contributor).await;
    create_export(
        &mut exports,
        data_out("acme", "nightly", "Nightly", "files", &[CUSTOMERS]),
    )
    .await;
    let nightly = export_name("acme", "nightly");
    let request = |name: &str, sample_size: i32| pb::PreviewExportRequest {
        name: name.into(),
        sample_size,
    };

    let shown = preview(&mut exports, &nightly, 3).await;
    let source = only_source(&shown);
    assert_eq!(source.source, CUSTOMERS);
    assert_eq!((source.records_total, source.to_send), (10, 10));
    assert_eq!(shown.sample.len(), 3);
    assert_eq!(json_of(&shown.sample[0])["id"], json!("c00"));
    assert_eq!(preview(&mut exports, &nightly, 100).await.sample.len(), 10);

    let denied = t
        .exports("acme", Role::Viewer)
        .await
        .preview_export(request(&nightly, 0))
        .await;
    let status = expect_code(denied, Code::PermissionDenied);
    assert!(status.message().contains("exports.preview"), "{}", status.message());

    let missing = exports
        .preview_export(request(&export_name("acme", "nothing"), 0))
        .await;
    expect_code(missing, Code::NotFound);

    for bad in [101, -1] {
        let refused = exports.preview_export(request(&nightly, bad)).await;
        assert_eq!(
            bad_fields(&expect_code(refused, Code::InvalidArgument)),
            ["sample_size"],
            "{bad}"
        );
    }
    let malformed = exports
        .preview_export(request("environments/acme/exports/Not_An_Id", 0))
        .await;
    assert_eq!(bad_fields(&expect_code(malformed, Code::InvalidArgument)), ["name"]);
    assert!(list_runs(&mut exports, &nightly, "", "").await.is_empty());
    t.stop().await;
}
