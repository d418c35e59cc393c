//! What no answer may exceed: a list page stays under a default client's 4 MiB whatever the
//! data (fewer items and a next page token instead), and an error status stays under the
//! 16 KiB of metadata a C-core client accepts, saying how much it leaves out.

use std::collections::BTreeSet;

use exportd::auth::Role;
use exportd::pb;
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

use crate::catalog::CUSTOMERS;
use crate::common::*;
use crate::exports::{ACME, acme, data_out};

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
        assert!(page.encoded_len() <= CLIENT_LIMIT, "page {pages}: {} bytes", page.encoded_len());
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
        status.message().contains(&format!("is used by {users} resources, the first 10: ")),
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
