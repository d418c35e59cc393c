//! Output areas never overlap (PRODUCT.md §3): where `local-files` connections and exports
//! write, who may point a connection where (`root`, `allowed_roots`), DuplicateExport's folder,
//! TestConnection's reach, settings that could never run, the modes of what the server writes,
//! and what run messages tell callers who may not see a connection.

use std::path::{Path, PathBuf};

use exportd::auth::Role;
use exportd::pb;
use tonic::Code;

use crate::common::*;

fn exports_root(t: &TestServer) -> PathBuf {
    t.data_dir.path().join("exports")
}

fn customers(env: &str) -> String {
    format!("environments/{env}/entities/customers")
}

/// Each environment's own records: acme has the ten customers c00…c09, globex g0…g2.
async fn add_customers(t: &TestServer, env: &str) {
    let mut catalog = t.catalog(env, Role::Admin).await;
    catalog
        .create_entity(customers_entity(env, "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    let records = if env == "acme" {
        ten_customers()
    } else {
        (0..3).map(|i| serde_json::json!({"id": format!("g{i}")})).collect()
    };
    write_all(&mut catalog, vec![write(&customers(env), records, &[])])
        .await
        .unwrap();
}

/// acme and globex, each with its customers and a shared `files` connection without root.
async fn two_tenants(options: Options) -> TestServer {
    let t = TestServer::start_with(options).await;
    for env in ["acme", "globex"] {
        add_customers(&t, env).await;
        t.connections(env, Role::Admin)
            .await
            .create_connection(local_files(env, "files", "Files", true))
            .await
            .unwrap();
    }
    t
}

async fn run_ok(client: &mut Exports, export: &str) -> pb::ExportRun {
    let run = run_export(client, export).await;
    let done = wait_for_end(client, &run.name).await;
    assert_eq!(run_state(&done), pb::RunState::Succeeded, "{done:#?}");
    done
}

fn with_settings(mut request: pb::CreateExportRequest, settings: &[(&str, &str)]) -> pb::CreateExportRequest {
    request.export.as_mut().unwrap().settings = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    request
}

/// The keys of every row of the partitions the folder's model.json lists, sorted.
fn exported_keys(folder: &Path) -> Vec<String> {
    let model: serde_json::Value = serde_json::from_slice(&std::fs::read(folder.join("model.json")).unwrap()).unwrap();
    let mut keys = Vec::new();
    for entity in model["entities"].as_array().unwrap() {
        for partition in entity["partitions"].as_array().unwrap() {
            let location = partition["location"].as_str().unwrap();
            let text = std::fs::read_to_string(path_of_location(location)).unwrap();
            keys.extend(
                text.lines()
                    .skip(1)
                    .map(|line| line.split(',').next().unwrap().to_string()),
            );
        }
    }
    keys.sort();
    keys
}

/// A local-files connection request whose root is `root` (any text).
fn rooted(env: &str, id: &str, shared: bool, root: &str) -> pb::CreateConnectionRequest {
    let mut request = local_files(env, id, id, shared);
    request
        .connection
        .as_mut()
        .unwrap()
        .config
        .insert("root".into(), root.into());
    request
}

async fn get_connection(client: &mut Connections, name: &str) -> pb::Connection {
    client
        .get_connection(pb::GetConnectionRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn export_ids(client: &mut Exports, env: &str) -> Vec<String> {
    let mut ids: Vec<String> = client
        .list_exports(pb::ListExportsRequest {
            parent: format!("environments/{env}"),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .exports
        .into_iter()
        .map(|e| e.name.rsplit('/').next().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Stops the server and starts another one on the same database and data dir, with
/// `options` (as after the operator changed the configuration).
async fn restart_with(mut t: TestServer, options: Options) -> TestServer {
    t.server.take().unwrap().shutdown().await.unwrap();
    let TestServer {
        data_dir, database_url, ..
    } = t;
    let settings = settings_for(data_dir.path(), &database_url, &options);
    serve(settings, data_dir, database_url, false).await
}

/// A server on `settings`, with the environment acme when `create_acme`.
async fn serve(
    settings: exportd::config::Settings,
    data_dir: tempfile::TempDir,
    database_url: String,
    create_acme: bool,
) -> TestServer {
    let state = exportd::server::open_state(settings).await.expect("server state");
    if create_acme {
        state
            .store
            .create_environment(
                "acme",
                "Acme",
                exportd::domain::environment::EnvironmentKind::IndividualCustomers,
            )
            .await
            .unwrap();
    }
    let server = exportd::server::start(state.clone()).await.expect("server starts");
    TestServer {
        addr: server.addr,
        server: Some(server),
        state,
        data_dir,
        database_url,
    }
}

#[tokio::test]
async fn exports_of_two_environments_with_the_same_id_or_folder_write_to_different_folders() {
    let t = two_tenants(Options::default()).await;
    for env in ["acme", "globex"] {
        let mut admin = t.exports(env, Role::Admin).await;
        admin
            .create_export(data_out(env, "lake", "Lake", "files", &[&customers(env)]))
            .await
            .unwrap();
        admin
            .create_export(with_settings(
                data_out(env, "other", "Other", "files", &[&customers(env)]),
                &[("folder", "shared/cdm")],
            ))
            .await
            .unwrap();
        run_ok(&mut admin, &export_name(env, "lake")).await;
        run_ok(&mut admin, &export_name(env, "other")).await;
    }
    let acme: Vec<String> = (0..10).map(|i| format!("c{i:02}")).collect();
    let globex = vec!["g0".to_string(), "g1".to_string(), "g2".to_string()];
    for folder in ["lake", "shared/cdm"] {
        assert_eq!(exported_keys(&exports_root(&t).join("acme/files").join(folder)), acme);
        assert_eq!(
            exported_keys(&exports_root(&t).join("globex/files").join(folder)),
            globex
        );
        assert!(
            !exports_root(&t).join(folder).exists(),
            "nothing is shared by the environments"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn a_contributor_cannot_reach_another_exports_folder() {
    let t = two_tenants(Options::default()).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    // An admin-only connection whose root lies inside the shared connection's folder.
    let hidden = exports_root(&t).join("acme/files/hidden");
    connections
        .create_connection(rooted("acme", "private", false, &hidden.display().to_string()))
        .await
        .unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;
    admin
        .create_export(data_out("acme", "secret", "Secret", "private", &[&customers("acme")]))
        .await
        .unwrap();
    admin
        .create_export(with_settings(
            data_out("acme", "plain", "Plain", "files", &[&customers("acme")]),
            &[("folder", "x")],
        ))
        .await
        .unwrap();

    let mut contributor = t.exports("acme", Role::Contributor).await;
    let cases = [
        ("hidden/secret", "environments/acme/exports/secret", "the same folder"),
        ("hidden", "environments/acme/exports/secret", "contains"),
        ("hidden//secret/deeper/", "environments/acme/exports/secret", "inside"),
        ("x", "environments/acme/exports/plain", "the same folder"),
        ("x/y", "environments/acme/exports/plain", "inside"),
    ];
    for validate_only in [true, false] {
        for (folder, other, relation) in cases {
            let mut request = with_settings(
                data_out("acme", "mine", "Mine", "files", &[&customers("acme")]),
                &[("folder", folder)],
            );
            request.validate_only = validate_only;
            let status = expect_code(contributor.create_export(request).await, Code::InvalidArgument);
            assert_eq!(bad_fields(&status), vec!["export.settings.folder"], "{folder}");
            assert!(status.message().contains(other), "{folder}: {}", status.message());
            assert!(status.message().contains(relation), "{folder}: {}", status.message());
            assert!(
                !status.message().contains(&hidden.display().to_string()),
                "the private root stays hidden: {}",
                status.message()
            );
        }
    }
    assert_eq!(export_ids(&mut admin, "acme").await, vec!["plain", "secret"]);

    // An export of the contributor's own cannot be moved there either, and stays as it was.
    let mine = contributor
        .create_export(with_settings(
            data_out("acme", "mine", "Mine", "files", &[&customers("acme")]),
            &[("folder", "y")],
        ))
        .await
        .unwrap()
        .into_inner();
    for paths in [&["settings.folder"][..], &["settings"][..]] {
        let status = expect_code(
            contributor
                .update_export(pb::UpdateExportRequest {
                    export: Some(pb::Export {
                        name: mine.name.clone(),
                        settings: [("folder".to_string(), "hidden/secret".to_string())].into(),
                        ..Default::default()
                    }),
                    update_mask: mask(paths),
                    validate_only: false,
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), vec!["export.settings.folder"]);
    }
    let unchanged = contributor
        .get_export(pb::GetExportRequest {
            name: mine.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged, mine);
    // The secret export's files are its own after the contributor's export ran.
    run_ok(&mut contributor, &mine.name).await;
    run_ok(&mut admin, &export_name("acme", "secret")).await;
    assert_eq!(exported_keys(&hidden.join("secret")).len(), 10);
    t.stop().await;
}

#[tokio::test]
async fn concurrent_saves_of_one_folder_let_exactly_one_through() {
    let t = two_tenants(Options::default()).await;
    // Every client is connected before the saves start, so that they reach the server together.
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(t.exports("acme", Role::Admin).await);
    }
    let requests = clients.into_iter().enumerate().map(|(i, mut client)| async move {
        client
            .create_export(with_settings(
                data_out("acme", &format!("race-{i}"), "Race", "files", &[&customers("acme")]),
                &[("folder", "race")],
            ))
            .await
    });
    let results = futures::future::join_all(requests).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 1, "{results:?}");
    for refused in results.into_iter().filter_map(Result::err) {
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(bad_fields(&refused), vec!["export.settings.folder"]);
    }
    let mut admin = t.exports("acme", Role::Admin).await;
    assert_eq!(export_ids(&mut admin, "acme").await.len(), 1);
    t.stop().await;
}

#[tokio::test]
async fn a_root_may_only_be_set_under_the_operators_allowed_roots() {
    // The defaults: the exports root, and inside it only the environment's own folder.
    let t = TestServer::start_with(Options::default().default_allowed_roots()).await;
    let mut admin = t.connections("acme", Role::Admin).await;
    let root = exports_root(&t);
    let own = root.join("acme/custom").display().to_string();
    admin
        .create_connection(rooted("acme", "own", false, &own))
        .await
        .unwrap();
    let refused = [
        t.data_dir.path().join("beside").display().to_string(),
        "/etc/cron.d".to_string(),
        root.display().to_string(),
        t.data_dir.path().display().to_string(),
        root.join("globex/files").display().to_string(),
        format!("{}/acme/../globex", root.display()).replace("/../", "/./../"),
    ];
    for validate_only in [true, false] {
        for (i, bad) in refused.iter().enumerate() {
            let mut request = rooted("acme", &format!("bad-{i}"), false, bad);
            request.validate_only = validate_only;
            let status = expect_code(admin.create_connection(request).await, Code::InvalidArgument);
            assert_eq!(bad_fields(&status), vec!["connection.config.root"], "{bad}");
            assert!(!status.message().contains("globex"), "{}", status.message());
        }
    }
    // Moving an existing connection out is refused, and changes nothing.
    let before = get_connection(&mut admin, "environments/acme/connections/own").await;
    let status = expect_code(
        admin
            .update_connection(pb::UpdateConnectionRequest {
                connection: Some(pb::Connection {
                    name: before.name.clone(),
                    config: [("root".to_string(), "/etc/cron.d".to_string())].into(),
                    ..Default::default()
                }),
                update_mask: mask(&["config.root"]),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["connection.config.root"]);
    assert!(status.message().contains("allowed_roots"), "{}", status.message());
    assert_eq!(get_connection(&mut admin, &before.name).await, before);
    t.stop().await;

    // An operator's own list replaces the default.
    let t = TestServer::start().await;
    let allowed = t.data_dir.path().join("allowed");
    let t = restart_with(
        t,
        Options::default().var("EXPORTD_ALLOWED_ROOTS", allowed.display().to_string()),
    )
    .await;
    let mut admin = t.connections("acme", Role::Admin).await;
    let inside = allowed.join("team-a").display().to_string();
    admin
        .create_connection(rooted("acme", "team", false, &inside))
        .await
        .unwrap();
    let outside = exports_root(&t).join("acme/x").display().to_string();
    let status = expect_code(
        admin
            .create_connection(rooted("acme", "default", false, &outside))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains(&allowed.display().to_string()),
        "the message says where roots may go: {}",
        status.message()
    );
    t.stop().await;
}

#[tokio::test]
async fn a_root_that_meets_another_environments_area_is_refused_naming_nothing_of_it() {
    let t = TestServer::start().await;
    let shared = t.data_dir.path().join("shared");
    let theirs = shared.join("globex-lake");
    t.connections("globex", Role::Admin)
        .await
        .create_connection(rooted("globex", "lake", false, &theirs.display().to_string()))
        .await
        .unwrap();
    let mut admin = t.connections("acme", Role::Admin).await;
    let meeting = [
        shared.clone(),
        theirs.clone(),
        theirs.join("acme"),
        PathBuf::from(format!("{}/./", theirs.display())),
    ];
    for validate_only in [true, false] {
        for (i, root) in meeting.iter().enumerate() {
            let mut request = rooted("acme", &format!("c{i}"), false, &root.display().to_string());
            request.validate_only = validate_only;
            let status = expect_code(admin.create_connection(request).await, Code::InvalidArgument);
            assert_eq!(bad_fields(&status), vec!["connection.config.root"]);
            let text = format!("{status:?}");
            assert!(!text.contains("globex"), "nothing of the other environment: {text}");
        }
    }
    let ours = shared.join("acme-lake");
    admin
        .create_connection(rooted("acme", "ours", false, &ours.display().to_string()))
        .await
        .unwrap();
    let before = get_connection(&mut admin, "environments/acme/connections/ours").await;
    let status = expect_code(
        admin
            .update_connection(pb::UpdateConnectionRequest {
                connection: Some(pb::Connection {
                    name: before.name.clone(),
                    config: [("root".to_string(), theirs.join("x").display().to_string())].into(),
                    ..Default::default()
                }),
                update_mask: mask(&["config"]),
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(!format!("{status:?}").contains("globex"));
    assert_eq!(get_connection(&mut admin, &before.name).await, before);
    // The other way round too: globex cannot reach into acme's root now.
    let status = expect_code(
        t.connections("globex", Role::Admin)
            .await
            .create_connection(rooted("globex", "grab", false, &ours.join("x").display().to_string()))
            .await,
        Code::InvalidArgument,
    );
    assert!(!format!("{status:?}").contains("acme"));
    t.stop().await;
}

#[tokio::test]
async fn a_connection_change_that_makes_two_exports_meet_is_refused() {
    let t = TestServer::start().await;
    add_customers(&t, "acme").await;
    let base = t.data_dir.path().join("roots");
    let mut connections = t.connections("acme", Role::Admin).await;
    for id in ["a", "b"] {
        connections
            .create_connection(rooted("acme", id, true, &base.join(id).display().to_string()))
            .await
            .unwrap();
    }
    let mut admin = t.exports("acme", Role::Admin).await;
    for (export, connection) in [("one", "a"), ("two", "b")] {
        admin
            .create_export(with_settings(
                data_out("acme", export, export, connection, &[&customers("acme")]),
                &[("folder", "out")],
            ))
            .await
            .unwrap();
    }
    let before = get_connection(&mut connections, "environments/acme/connections/b").await;
    let status = expect_code(
        connections
            .update_connection(pb::UpdateConnectionRequest {
                connection: Some(pb::Connection {
                    name: before.name.clone(),
                    config: [("root".to_string(), base.join("a").display().to_string())].into(),
                    ..Default::default()
                }),
                update_mask: mask(&["config.root"]),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["connection.config.root"]);
    assert!(
        status.message().contains("environments/acme/exports/one"),
        "{}",
        status.message()
    );
    assert_eq!(get_connection(&mut connections, &before.name).await, before);
    // Moving an export onto the other connection is refused the same way.
    let two = export_name("acme", "two");
    let status = expect_code(
        admin
            .update_export(pb::UpdateExportRequest {
                export: Some(pb::Export {
                    name: two.clone(),
                    connection: conn_name("acme", "a"),
                    ..Default::default()
                }),
                update_mask: mask(&["connection"]),
                validate_only: false,
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("environments/acme/exports/one"),
        "{}",
        status.message()
    );
    t.stop().await;
}

#[tokio::test]
async fn a_duplicated_export_writes_to_its_own_folder() {
    let t = two_tenants(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let original = admin
        .create_export(with_settings(
            data_out("acme", "lake", "Lake", "files", &[&customers("acme")]),
            &[("folder", "cdm/lake"), ("delimiter", ";")],
        ))
        .await
        .unwrap()
        .into_inner();
    run_ok(&mut admin, &original.name).await;
    let area = exports_root(&t).join("acme/files");
    let before = files_under(&area.join("cdm/lake"))
        .into_iter()
        .map(|f| (f.clone(), std::fs::read(area.join("cdm/lake").join(f)).unwrap()))
        .collect::<Vec<_>>();

    let copy = admin
        .duplicate_export(pb::DuplicateExportRequest {
            name: original.name.clone(),
            export_id: "lake-copy".into(),
            display_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(copy.settings.get("folder"), None, "the copy's folder is its export id");
    assert_eq!(copy.settings.get("delimiter").map(String::as_str), Some(";"));
    run_ok(&mut admin, &copy.name).await;
    assert_eq!(exported_keys(&area.join("lake-copy")).len(), 10);
    let after = files_under(&area.join("cdm/lake"))
        .into_iter()
        .map(|f| (f.clone(), std::fs::read(area.join("cdm/lake").join(f)).unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(after, before, "the original's folder is untouched by the copy");

    // A copy whose id is another export's folder is refused, naming that export.
    admin
        .create_export(with_settings(
            data_out("acme", "taken", "Taken", "files", &[&customers("acme")]),
            &[("folder", "dup")],
        ))
        .await
        .unwrap();
    let status = expect_code(
        admin
            .duplicate_export(pb::DuplicateExportRequest {
                name: original.name.clone(),
                export_id: "dup".into(),
                display_name: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["export_id"]);
    assert!(
        status.message().contains("environments/acme/exports/taken"),
        "{}",
        status.message()
    );
    assert_eq!(export_ids(&mut admin, "acme").await, vec!["lake", "lake-copy", "taken"]);
    t.stop().await;
}

#[tokio::test]
async fn test_connection_and_runs_create_nothing_outside_the_allowed_roots() {
    let t = TestServer::start().await;
    add_customers(&t, "acme").await;
    let data = t.data_dir.path().to_path_buf();
    let allowed = data.join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let elsewhere = data.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, allowed.join("link")).unwrap();
    let mut connections = t.connections("acme", Role::Admin).await;
    // Saved while the whole data dir was allowed.
    let old = data.join("old/deep");
    connections
        .create_connection(rooted("acme", "old", true, &old.display().to_string()))
        .await
        .unwrap();
    connections
        .create_connection(rooted(
            "acme",
            "linked",
            true,
            &allowed.join("link/x").display().to_string(),
        ))
        .await
        .unwrap();
    t.exports("acme", Role::Admin)
        .await
        .create_export(data_out("acme", "stale", "Stale", "old", &[&customers("acme")]))
        .await
        .unwrap();

    // The operator narrows the allowed roots.
    let t = restart_with(
        t,
        Options::default().var("EXPORTD_ALLOWED_ROOTS", allowed.display().to_string()),
    )
    .await;
    let mut contributor = t.connections("acme", Role::Contributor).await;
    let report = contributor
        .test_connection(pb::TestConnectionRequest {
            name: "environments/acme/connections/old".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!report.ok, "{report:?}");
    assert_eq!(report.checks.len(), 1, "{report:?}");
    assert_eq!(report.checks[0].name, "root_allowed");
    assert!(!data.join("old").exists(), "nothing was created");

    // A symbolic link inside an allowed root does not lead the test elsewhere.
    let report = contributor
        .test_connection(pb::TestConnectionRequest {
            name: "environments/acme/connections/linked".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!report.ok, "{report:?}");
    assert_eq!(
        report
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.ok))
            .collect::<Vec<_>>(),
        vec![("root_allowed", true), ("folder_exists", false)]
    );
    assert!(files_under(&elsewhere).is_empty() && !elsewhere.join("x").exists());

    // Nor does a run of an export over the connection that is no longer allowed.
    let mut admin = t.exports("acme", Role::Admin).await;
    let run = run_export(&mut admin, &export_name("acme", "stale")).await;
    let run = wait_for_end(&mut admin, &run.name).await;
    assert_eq!(run_state(&run), pb::RunState::Failed, "{run:#?}");
    let error = run.error.as_ref().unwrap();
    assert_eq!(run_error_reason(error), "OUTPUT_AREA_REFUSED");
    assert!(error.message.contains("allowed_roots"), "{}", error.message);
    assert!(!data.join("old").exists(), "nothing was created");
    t.stop().await;
}

#[tokio::test]
async fn run_messages_name_a_connections_folder_only_to_callers_who_may_see_it() {
    let t = two_tenants(Options::default()).await;
    let data = t.data_dir.path().to_path_buf();
    let hidden = data.join("hidden-root");
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(rooted("acme", "private", false, &hidden.display().to_string()))
        .await
        .unwrap();
    // A private root that cannot be created: a file is in the way.
    std::fs::write(data.join("hidden-file"), b"x").unwrap();
    connections
        .create_connection(rooted(
            "acme",
            "blocked",
            false,
            &data.join("hidden-file/sub").display().to_string(),
        ))
        .await
        .unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;
    for (id, connection) in [("secret", "private"), ("open", "files"), ("broken", "blocked")] {
        admin
            .create_export(data_out("acme", id, id, connection, &[&customers("acme")]))
            .await
            .unwrap();
    }
    let secret = run_ok(&mut admin, &export_name("acme", "secret")).await;
    let open = run_ok(&mut admin, &export_name("acme", "open")).await;
    let broken = run_export(&mut admin, &export_name("acme", "broken")).await;
    let broken = wait_for_end(&mut admin, &broken.name).await;
    assert_eq!(run_state(&broken), pb::RunState::Failed);

    let finalize = |run: &pb::ExportRun| {
        run.tasks
            .iter()
            .find(|task| task.name == "finalize")
            .unwrap()
            .message
            .clone()
    };
    // Admins read where the files are.
    assert!(
        finalize(&secret).contains(
            url::Url::from_file_path(hidden.join("secret/model.json"))
                .unwrap()
                .as_str()
        ),
        "{}",
        finalize(&secret)
    );
    let admin_error = broken.error.as_ref().unwrap().message.clone();
    assert!(admin_error.contains("hidden-file"), "{admin_error}");

    for role in [Role::Viewer, Role::Contributor] {
        let mut client = t.exports("acme", role).await;
        let mut seen = vec![
            get_run(&mut client, &secret.name).await,
            get_run(&mut client, &broken.name).await,
        ];
        seen.extend(watch_to_end(&mut client, &secret.name).await);
        seen.extend(
            client
                .list_export_runs(pb::ListExportRunsRequest {
                    parent: "environments/acme/exports/-".into(),
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .runs
                .into_iter()
                .filter(|r| r.name != open.name),
        );
        for exported in client
            .list_exports(pb::ListExportsRequest {
                parent: "environments/acme".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .exports
            .into_iter()
            .filter(|e| !e.name.ends_with("/open"))
        {
            seen.extend(exported.last_run);
        }
        for run in &seen {
            let text = format!("{run:?}");
            assert!(
                !text.contains("hidden-root") && !text.contains("hidden-file"),
                "{role:?} reads {text}"
            );
        }
        let message = finalize(&seen[0]);
        assert!(
            message.starts_with("committed ") && message.ends_with("; see secret/model.json"),
            "{message}"
        );
        assert!(
            seen[1]
                .error
                .as_ref()
                .unwrap()
                .message
                .contains("the connection's root"),
            "{:?}",
            seen[1].error
        );
        // A shared connection's location is theirs to read.
        let open_seen = get_run(&mut client, &open.name).await;
        assert_eq!(finalize(&open_seen), finalize(&open));
        assert!(finalize(&open_seen).contains(&exports_root(&t).display().to_string()));
    }
    t.stop().await;
}

#[tokio::test]
async fn settings_that_could_never_run_are_refused_when_saved() {
    let t = two_tenants(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let long = "x".repeat(256);
    let bad: Vec<(&str, &str)> = vec![
        ("folder", "."),
        ("folder", "./x"),
        ("folder", "x/./y"),
        ("folder", "x/../y"),
        ("folder", "a\nb"),
        ("folder", "a\\b"),
        ("folder", ""),
        ("folder", "/abs"),
        ("folder", &long),
        ("delimiter", "é"),
        ("delimiter", "；"),
        ("delimiter", "\""),
        ("delimiter", ";;"),
        ("delimiter", "\n"),
    ];
    for validate_only in [true, false] {
        for (key, value) in &bad {
            let mut request = with_settings(
                data_out("acme", "x", "X", "files", &[&customers("acme")]),
                &[(key, value)],
            );
            request.validate_only = validate_only;
            let status = expect_code(admin.create_export(request).await, Code::InvalidArgument);
            assert_eq!(
                bad_fields(&status),
                vec![format!("export.settings.{key}")],
                "{key}={value:?}"
            );
        }
    }
    assert!(export_ids(&mut admin, "acme").await.is_empty());
    let good = admin
        .create_export(with_settings(
            data_out("acme", "x", "X", "files", &[&customers("acme")]),
            &[("folder", "a/b"), ("delimiter", "\t")],
        ))
        .await
        .unwrap()
        .into_inner();
    // (In an update an empty value removes the setting.)
    for (key, value) in bad.iter().filter(|(_, value)| !value.is_empty()) {
        let status = expect_code(
            admin
                .update_export(pb::UpdateExportRequest {
                    export: Some(pb::Export {
                        name: good.name.clone(),
                        settings: [(key.to_string(), value.to_string())].into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&[&format!("settings.{key}")]),
                    validate_only: false,
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(
            bad_fields(&status),
            vec![format!("export.settings.{key}")],
            "{key}={value:?}"
        );
    }
    let unchanged = admin
        .get_export(pb::GetExportRequest {
            name: good.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged, good);
    t.stop().await;
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every folder and file under `dir` (itself included) with its mode.
#[cfg(unix)]
fn modes_under(dir: &Path) -> Vec<(String, u32)> {
    let mut out = vec![(".".to_string(), mode_of(dir))];
    for file in files_under(dir) {
        let mut path = dir.to_path_buf();
        for part in file.split('/') {
            path.push(part);
            let shown = path.strip_prefix(dir).unwrap().display().to_string();
            if !out.iter().any(|(p, _)| *p == shown) {
                out.push((shown, mode_of(&path)));
            }
        }
    }
    out
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_database_and_exported_files_are_private() {
    for (file_mode, folder_mode) in [(None, 0o700), (Some("0640"), 0o750)] {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let database_url = fresh_database_url(&data_dir).await;
        let mut options = Options::default();
        if let Some(mode) = file_mode {
            options = options.var("EXPORTD_EXPORT_FILE_MODE", mode);
        }
        let settings = settings_for(&data_dir, &database_url, &options);
        let t = serve(settings, dir, database_url, true).await;
        assert_eq!(mode_of(&data_dir), 0o700, "the data dir");
        if backend() == "sqlite" {
            assert_eq!(mode_of(&data_dir.join("exportd.db")), 0o600, "the database");
        }
        add_customers(&t, "acme").await;
        t.connections("acme", Role::Admin)
            .await
            .create_connection(local_files("acme", "files", "Files", false))
            .await
            .unwrap();
        let mut admin = t.exports("acme", Role::Admin).await;
        admin
            .create_export(data_out("acme", "lake", "Lake", "files", &[&customers("acme")]))
            .await
            .unwrap();
        run_ok(&mut admin, &export_name("acme", "lake")).await;
        let file_mode = file_mode.map_or(0o600, |m| u32::from_str_radix(m, 8).unwrap());
        let exports = data_dir.join("exports");
        let modes = modes_under(&exports);
        assert!(modes.len() > 6, "{modes:?}");
        for (path, mode) in &modes {
            let expected = if exports.join(path).is_dir() {
                folder_mode
            } else {
                file_mode
            };
            assert_eq!(*mode, expected, "{path}: {mode:o} in {modes:?}");
        }
        t.stop().await;
    }
}
