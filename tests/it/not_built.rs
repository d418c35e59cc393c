//! RPCs that are in the protos but not built yet (PreviewExport): called validly by an admin, each answers
//! UNIMPLEMENTED with an ErrorInfo saying so; the permission table still applies first.

use exportd::auth::Role;
use exportd::pb;
use tonic::Code;

use crate::common::*;

const NIGHTLY: &str = "environments/acme/exports/nightly";

/// UNIMPLEMENTED, reason NOT_IMPLEMENTED, naming the method and saying it is not provided yet.
fn assert_not_built<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>, method: &str) {
    let status = expect_code(result, Code::Unimplemented);
    assert_eq!(reason(&status), "NOT_IMPLEMENTED", "{method}");
    assert!(status.message().contains(method), "{method}: {}", status.message());
    assert!(
        status.message().contains("does not provide it yet"),
        "{method}: {}",
        status.message()
    );
}

#[tokio::test]
async fn rpcs_not_built_answer_unimplemented_after_authorization() {
    let t = acme().await;
    let mut exports = t.exports("acme", Role::Admin).await;
    exports
        .create_export(data_out("acme", "nightly", "Nightly", "files", &[CUSTOMERS]))
        .await
        .unwrap();

    assert_not_built(
        exports
            .preview_export(pb::PreviewExportRequest {
                name: NIGHTLY.into(),
                sample_size: 0,
            })
            .await,
        "ExportService/PreviewExport",
    );
    // The permission table applies before the answer: a viewer may not preview.
    let denied = t
        .exports("acme", Role::Viewer)
        .await
        .preview_export(pb::PreviewExportRequest {
            name: NIGHTLY.into(),
            sample_size: 0,
        })
        .await;
    let status = expect_code(denied, Code::PermissionDenied);
    assert_eq!(reason(&status), "PERMISSION_DENIED");
    assert!(status.message().contains("exports.preview"), "{}", status.message());
    // And a malformed name is INVALID_ARGUMENT on its field, not UNIMPLEMENTED.
    let bad = exports
        .preview_export(pb::PreviewExportRequest {
            name: "environments/acme/exports/Not_An_Id".into(),
            sample_size: 0,
        })
        .await;
    assert_eq!(bad_fields(&expect_code(bad, Code::InvalidArgument)), ["name"]);
    t.stop().await;
}
