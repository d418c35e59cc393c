//! RPCs that are in the protos but not built yet: called validly by an admin, each answers
//! UNIMPLEMENTED with an ErrorInfo saying so; the permission table still applies first.

use exportd::auth::Role;
use exportd::pb;
use tonic::Code;

use crate::common::*;

const NIGHTLY: &str = "environments/acme/exports/nightly";
const POLICY: &str = "environments/acme/alertPolicies/failures";

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

fn policy() -> pb::AlertPolicy {
    pb::AlertPolicy {
        display_name: "Failures".into(),
        conditions: vec![pb::AlertCondition::RunFailed as i32],
        ..Default::default()
    }
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
    let mut alerts = t.alerts("acme", Role::Admin).await;
    assert_not_built(
        alerts
            .create_alert_policy(pb::CreateAlertPolicyRequest {
                parent: ACME.into(),
                alert_policy_id: "failures".into(),
                alert_policy: Some(policy()),
                ..Default::default()
            })
            .await,
        "AlertService/CreateAlertPolicy",
    );
    assert_not_built(
        alerts
            .get_alert_policy(pb::GetAlertPolicyRequest { name: POLICY.into() })
            .await,
        "AlertService/GetAlertPolicy",
    );
    assert_not_built(
        alerts
            .list_alert_policies(pb::ListAlertPoliciesRequest {
                parent: ACME.into(),
                ..Default::default()
            })
            .await,
        "AlertService/ListAlertPolicies",
    );
    assert_not_built(
        alerts
            .update_alert_policy(pb::UpdateAlertPolicyRequest {
                alert_policy: Some(pb::AlertPolicy {
                    name: POLICY.into(),
                    ..policy()
                }),
                update_mask: mask(&["display_name"]),
            })
            .await,
        "AlertService/UpdateAlertPolicy",
    );
    assert_not_built(
        alerts
            .delete_alert_policy(pb::DeleteAlertPolicyRequest {
                name: POLICY.into(),
                etag: String::new(),
            })
            .await,
        "AlertService/DeleteAlertPolicy",
    );
    assert_not_built(
        alerts
            .list_alert_events(pb::ListAlertEventsRequest {
                parent: "environments/acme/alertPolicies/-".into(),
                ..Default::default()
            })
            .await,
        "AlertService/ListAlertEvents",
    );

    // The permission table applies before the answer: a viewer may not write a policy.
    let denied = t
        .alerts("acme", Role::Viewer)
        .await
        .create_alert_policy(pb::CreateAlertPolicyRequest {
            parent: ACME.into(),
            alert_policy: Some(policy()),
            ..Default::default()
        })
        .await;
    let status = expect_code(denied, Code::PermissionDenied);
    assert_eq!(reason(&status), "PERMISSION_DENIED");
    assert!(
        status.message().contains("alertPolicies.create"),
        "{}",
        status.message()
    );
    // And a malformed name is INVALID_ARGUMENT on its field, not UNIMPLEMENTED.
    let bad = alerts
        .get_alert_policy(pb::GetAlertPolicyRequest {
            name: "environments/acme/alertPolicies/Not_An_Id".into(),
        })
        .await;
    assert_eq!(bad_fields(&expect_code(bad, Code::InvalidArgument)), ["name"]);
    t.stop().await;
}
