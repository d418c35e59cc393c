//! ConnectionService through the API: create, read, list, update, delete, test, and the bad
//! inputs each must refuse without changing anything.

use exportd::auth::Role;
use exportd::pb;
use tonic::Code;

use crate::common::*;

fn s3(env: &str, id: &str, secret: &str) -> pb::CreateConnectionRequest {
    pb::CreateConnectionRequest {
        parent: format!("environments/{env}"),
        connection_id: id.into(),
        connection: Some(pb::Connection {
            display_name: format!("S3 {id}"),
            r#type: "s3".into(),
            config: [
                ("bucket".to_string(), "bucket-b".to_string()),
                ("region".to_string(), "eu-west-1".to_string()),
            ]
            .into(),
            secrets: [
                ("access_key_id".to_string(), "AKIAEXAMPLE".to_string()),
                ("secret_access_key".to_string(), secret.to_string()),
            ]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn count(client: &mut Connections, env: &str) -> i32 {
    client
        .list_connections(pb::ListConnectionsRequest {
            parent: format!("environments/{env}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .total_size
}

#[tokio::test]
async fn create_get_and_list_round_trip_without_secrets() {
    let t = TestServer::start().await;
    let mut admin = t.connections("acme", Role::Admin).await;
    let created = admin
        .create_connection(s3("acme", "lake", "s3cr3t-value"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, "environments/acme/connections/lake");
    assert_eq!(created.r#type, "s3");
    assert!(created.secrets.is_empty());
    assert_eq!(created.secret_keys, vec!["access_key_id", "secret_access_key"]);
    assert_eq!(created.creator, "tester");
    assert!(created.create_time.is_some() && !created.etag.is_empty());

    let got = admin
        .get_connection(pb::GetConnectionRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    assert!(!format!("{got:?}").contains("s3cr3t-value"));
    t.stop().await;
}

#[tokio::test]
async fn generated_ids_are_valid_and_validate_only_stores_nothing() {
    let t = TestServer::start().await;
    let mut admin = t.connections("acme", Role::Admin).await;
    let mut request = s3("acme", "", "x");
    request.validate_only = true;
    let shown = admin.create_connection(request.clone()).await.unwrap().into_inner();
    assert!(
        shown.name.starts_with("environments/acme/connections/conn-"),
        "{}",
        shown.name
    );
    assert_eq!(count(&mut admin, "acme").await, 0);

    request.validate_only = false;
    let created = admin.create_connection(request).await.unwrap().into_inner();
    let id = created.name.rsplit('/').next().unwrap();
    assert!(exportd::domain::names::is_valid_id(id));
    assert_eq!(count(&mut admin, "acme").await, 1);
    t.stop().await;
}

#[tokio::test]
async fn request_id_returns_the_first_result_and_rejects_reuse_for_another_request() {
    let t = TestServer::start().await;
    let mut admin = t.connections("acme", Role::Admin).await;
    let mut request = local_files("acme", "", "Files", false);
    request.request_id = "9f1c2b7e-1111-4a4a-9999-000000000001".into();
    let first = admin.create_connection(request.clone()).await.unwrap().into_inner();
    let again = admin.create_connection(request.clone()).await.unwrap().into_inner();
    assert_eq!(first.name, again.name);
    assert_eq!(count(&mut admin, "acme").await, 1);

    request.connection.as_mut().unwrap().display_name = "Other".into();
    let status = expect_code(admin.create_connection(request).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&status), vec!["request_id"]);
    assert_eq!(count(&mut admin, "acme").await, 1);
    t.stop().await;
}

#[tokio::test]
async fn bad_creates_name_the_field_and_change_nothing() {
    let t = TestServer::start().await;
    let mut admin = t.connections("acme", Role::Admin).await;
    let cases: Vec<(pb::CreateConnectionRequest, Code, Vec<&str>)> = vec![
        (
            {
                let mut r = local_files("acme", "Bad_Id", "x", false);
                r.connection_id = "Bad_Id".into();
                r
            },
            Code::InvalidArgument,
            vec!["connection_id"],
        ),
        (
            {
                let mut r = local_files("acme", "a", "x", false);
                r.parent = "environments".into();
                r
            },
            Code::InvalidArgument,
            vec!["parent"],
        ),
        (
            {
                let mut r = local_files("acme", "a", "x", false);
                r.connection.as_mut().unwrap().r#type = "ftp".into();
                r
            },
            Code::InvalidArgument,
            vec!["connection.type"],
        ),
        (
            {
                let mut r = s3("acme", "a", "x");
                r.connection.as_mut().unwrap().config.remove("bucket");
                r
            },
            Code::InvalidArgument,
            vec!["connection.config.bucket"],
        ),
        (
            {
                let mut r = s3("acme", "a", "x");
                r.connection.as_mut().unwrap().secrets.remove("secret_access_key");
                r
            },
            Code::InvalidArgument,
            vec!["connection.secrets.secret_access_key"],
        ),
        (
            {
                let mut r = s3("acme", "a", "x");
                r.connection
                    .as_mut()
                    .unwrap()
                    .config
                    .insert("bukket".into(), "x".into());
                r
            },
            Code::InvalidArgument,
            vec!["connection.config.bukket"],
        ),
        (
            {
                let mut r = local_files("acme", "a", "x", false);
                r.connection
                    .as_mut()
                    .unwrap()
                    .config
                    .insert("root".into(), "relative/path".into());
                r
            },
            Code::InvalidArgument,
            vec!["connection.config.root"],
        ),
        (
            {
                let mut r = local_files("acme", "a", "", false);
                r.connection.as_mut().unwrap().profile_limit = -5;
                r
            },
            Code::InvalidArgument,
            vec!["connection.display_name", "connection.profile_limit"],
        ),
        (
            pb::CreateConnectionRequest {
                parent: "environments/acme".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            vec!["connection"],
        ),
    ];
    for (request, code, fields) in cases {
        let status = expect_code(admin.create_connection(request.clone()).await, code);
        let mut got = bad_fields(&status);
        got.sort();
        assert_eq!(got, fields, "{request:?}");
    }
    // Azure needs exactly one of account_key or sas_token.
    let mut azure = pb::CreateConnectionRequest {
        parent: "environments/acme".into(),
        connection: Some(pb::Connection {
            display_name: "Blob".into(),
            r#type: "azure-blob".into(),
            config: [
                ("account".to_string(), "acct".to_string()),
                ("container".to_string(), "cont".to_string()),
            ]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let status = expect_code(admin.create_connection(azure.clone()).await, Code::InvalidArgument);
    assert!(
        status.message().contains("account_key or sas_token"),
        "{}",
        status.message()
    );
    azure.connection.as_mut().unwrap().secrets = [("sas_token".to_string(), "sv=1".to_string())].into();
    admin.create_connection(azure).await.unwrap();
    assert_eq!(count(&mut admin, "acme").await, 1);

    admin
        .create_connection(local_files("acme", "dup", "Dup", false))
        .await
        .unwrap();
    let status = expect_code(
        admin.create_connection(local_files("acme", "dup", "Dup", false)).await,
        Code::AlreadyExists,
    );
    assert_eq!(reason(&status), "RESOURCE_ALREADY_EXISTS");
    let status = expect_code(
        admin.create_connection(local_files("nowhere", "x", "X", false)).await,
        Code::NotFound,
    );
    assert_eq!(reason(&status), "RESOURCE_NOT_FOUND");
    t.stop().await;
}

#[tokio::test]
async fn list_pages_orders_and_filters() {
    let t = TestServer::start().await;
    let mut admin = t.connections("acme", Role::Admin).await;
    for (id, name, shared) in [
        ("c1", "Charlie", true),
        ("a1", "alpha", false),
        ("b1", "Bravo", true),
        ("d1", "delta files", false),
    ] {
        admin
            .create_connection(local_files("acme", id, name, shared))
            .await
            .unwrap();
    }
    admin.create_connection(s3("acme", "s1", "x")).await.unwrap();
    let list = |filter: &str, order: &str, size: i32, token: &str| pb::ListConnectionsRequest {
        parent: "environments/acme".into(),
        filter: filter.into(),
        order_by: order.into(),
        page_size: size,
        page_token: token.into(),
    };
    let names =
        |r: &pb::ListConnectionsResponse| r.connections.iter().map(|c| c.display_name.clone()).collect::<Vec<_>>();

    // Default order is display name, case-insensitive; pages of 2 walk the whole list.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_connections(list("", "", 2, &token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size, 5);
        seen.extend(names(&page));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, vec!["alpha", "Bravo", "Charlie", "delta files", "S3 s1"]);

    let desc = admin
        .list_connections(list("", "display_name desc", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&desc), vec!["S3 s1", "delta files", "Charlie", "Bravo", "alpha"]);
    let by_type = admin
        .list_connections(list("", "type desc, display_name", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&by_type)[0], "S3 s1");
    let by_time = admin
        .list_connections(list("", "create_time desc", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&by_time)[0], "S3 s1");

    let filtered = admin
        .list_connections(list("display_name:\"ALPH\" OR display_name:\"files\"", "", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&filtered), vec!["alpha", "delta files"]);
    let shared_files = admin
        .list_connections(list(
            "type = \"local-files\" AND contributors_can_use = true",
            "",
            0,
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&shared_files), vec!["Bravo", "Charlie"]);
    // LIKE wildcards in the text are literal.
    let none = admin
        .list_connections(list("display_name:\"%\"", "", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.total_size, 0);

    // Bad parameters name their field.
    for (request, field) in [
        (list("", "", -1, ""), "page_size"),
        (list("colour = \"red\"", "", 0, ""), "filter"),
        (list("display_name = ", "", 0, ""), "filter"),
        (list("", "colour", 0, ""), "order_by"),
        (list("", "display_name sideways", 0, ""), "order_by"),
        (list("", "", 0, "not-a-token"), "page_token"),
    ] {
        let status = expect_code(admin.list_connections(request).await, Code::InvalidArgument);
        assert_eq!(bad_fields(&status), vec![field]);
    }
    // A token from one query is refused by another.
    let first = admin.list_connections(list("", "", 2, "")).await.unwrap().into_inner();
    let status = expect_code(
        admin
            .list_connections(list("", "create_time", 2, &first.next_page_token))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["page_token"]);
    t.stop().await;
}

#[tokio::test]
async fn update_applies_the_mask_and_checks_the_etag() {
    let t = TestServer::start().await;
    let mut admin = t.connections("acme", Role::Admin).await;
    let created = admin
        .create_connection(s3("acme", "lake", "old-secret"))
        .await
        .unwrap()
        .into_inner();
    let update = |connection: pb::Connection, paths: &[&str]| pb::UpdateConnectionRequest {
        connection: Some(connection),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|s| s.to_string()).collect(),
        }),
    };

    // Only masked fields change.
    let changed = pb::Connection {
        name: created.name.clone(),
        display_name: "Data lake".into(),
        description: "ignored: not in the mask".into(),
        etag: created.etag.clone(),
        config: [("prefix".to_string(), "exports".to_string())].into(),
        ..Default::default()
    };
    let updated = admin
        .update_connection(update(changed, &["display_name", "config.prefix"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Data lake");
    assert_eq!(updated.description, "");
    assert_eq!(updated.config.get("prefix").map(String::as_str), Some("exports"));
    assert_eq!(updated.config.get("bucket").map(String::as_str), Some("bucket-b"));
    assert_ne!(updated.etag, created.etag);

    // A stale etag is ABORTED and changes nothing.
    let stale = pb::Connection {
        name: created.name.clone(),
        display_name: "Stale".into(),
        etag: created.etag.clone(),
        ..Default::default()
    };
    let status = expect_code(
        admin.update_connection(update(stale, &["display_name"])).await,
        Code::Aborted,
    );
    assert_eq!(reason(&status), "ETAG_MISMATCH");

    // Unknown and read-only paths are INVALID_ARGUMENT on update_mask.
    for path in ["type", "name", "colour", "create_time"] {
        let c = pb::Connection {
            name: created.name.clone(),
            ..Default::default()
        };
        let status = expect_code(admin.update_connection(update(c, &[path])).await, Code::InvalidArgument);
        assert_eq!(bad_fields(&status), vec!["update_mask"]);
    }
    // Removing a required config key through its path is refused.
    let c = pb::Connection {
        name: created.name.clone(),
        ..Default::default()
    };
    let status = expect_code(
        admin.update_connection(update(c, &["config.bucket"])).await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["connection.config.bucket"]);

    // Secrets can be replaced one key at a time and stay write-only.
    let c = pb::Connection {
        name: created.name.clone(),
        secrets: [("secret_access_key".to_string(), "new-secret".to_string())].into(),
        ..Default::default()
    };
    let updated = admin
        .update_connection(update(c, &["secrets.secret_access_key", "contributors_can_use"]))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.secrets.is_empty());
    assert!(!updated.contributors_can_use);
    let got = admin
        .get_connection(pb::GetConnectionRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.display_name, "Data lake");
    assert_eq!(got.secret_keys, vec!["access_key_id", "secret_access_key"]);
    let secrets = t
        .state
        .store
        .connection_secrets(&exportd::domain::names::ConnectionName::new("acme", "lake"))
        .await
        .unwrap();
    assert_eq!(secrets["secret_access_key"], "new-secret");
    assert_eq!(secrets["access_key_id"], "AKIAEXAMPLE");
    t.stop().await;
}

#[tokio::test]
async fn delete_checks_the_etag_and_removes_the_connection() {
    let t = TestServer::start().await;
    let mut admin = t.connections("acme", Role::Admin).await;
    let created = admin
        .create_connection(local_files("acme", "files", "Files", false))
        .await
        .unwrap()
        .into_inner();
    let status = expect_code(
        admin
            .delete_connection(pb::DeleteConnectionRequest {
                name: created.name.clone(),
                etag: "1-deadbeef".into(),
                force: false,
            })
            .await,
        Code::Aborted,
    );
    assert_eq!(reason(&status), "ETAG_MISMATCH");
    let deleted = admin
        .delete_connection(pb::DeleteConnectionRequest {
            name: created.name.clone(),
            etag: created.etag.clone(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.name, created.name);
    expect_code(
        admin
            .get_connection(pb::GetConnectionRequest {
                name: created.name.clone(),
            })
            .await,
        Code::NotFound,
    );
    expect_code(
        admin
            .delete_connection(pb::DeleteConnectionRequest {
                name: created.name,
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    t.stop().await;
}

#[tokio::test]
async fn test_connection_reports_each_check() {
    let t = TestServer::start().await;
    let mut admin = t.connections("acme", Role::Admin).await;
    let root = t.data_dir.path().join("target-folder");
    let mut ok = local_files("acme", "ok", "OK", false);
    ok.connection
        .as_mut()
        .unwrap()
        .config
        .insert("root".into(), root.display().to_string());
    admin.create_connection(ok).await.unwrap();
    let report = admin
        .test_connection(pb::TestConnectionRequest {
            name: "environments/acme/connections/ok".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        vec!["root_allowed", "folder_exists", "folder_writable"]
    );
    assert!(root.is_dir());

    // A folder under a regular file cannot be created: the RPC succeeds and says what failed.
    let blocker = t.data_dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let mut bad = local_files("acme", "bad", "Bad", false);
    bad.connection
        .as_mut()
        .unwrap()
        .config
        .insert("root".into(), blocker.join("sub").display().to_string());
    admin.create_connection(bad).await.unwrap();
    let report = admin
        .test_connection(pb::TestConnectionRequest {
            name: "environments/acme/connections/bad".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!report.ok);
    assert!(report.message.contains("folder_exists failed"), "{}", report.message);
    assert_eq!(
        report
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.ok))
            .collect::<Vec<_>>(),
        vec![("root_allowed", true), ("folder_exists", false)]
    );
    t.stop().await;
}

#[tokio::test]
async fn connection_types_publish_the_catalogue() {
    let t = TestServer::start().await;
    let mut viewer = t.connections("acme", Role::Viewer).await;
    let types = viewer
        .list_connection_types(pb::ListConnectionTypesRequest {})
        .await
        .unwrap()
        .into_inner()
        .connection_types;
    let ids: Vec<&str> = types.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "azure-blob",
            "facebook-ads",
            "google-ads",
            "linkedin-ads",
            "local-files",
            "mailchimp",
            "postgres",
            "s3",
            "sftp",
            "webhook"
        ]
    );
    let linkedin = types.iter().find(|t| t.id == "linkedin-ads").unwrap();
    assert_eq!(linkedin.name, "connectionTypes/linkedin-ads");
    assert_eq!(linkedin.profile_limit, 100_000);
    assert_eq!(linkedin.minimum_segment_size, 300);
    assert_eq!(linkedin.category, pb::ConnectionCategory::Advertising as i32);
    let company = linkedin.target_options.iter().find(|o| o.value == "COMPANY").unwrap();
    assert_eq!(
        company.identifier_fields,
        vec!["company_name", "email_domain", "company_website"]
    );
    assert_eq!(company.segment_types, vec![pb::SegmentType::Account as i32]);
    let mailchimp = types.iter().find(|t| t.id == "mailchimp").unwrap();
    assert_eq!(mailchimp.required_fields, vec!["email"]);
    assert_eq!(mailchimp.profile_limit, 1_000_000);
    assert_eq!(mailchimp.export_kinds, vec![pb::ExportKind::Segment as i32]);
    assert_eq!(
        mailchimp.sync_modes,
        vec![pb::SyncMode::Full as i32, pb::SyncMode::Mirror as i32]
    );
    let sftp = types.iter().find(|t| t.id == "sftp").unwrap();
    assert!(sftp.config_fields.iter().any(|f| f.key == "host_key" && f.required));
    assert_eq!(sftp.one_of_secrets, vec!["password", "private_key"]);
    t.stop().await;
}

#[tokio::test]
async fn oversize_messages_are_refused_with_details() {
    let t = TestServer::start_with(Options::default().var("EXPORTD_MAX_MESSAGE_BYTES", "65536")).await;
    let mut admin = t.connections("acme", Role::Admin).await;
    let mut request = local_files("acme", "big", "Big", false);
    request.connection.as_mut().unwrap().description = "x".repeat(200_000);
    let status = expect_code(admin.create_connection(request).await, Code::ResourceExhausted);
    assert_eq!(reason(&status), "MESSAGE_TOO_LARGE");
    assert_eq!(count(&mut admin, "acme").await, 0);
    t.stop().await;
}

#[tokio::test]
async fn tenants_are_isolated() {
    let t = TestServer::start().await;
    let mut acme = t.connections("acme", Role::Admin).await;
    acme.create_connection(local_files("acme", "files", "Files", true))
        .await
        .unwrap();
    let mut globex = t.connections("globex", Role::Admin).await;
    for status in [
        globex
            .get_connection(pb::GetConnectionRequest {
                name: "environments/acme/connections/files".into(),
            })
            .await
            .unwrap_err(),
        globex
            .list_connections(pb::ListConnectionsRequest {
                parent: "environments/acme".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        globex
            .create_connection(local_files("acme", "x", "X", false))
            .await
            .unwrap_err(),
        globex
            .test_connection(pb::TestConnectionRequest {
                name: "environments/acme/connections/files".into(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(!status.message().contains("Files"));
    }
    assert_eq!(count(&mut globex, "globex").await, 0);
    t.stop().await;
}

#[tokio::test]
async fn concurrent_retries_with_one_request_id_create_one_connection() {
    let t = TestServer::start().await;
    let mut request = local_files("acme", "", "Files", false);
    request.request_id = "7d0e6a52-0000-4000-8000-000000000001".into();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut client = t.connections("acme", Role::Admin).await;
        let request = request.clone();
        calls.push(tokio::spawn(async move {
            client.create_connection(request).await.map(|r| r.into_inner().name)
        }));
    }
    let mut names = std::collections::BTreeSet::new();
    for call in calls {
        names.insert(call.await.unwrap().expect("every retry gets the first result"));
    }
    assert_eq!(names.len(), 1, "{names:?}");
    let mut admin = t.connections("acme", Role::Admin).await;
    assert_eq!(count(&mut admin, "acme").await, 1);
    t.stop().await;
}
