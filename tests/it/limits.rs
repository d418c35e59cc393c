//! What no answer may exceed: a list page stays under a default client's 4 MiB whatever the
//! data (fewer items and a next page token instead), and an error status stays under the
//! 16 KiB of metadata a C-core client accepts, saying how much it leaves out.

use std::collections::BTreeSet;

use exportd::auth::Role;
use exportd::pb;
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::*;

/// A default gRPC client's largest answer.
const CLIENT_LIMIT: usize = 4 * 1024 * 1024;
const C_CORE_METADATA_LIMIT: usize = 16 * 1024;

const EXPORTS: usize = 250;

/// An export id of the longest allowed length, distinct per `i`.
fn long_id(i: usize) -> String {
    format!("export-{i:04}-{}", "x".repeat(63 - 12))
}

/// `acme` with [`EXPORTS`] exports of the customers entity, each as large as the bounds allow
/// for its description (5,000 four-byte characters): 5 MB in all.
async fn acme_with_large_exports() -> TestServer {
    let t = acme().await;
    let mut exports = t.exports("acme", Role::Admin).await;
    for i in 0..EXPORTS {
        let mut request = data_out("acme", &long_id(i), &format!("Export {i:04}"), "files", &[CUSTOMERS]);
        request.export.as_mut().unwrap().description = "\u{1F4E6}".repeat(5_000);
        exports
            .create_export(request)
            .await
            .unwrap_or_else(|s| panic!("export {i}: {s:?}"));
    }
    t
}

#[tokio::test]
async fn list_pages_stay_under_four_mib_and_lose_nothing() {
    let t = acme_with_large_exports().await;
    // The default client: it refuses any answer over 4 MiB.
    let mut exports = t.exports("acme", Role::Viewer).await;
    let mut seen = BTreeSet::new();
    let mut pages = 0;
    let mut token = String::new();
    loop {
        let page = exports
            .list_exports(pb::ListExportsRequest {
                parent: ACME.into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("page {pages}: {s:?}"))
            .into_inner();
        assert!(
            page.encoded_len() <= CLIENT_LIMIT,
            "page {pages}: {} bytes",
            page.encoded_len()
        );
        assert_eq!(page.total_size as usize, EXPORTS);
        assert!(!page.exports.is_empty());
        for export in &page.exports {
            assert!(seen.insert(export.name.clone()), "{} is on two pages", export.name);
        }
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), EXPORTS, "every export is on a page");
    assert!(pages >= 2, "5 MB of exports cannot fit one answer");
    t.stop().await;
}

#[tokio::test]
async fn an_error_naming_hundreds_of_users_fits_a_c_core_client_and_counts_the_rest() {
    let t = acme_with_large_exports().await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let status = expect_code(
        catalog
            .delete_entity(pb::DeleteEntityRequest { name: CUSTOMERS.into() })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "ENTITY_IN_USE");
    let mut trailers = http::HeaderMap::new();
    status.add_header(&mut trailers).unwrap();
    let size: usize = trailers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    assert!(size < C_CORE_METADATA_LIMIT, "{size} bytes of trailers");

    // The segments of the entity (vip, france) and every export use it.
    let users = EXPORTS + 2;
    assert!(
        status
            .message()
            .contains(&format!("is used by {users} resources, the first 10: ")),
        "{}",
        status.message()
    );
    let details = status.get_error_details();
    let info = details.error_info().unwrap();
    assert_eq!(info.metadata["used_by_count"], users.to_string());
    let shown = details.precondition_failure().unwrap().violations.len();
    assert!(shown > 0);
    assert_eq!(
        info.metadata["omitted_precondition_violations"],
        (users - shown).to_string()
    );
    // Nothing was deleted.
    catalog
        .get_entity(pb::GetEntityRequest { name: CUSTOMERS.into() })
        .await
        .unwrap();
    t.stop().await;
}

#[tokio::test]
async fn a_schedule_batch_whose_answer_would_exceed_four_mib_is_refused_and_changes_nothing() {
    let t = acme_with_large_exports().await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let names: Vec<String> = (0..EXPORTS)
        .map(|i| format!("environments/acme/exports/{}", long_id(i)))
        .collect();
    let status = expect_code(
        exports
            .update_export_schedules(pb::UpdateExportSchedulesRequest {
                parent: ACME.into(),
                names: names.clone(),
                mode: pb::ScheduleUpdateMode::KeepIndividualSchedules as i32,
                enabled: false,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["names"]);
    assert!(status.message().contains("name fewer exports"), "{}", status.message());
    let first = exports
        .get_export(pb::GetExportRequest { name: names[0].clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(first.schedule.unwrap().enabled, "nothing was switched off");
    // A batch whose answer fits is fine.
    let answer = exports
        .update_export_schedules(pb::UpdateExportSchedulesRequest {
            parent: ACME.into(),
            names: names[..100].to_vec(),
            mode: pb::ScheduleUpdateMode::KeepIndividualSchedules as i32,
            enabled: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.exports.len(), 100);
    assert!(answer.exports.iter().all(|e| !e.schedule.as_ref().unwrap().enabled));
    t.stop().await;
}

#[tokio::test]
async fn eligible_segments_are_paged_like_every_list() {
    let t = acme().await;
    let mut catalog = t.catalog("acme", Role::Viewer).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = catalog
            .list_eligible_segments(pb::ListEligibleSegmentsRequest {
                connection: "environments/acme/connections/files".into(),
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size, 2);
        assert_eq!(page.segments.len(), 1);
        seen.extend(page.segments.into_iter().map(|s| s.segment));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(
        seen,
        ["environments/acme/segments/france", "environments/acme/segments/vip"]
    );
    // A token is bound to the settings it was made with.
    let first = catalog
        .list_eligible_segments(pb::ListEligibleSegmentsRequest {
            connection: "environments/acme/connections/files".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = expect_code(
        catalog
            .list_eligible_segments(pb::ListEligibleSegmentsRequest {
                connection: "environments/acme/connections/files".into(),
                settings: [("folder".to_string(), "elsewhere".to_string())].into(),
                page_size: 1,
                page_token: first.next_page_token,
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["page_token"]);
    t.stop().await;
}

#[tokio::test]
async fn run_all_says_how_many_runs_it_started() {
    let t = acme().await;
    let mut exports = t.exports("acme", Role::Admin).await;
    for id in ["one", "two"] {
        exports
            .create_export(data_out("acme", id, id, "files", &[CUSTOMERS]))
            .await
            .unwrap();
    }
    let answer = exports
        .run_all_exports(pb::RunAllExportsRequest { parent: ACME.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.started_count, 2);
    assert_eq!(answer.runs.len(), 2);
    for run in &answer.runs {
        wait_for_end(&mut exports, &run.name).await;
    }
    t.stop().await;
}
