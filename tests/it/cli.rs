//! The command line as an operator uses it, against the same database as a running server.

use exportd::pb;
use tonic::Code;

use crate::common::*;

async fn client(addr: &str, token: &str) -> Connections {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::connection_service_client::ConnectionServiceClient::new(tonic::service::interceptor::InterceptedService::new(
        channel,
        Bearer(Some(token.to_string())),
    ))
}

#[tokio::test]
async fn dev_server_tokens_and_environments_work_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = [("EXPORTD_DATABASE_URL", database_url.as_str())];
    let data_dir = dir.path().to_str().unwrap();
    let server = ServeProcess::start(dir.path(), &["--dev"], &envs);
    let dev_token = server.token.clone().expect("dev mode prints an admin token");

    // The printed token is an admin of `demo`.
    let mut demo = client(&server.addr, &dev_token).await;
    demo.create_connection(local_files("demo", "files", "Files", false))
        .await
        .unwrap();

    // `environment create` works while the server runs, and `token` mints usable tokens.
    let (code, out, err) = run(
        &[
            "environment",
            "create",
            "shop",
            "--kind",
            "b2b",
            "--display-name",
            "Shop",
            "--data-dir",
            data_dir,
        ],
        &envs,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("environments/shop"), "{out}");
    let (code, _, err) = run(
        &["environment", "create", "shop", "--kind", "b2b", "--data-dir", data_dir],
        &envs,
    );
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    let (code, out, err) = run(
        &[
            "token",
            "--env",
            "shop=contributor",
            "--env",
            "demo=viewer",
            "--sub",
            "bob",
            "--ttl",
            "15m",
            "--data-dir",
            data_dir,
        ],
        &envs,
    );
    assert_eq!(code, 0, "{err}");
    let token = out.lines().last().unwrap().to_string();
    let mut bob = client(&server.addr, &token).await;
    let status = bob
        .create_connection(local_files("shop", "x", "X", false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let listed = bob
        .list_connections(pb::ListConnectionsRequest {
            parent: "environments/shop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 0);

    let (code, out, _) = run(&["environment", "list", "--data-dir", data_dir], &envs);
    assert_eq!(code, 0);
    assert!(
        out.contains("demo") && out.contains("shop") && out.contains("BUSINESS_ACCOUNTS"),
        "{out}"
    );
    let (code, out, err) = run(
        &[
            "environment",
            "update",
            "shop",
            "--system-refresh-cron",
            "0 3 * * *",
            "--time-zone",
            "Asia/Jakarta",
            "--data-dir",
            data_dir,
        ],
        &envs,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("next system refresh at"), "{out}");
    let (code, _, err) = run(
        &[
            "environment",
            "update",
            "shop",
            "--system-refresh-cron",
            "0 3 * *",
            "--time-zone",
            "Asia/Jakarta",
            "--data-dir",
            data_dir,
        ],
        &envs,
    );
    assert_ne!(code, 0);
    assert!(err.contains("cron.expression"), "{err}");

    // Bad arguments are refused with a reason.
    let (code, _, err) = run(&["token", "--env", "shop=owner", "--data-dir", data_dir], &envs);
    assert_ne!(code, 0);
    assert!(err.contains("role must be"), "{err}");

    // SIGTERM stops the server cleanly.
    server.signal("TERM");
    assert_eq!(server.wait(), Some(0));
}

#[tokio::test]
async fn secrets_never_reach_responses_logs_or_the_database() {
    const SECRET: &str = "Zq9-very-secret-password-7Xw";
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = [
        ("EXPORTD_DATABASE_URL", database_url.as_str()),
        ("EXPORTD_LOG_FILTER", "debug"),
        ("EXPORTD_LOG_FORMAT", "json"),
    ];
    let server = ServeProcess::start(dir.path(), &["--dev"], &envs);
    let mut admin = client(&server.addr, server.token.as_ref().unwrap()).await;
    let request = pb::CreateConnectionRequest {
        parent: "environments/demo".into(),
        connection_id: "box".into(),
        connection: Some(pb::Connection {
            display_name: "SFTP box".into(),
            r#type: "sftp".into(),
            config: [
                ("host".to_string(), "127.0.0.1".to_string()),
                ("username".to_string(), "u".to_string()),
                (
                    "host_key".to_string(),
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKxWsS9Kgp9TbfI9iQBLUqhaTRUrfeWnwHpFPfzuOYXT box".to_string(),
                ),
            ]
            .into(),
            secrets: [("password".to_string(), SECRET.to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = admin.create_connection(request.clone()).await.unwrap().into_inner();
    let mut responses = format!("{created:?}");
    // Errors that echo the request must not echo the secret either.
    let mut bad = request.clone();
    bad.connection.as_mut().unwrap().config.remove("host");
    responses.push_str(&format!("{:?}", admin.create_connection(bad).await.unwrap_err()));
    let got = admin
        .get_connection(pb::GetConnectionRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    responses.push_str(&format!("{got:?}"));
    let tested = admin
        .test_connection(pb::TestConnectionRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    responses.push_str(&format!("{tested:?}"));
    let updated = admin
        .update_connection(pb::UpdateConnectionRequest {
            connection: Some(pb::Connection {
                name: created.name.clone(),
                secrets: [("password".to_string(), format!("{SECRET}-2"))].into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["secrets".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    responses.push_str(&format!("{updated:?}"));
    assert!(!responses.contains(SECRET), "a response carried the secret");
    assert_eq!(got.secret_keys, vec!["password"]);

    server.signal("TERM");
    let logs = server.logs();
    assert!(logs.contains("connection created"), "logs were captured: {logs}");
    assert!(!logs.contains(SECRET), "the logs carried the secret");

    // The database holds only sealed bytes.
    if database_url.starts_with("sqlite") {
        for file in ["exportd.db", "exportd.db-wal"] {
            let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "{file} holds the secret"
            );
        }
    } else {
        use sea_orm::{ConnectionTrait, Database, Statement};
        let db = Database::connect(&database_url).await.unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT * FROM connections".to_string(),
            ))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        let dump = format!("{rows:?}");
        assert!(!dump.contains(SECRET), "the connections table holds the secret");
        db.close().await.unwrap();
    }
}

#[tokio::test]
async fn run_export_starts_a_run_and_follows_it_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = [("EXPORTD_DATABASE_URL", database_url.as_str())];
    let data_dir = dir.path().to_str().unwrap();
    let server = ServeProcess::start(dir.path(), &["--dev"], &envs);
    let token = server.token.clone().unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let authed = tonic::service::interceptor::InterceptedService::new(channel, Bearer(Some(token.clone())));
    let mut catalog = pb::catalog_service_client::CatalogServiceClient::new(authed.clone());
    let mut exports = pb::export_service_client::ExportServiceClient::new(authed);
    let mut connections = client(&server.addr, &token).await;
    catalog
        .create_entity(crate::common::customers_entity(
            "demo",
            "customers",
            pb::EntityKind::Profile,
        ))
        .await
        .unwrap();
    catalog
        .write_records(tokio_stream::iter(vec![crate::common::write(
            "environments/demo/entities/customers",
            crate::common::ten_customers(),
            &[],
        )]))
        .await
        .unwrap();
    connections
        .create_connection(local_files("demo", "files", "Files", false))
        .await
        .unwrap();
    let database = pb::CreateConnectionRequest {
        parent: "environments/demo".into(),
        connection_id: "hook".into(),
        connection: Some(pb::Connection {
            display_name: "Database".into(),
            r#type: "postgres".into(),
            secrets: [("url".to_string(), "postgres://user:pw@127.0.0.1:9/none".to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    connections.create_connection(database).await.unwrap();
    for (id, connection) in [("lake", "files"), ("hooked", "hook")] {
        exports
            .create_export(crate::common::data_out(
                "demo",
                id,
                id,
                connection,
                &["environments/demo/entities/customers"],
            ))
            .await
            .unwrap();
    }

    // The token comes from EXPORTD_TOKEN; the exit code says whether the run succeeded.
    let with_token = [
        ("EXPORTD_DATABASE_URL", database_url.as_str()),
        ("EXPORTD_TOKEN", token.as_str()),
    ];
    let (code, out, err) = run(
        &[
            "run-export",
            "environments/demo/exports/lake",
            "--watch",
            "--server",
            &server.addr,
            "--data-dir",
            data_dir,
        ],
        &with_token,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCEEDED: 10 records"), "{out}");
    // The run as accepted comes first; the run may end before the watch begins, so what
    // follows is at least its end.
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 2, "progress is shown while it waits: {err}");
    assert!(lines[0].starts_with("QUEUED"), "{err}");
    assert!(lines[lines.len() - 1].starts_with("SUCCEEDED"), "{err}");
    let (code, out, _) = run(
        &[
            "run-export",
            "environments/demo/exports/hooked",
            "--watch",
            "--server",
            &server.addr,
            "--data-dir",
            data_dir,
        ],
        &with_token,
    );
    assert_ne!(code, 0);
    // Nothing listens at the database's port: the run fails once its retries are used up.
    assert!(out.contains("FAILED") && out.contains("cannot connect"), "{out}");
    // A wrong name is refused by the server, with its reason.
    let (code, _, err) = run(
        &[
            "run-export",
            "environments/demo/exports/nope",
            "--server",
            &server.addr,
            "--data-dir",
            data_dir,
        ],
        &with_token,
    );
    assert_ne!(code, 0);
    assert!(err.contains("NotFound"), "{err}");
    server.signal("TERM");
    assert_eq!(server.wait(), Some(0));
}

/// Run from a folder without a data dir, `environment` commands refuse instead of creating a
/// database that no server uses; they say where they looked and how to point them elsewhere.
/// `migrate` creates one, and the commands that change something say which database.
#[tokio::test]
async fn environment_commands_never_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let expected = std::fs::canonicalize(dir.path())
        .unwrap()
        .join("exportd-data")
        .join("exportd.db");
    for args in [
        &["environment", "list"][..],
        &["environment", "create", "shop", "--kind", "b2b"],
        &["environment", "update", "shop", "--display-name", "Shop"],
    ] {
        let (code, out, err) = run_in(dir.path(), args, &[]);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(
            err.contains(&expected.display().to_string()),
            "{args:?} names the path: {err}"
        );
        assert!(
            err.contains("--data-dir"),
            "{args:?} says how to point elsewhere: {err}"
        );
        assert!(
            crate::common::files_under(dir.path()).is_empty(),
            "{args:?} created nothing"
        );
        assert!(
            !dir.path().join("exportd-data").exists(),
            "{args:?} created no data dir"
        );
    }
    let (code, out, err) = run_in(dir.path(), &["migrate"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&expected.display().to_string()), "{out}");
    let (code, out, err) = run_in(dir.path(), &["environment", "create", "shop", "--kind", "b2b"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!(
            "created environments/shop (BUSINESS_ACCOUNTS) in {}",
            expected.display()
        )
    );
    let (code, out, err) = run_in(
        dir.path(),
        &["environment", "update", "shop", "--display-name", "Shop"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("in {}", expected.display())), "{out}");
}

/// The arguments of a `--help` page without a description, e.g. `<ID>` alone on its line.
fn undocumented(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut missing = Vec::new();
    let mut in_list = false;
    for (i, line) in lines.iter().enumerate() {
        if matches!(*line, "Arguments:" | "Options:") {
            in_list = true;
            continue;
        }
        if !line.starts_with(' ') {
            in_list = false;
        }
        let entry = line.trim_start();
        let is_entry = line.starts_with("  ") && (entry.starts_with('-') || entry.starts_with('<'));
        if !in_list || !is_entry || line.starts_with("        ") {
            continue;
        }
        // `  <ID>  Text` or `      --kind <KIND>  Text`, or the text on the next, deeper line.
        let same_line = entry.split_once("  ").is_some_and(|(_, text)| !text.trim().is_empty());
        let next_line = lines
            .get(i + 1)
            .is_some_and(|next| next.starts_with("          ") && !next.trim().is_empty());
        if !same_line && !next_line {
            missing.push(entry.to_string());
        }
    }
    missing
}

#[test]
fn every_argument_of_every_command_has_a_help_text() {
    let commands: [&[&str]; 9] = [
        &[],
        &["serve"],
        &["migrate"],
        &["token"],
        &["environment"],
        &["environment", "create"],
        &["environment", "list"],
        &["environment", "update"],
        &["run-export"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let (code, help, err) = run(&args, &[]);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(help.contains("Options:"), "{args:?}: {help}");
        assert_eq!(undocumented(&help), Vec::<String>::new(), "{args:?}:\n{help}");
    }
}

/// What an operator reads back: schedules in words (a cron's zone defaults to UTC), a refused
/// zero lifetime, and `run-export` that finds the server through EXPORTD_SERVER or the
/// configuration's `listen`, and says why when nothing answers.
#[tokio::test]
async fn operator_commands_read_as_words_and_find_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = [("EXPORTD_DATABASE_URL", database_url.as_str())];
    let data_dir = dir.path().to_str().unwrap();
    let server = ServeProcess::start(dir.path(), &["--dev"], &envs);
    let token = server.token.clone().unwrap();

    let (code, out, err) = run(
        &[
            "environment",
            "update",
            "demo",
            "--system-refresh-cron",
            "0 3 * * *",
            "--data-dir",
            data_dir,
        ],
        &envs,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("next system refresh at"), "{out}");
    let (_, out, _) = run(&["environment", "list", "--data-dir", data_dir], &envs);
    assert!(out.contains("cron '0 3 * * *' (UTC)"), "{out}");

    // A recurrence set through the API reads as one.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut catalog = pb::catalog_service_client::CatalogServiceClient::new(
        tonic::service::interceptor::InterceptedService::new(channel, Bearer(Some(token.clone()))),
    );
    catalog
        .update_environment(pb::UpdateEnvironmentRequest {
            environment: Some(pb::Environment {
                name: "environments/demo".into(),
                system_refresh_schedule: Some(pb::Schedule {
                    enabled: true,
                    trigger: Some(pb::schedule::Trigger::Recurrence(pb::Recurrence {
                        frequency: pb::Frequency::Weekly as i32,
                        interval: 2,
                        days_of_week: vec![
                            pb::google::r#type::DayOfWeek::Monday as i32,
                            pb::google::r#type::DayOfWeek::Thursday as i32,
                        ],
                        time_of_day: "06:30".into(),
                        time_zone: "Europe/Paris".into(),
                        ..Default::default()
                    })),
                    next_run_time: None,
                }),
                ..Default::default()
            }),
            update_mask: crate::common::mask(&["system_refresh_schedule"]),
        })
        .await
        .unwrap();
    let (_, out, _) = run(&["environment", "list", "--data-dir", data_dir], &envs);
    assert!(
        out.contains("every 2 weeks on Monday and Thursday at 06:30 (Europe/Paris)"),
        "{out}"
    );

    let (code, _, err) = run(
        &["token", "--env", "demo=admin", "--ttl", "0s", "--data-dir", data_dir],
        &envs,
    );
    assert_ne!(code, 0);
    assert!(err.contains("must be positive"), "{err}");

    // Nothing listens on port 1 of this machine: the cause is named.
    let export = "environments/demo/exports/none";
    let (code, _, err) = run(
        &["run-export", export, "--server", "127.0.0.1:1", "--data-dir", data_dir],
        &envs,
    );
    assert_ne!(code, 0);
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    let (code, _, err) = run(
        &[
            "run-export",
            export,
            "--server",
            "nowhere.invalid:50051",
            "--data-dir",
            data_dir,
        ],
        &envs,
    );
    assert_ne!(code, 0);
    assert!(err.contains("dns error"), "{err}");
    // The server from EXPORTD_SERVER, then from the configuration's `listen`: both reach it
    // (the export does not exist, which only the server can say).
    let with_server = [
        ("EXPORTD_DATABASE_URL", database_url.as_str()),
        ("EXPORTD_SERVER", server.addr.as_str()),
    ];
    let (code, _, err) = run(&["run-export", export, "--data-dir", data_dir], &with_server);
    assert_ne!(code, 0);
    assert!(err.contains("NotFound"), "{err}");
    let config = dir.path().join("client.toml");
    std::fs::write(&config, format!("listen = \"{}\"\n", server.addr)).unwrap();
    let (code, _, err) = run(
        &[
            "run-export",
            export,
            "--data-dir",
            data_dir,
            "--config",
            config.to_str().unwrap(),
        ],
        &envs,
    );
    assert_ne!(code, 0);
    assert!(err.contains("NotFound"), "{err}");
    server.signal("TERM");
    assert_eq!(server.wait(), Some(0));
}

/// The log line of a failed RPC says why it failed, and latencies read as numbers people
/// write (at most two decimals), not float noise.
#[tokio::test]
async fn a_failed_rpcs_log_line_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = [
        ("EXPORTD_DATABASE_URL", database_url.as_str()),
        ("EXPORTD_LOG_FORMAT", "json"),
    ];
    let server = ServeProcess::start(dir.path(), &["--dev"], &envs);
    let mut admin = client(&server.addr, server.token.as_ref().unwrap()).await;
    let status = admin
        .get_connection(pb::GetConnectionRequest {
            name: "environments/demo/connections/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    admin
        .list_connections(pb::ListConnectionsRequest {
            parent: "environments/demo".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    server.signal("TERM");
    let log_path = server.log_path.clone();
    assert_eq!(server.wait(), Some(0));
    let logs = std::fs::read_to_string(log_path).unwrap();
    let rpc_lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "rpc")
        .collect();
    let failed = rpc_lines
        .iter()
        .find(|line| line["fields"]["grpc_code"] == "NotFound")
        .unwrap_or_else(|| panic!("a log line for the failed RPC: {logs}"));
    assert_eq!(failed["fields"]["error"], status.message(), "{failed}");
    assert!(
        rpc_lines
            .iter()
            .any(|line| line["fields"]["grpc_code"] == "Ok" && line["fields"].get("error").is_none()),
        "{logs}"
    );
    for line in logs.lines().filter(|l| l.contains("\"elapsed_ms\":")) {
        let number: String = line
            .split("\"elapsed_ms\":")
            .nth(1)
            .unwrap()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let decimals = number.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 2, "elapsed_ms {number} in {line}");
    }
}
