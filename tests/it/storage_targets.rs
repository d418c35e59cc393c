//! The storage conformance suite: the same test bodies run against every storage type on a real
//! server on loopback — local files, S3 (moto), Azure Blob (Azurite) and SFTP (OpenSSH) — through
//! the gRPC API,
//! and read back what the target holds with an independent client.

use std::collections::BTreeMap;

use exportd::auth::Role;
use exportd::pb;
use serde_json::{Value, json};

use crate::common::storage::SECRET_KEY;
use crate::common::*;

/// A CSV cell as the record's JSON value reads (strings raw, the rest as JSON text).
fn cell_value(cell: &str, expected: &Value) -> Value {
    match expected {
        Value::String(_) => Value::String(cell.to_string()),
        _ if cell.is_empty() => Value::Null,
        _ => serde_json::from_str(cell).unwrap_or_else(|_| Value::String(cell.to_string())),
    }
}

fn loose(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(items) => Value::Array(items.iter().map(loose).collect()),
        other => other.clone(),
    }
}

async fn run_to_end(exports: &mut Exports, export: &str) -> pb::ExportRun {
    let run = run_export(exports, export).await;
    wait_for_end(exports, &run.name).await
}

fn succeeded(run: &pb::ExportRun, kind: &str) {
    assert_eq!(run_state(run), pb::RunState::Succeeded, "{kind}: {:?}", run.error);
}

#[tokio::test]
async fn a_full_data_out_reads_back_row_for_row_on_every_storage_type() {
    let t = setup(Options::default()).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    for (i, storage) in Storage::all(&t).await.iter().enumerate() {
        let connection = format!("lake{i}");
        connections
            .create_connection(storage.connection(&connection))
            .await
            .unwrap();
        let id = format!("dump{i}");
        create_export(&mut exports, data_out("acme", &id, "Dump", &connection, &[CUSTOMERS])).await;
        let run = run_to_end(&mut exports, &export_name("acme", &id)).await;
        succeeded(&run, storage.kind);
        assert_eq!(run.records_exported, 10, "{}", storage.kind);
        assert!(run.bytes_written > 0);

        let (model, rows) = storage.read_folder(&id).await;
        assert_eq!(model["name"], json!(id));
        let customers = &rows["customers"];
        assert_eq!(customers.len(), 10, "{}", storage.kind);
        for expected in ten_customers() {
            let id = expected["id"].as_str().unwrap();
            let row = customers
                .iter()
                .find(|r| r["id"] == id)
                .expect("every record has its row");
            for (field, value) in expected.as_object().unwrap() {
                assert_eq!(
                    loose(&cell_value(&row[field], value)),
                    loose(value),
                    "{}: {id}.{field}",
                    storage.kind
                );
            }
        }
        // Only model.json and the partitions it lists remain: no temporary objects.
        let listed = storage.list().await;
        let mut expected = vec![format!("{id}/model.json")];
        for partition in model["entities"][0]["partitions"].as_array().unwrap() {
            let location = partition["location"].as_str().unwrap();
            expected.push(
                location
                    .strip_prefix(&storage.url_root)
                    .unwrap()
                    .trim_start_matches('/')
                    .to_string(),
            );
        }
        expected.sort();
        let in_folder: Vec<String> = listed
            .into_iter()
            .filter(|p| p.starts_with(&format!("{id}/")))
            .collect();
        assert_eq!(in_folder, expected, "{}", storage.kind);
    }
    t.stop().await;
}

#[tokio::test]
async fn segment_exports_incremental_changes_and_runs_in_one_minute_on_every_storage_type() {
    let t = setup(Options::default()).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let storages = Storage::all(&t).await;
    for (i, storage) in storages.iter().enumerate() {
        let connection = format!("lake{i}");
        connections
            .create_connection(storage.connection(&connection))
            .await
            .unwrap();

        // A segment export with mappings.
        let id = format!("vip{i}");
        create_export(
            &mut exports,
            segment_export(
                "acme",
                &id,
                "VIP",
                &connection,
                &[VIP],
                &[("id", "customer_id"), ("email", "mail")],
            ),
        )
        .await;
        let first = run_to_end(&mut exports, &export_name("acme", &id)).await;
        succeeded(&first, storage.kind);
        let (_, rows) = storage.read_folder(&id).await;
        let members = &rows["vip"];
        let segment = catalog
            .get_segment(pb::GetSegmentRequest { name: VIP.into() })
            .await
            .unwrap()
            .into_inner();
        assert!(segment.member_count > 0);
        assert_eq!(members.len() as i64, segment.member_count, "{}", storage.kind);
        assert!(
            members
                .iter()
                .all(|r| r.keys().cloned().collect::<Vec<_>>() == ["customer_id", "mail"])
        );

        // A second run in the same minute writes a folder of its own; the first run's files stay.
        let before = storage.list().await;
        let second = run_to_end(&mut exports, &export_name("acme", &id)).await;
        succeeded(&second, storage.kind);
        let after = storage.list().await;
        for path in before.iter().filter(|p| !p.ends_with("model.json")) {
            assert!(
                after.contains(path),
                "{}: {path} was removed or overwritten",
                storage.kind
            );
        }
        assert!(after.len() > before.len());

        // Incremental: the first run carries everything, the next only the changes.
        let inc = format!("inc{i}");
        let mut request = data_out("acme", &inc, "Changes", &connection, &[CUSTOMERS]);
        request.export.as_mut().unwrap().sync_mode = pb::SyncMode::Incremental as i32;
        create_export(&mut exports, request).await;
        succeeded(
            &run_to_end(&mut exports, &export_name("acme", &inc)).await,
            storage.kind,
        );
        let mut changed = ten_customers()[1].clone();
        changed["email"] = json!(format!("changed{i}@example.com"));
        write_all(&mut catalog, vec![write(CUSTOMERS, vec![changed], &["c02"])])
            .await
            .unwrap();
        let run = run_to_end(&mut exports, &export_name("acme", &inc)).await;
        succeeded(&run, storage.kind);
        let (_, rows) = storage.read_folder(&inc).await;
        let changes = &rows["customers"];
        assert_eq!(changes.len(), 2, "{}: {changes:?}", storage.kind);
        let updated = changes.iter().find(|r| r["id"] == "c01").unwrap();
        assert_eq!(updated["email"], format!("changed{i}@example.com"));
        assert_eq!(updated["_deleted"], "false");
        let deleted = changes.iter().find(|r| r["id"] == "c02").unwrap();
        assert_eq!(deleted["_deleted"], "true");
        // The record comes back for the next target's round (a deleted record also left the
        // segment, until its next refresh).
        write_all(
            &mut catalog,
            vec![write(CUSTOMERS, ten_customers()[1..3].to_vec(), &[])],
        )
        .await
        .unwrap();
    }
    t.stop().await;
}

#[tokio::test]
async fn connection_tests_say_which_step_failed_and_never_show_a_secret() {
    let t = setup(Options::default()).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let test = |name: String| pb::TestConnectionRequest { name };
    let mut cases = Vec::new();
    if let Some(storage) = Storage::s3().await {
        // Reachable with the right bucket: every step passes.
        cases.push((storage.connection("s3ok"), None));
        let mut missing = storage.connection("s3missing");
        missing
            .connection
            .as_mut()
            .unwrap()
            .config
            .insert("bucket".into(), "no-such-bucket".into());
        cases.push((missing, Some("bucket_exists")));
        let mut down = storage.connection("s3down");
        down.connection.as_mut().unwrap().config.insert(
            "endpoint".into(),
            format!("http://127.0.0.1:{}", crate::common::storage_servers::free_port()),
        );
        cases.push((down, Some("tcp_connect")));
        for (request, failed) in cases.drain(..) {
            let id = request.connection_id.clone();
            connections.create_connection(request).await.unwrap();
            let report = connections
                .test_connection(test(format!("environments/acme/connections/{id}")))
                .await
                .unwrap()
                .into_inner();
            let text = format!("{report:?}");
            assert!(!text.contains(SECRET_KEY), "{id}: a secret in {text}");
            match failed {
                None => {
                    assert!(report.ok, "{id}: {text}");
                    let tls = report.checks.iter().find(|c| c.name == "tls").expect("a tls check");
                    assert_eq!(tls.message, "tls: not used (the endpoint is plain http)", "{id}");
                }
                Some(step) => {
                    assert!(!report.ok, "{id}: {text}");
                    let failing: Vec<&str> = report
                        .checks
                        .iter()
                        .filter(|c| !c.ok)
                        .map(|c| c.name.as_str())
                        .collect();
                    assert_eq!(failing, vec![step], "{id}: {text}");
                }
            }
        }
        drop(storage);
    }
    if let Some(storage) = Storage::sftp().await {
        let mut pinned_wrong = storage.connection("sftpwrong");
        pinned_wrong.connection.as_mut().unwrap().config.insert(
            "host_key".into(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKxWsS9Kgp9TbfI9iQBLUqhaTRUrfeWnwHpFPfzuOYXT other".into(),
        );
        connections.create_connection(pinned_wrong).await.unwrap();
        let report = connections
            .test_connection(test("environments/acme/connections/sftpwrong".into()))
            .await
            .unwrap()
            .into_inner();
        let failing: Vec<&pb::ConnectionCheck> = report.checks.iter().filter(|c| !c.ok).collect();
        assert_eq!(failing.len(), 1, "{report:?}");
        assert_eq!(failing[0].name, "ssh_handshake", "{report:?}");
        assert_eq!(
            failing[0].message.matches("SHA256:").count(),
            2,
            "both fingerprints: {report:?}"
        );
        assert!(!format!("{report:?}").contains("PRIVATE KEY"), "{report:?}");
        // A private key that does not parse is refused when saved, naming the secret.
        let mut bad_key = storage.connection("sftpbadkey");
        bad_key.connection.as_mut().unwrap().secrets.insert(
            "private_key".into(),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n".into(),
        );
        let status = expect_code(
            connections.create_connection(bad_key).await,
            tonic::Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), vec!["connection.secrets.private_key".to_string()]);
    }
    if let Some(storage) = Storage::azure().await {
        let mut wrong = storage.connection("azwrong");
        wrong
            .connection
            .as_mut()
            .unwrap()
            .secrets
            .insert("account_key".into(), "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=".into());
        connections.create_connection(wrong).await.unwrap();
        let report = connections
            .test_connection(test("environments/acme/connections/azwrong".into()))
            .await
            .unwrap()
            .into_inner();
        assert!(!report.ok);
        let failing: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failing, vec!["authentication"], "{report:?}");
        assert!(
            !format!("{report:?}").contains("d3Jvbmcta2V5"),
            "no secret in {report:?}"
        );
        let mut missing = storage.connection("azmissing");
        missing
            .connection
            .as_mut()
            .unwrap()
            .config
            .insert("container".into(), "no-such-container".into());
        connections.create_connection(missing).await.unwrap();
        let report = connections
            .test_connection(test("environments/acme/connections/azmissing".into()))
            .await
            .unwrap()
            .into_inner();
        let failing: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failing, vec!["container_exists"], "{report:?}");
    }
    t.stop().await;
}

#[tokio::test]
async fn a_target_that_goes_away_fails_the_run_and_presents_nothing() {
    let t = setup(Options::default()).await;
    let Some(mut storage) = Storage::s3().await else {
        return;
    };
    let mut connections = t.connections("acme", Role::Admin).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    connections.create_connection(storage.connection("lake")).await.unwrap();
    create_export(&mut exports, data_out("acme", "dump", "Dump", "lake", &[CUSTOMERS])).await;
    storage._servers.0.as_mut().unwrap().stop();
    let run = run_to_end(&mut exports, &export_name("acme", "dump")).await;
    assert_eq!(run_state(&run), pb::RunState::Failed);
    let error = run.error.expect("a failed run says why").message;
    assert!(error.contains("127.0.0.1"), "the error names where it failed: {error}");
    assert!(!error.contains(SECRET_KEY), "{error}");
    // Bad configuration is refused when saved, naming the key, and nothing is stored.
    let mut bad = storage.connection("badbucket");
    bad.connection
        .as_mut()
        .unwrap()
        .config
        .insert("bucket".into(), "Not_A_Bucket".into());
    let status = expect_code(connections.create_connection(bad).await, tonic::Code::InvalidArgument);
    assert_eq!(bad_fields(&status), vec!["connection.config.bucket".to_string()]);
    t.stop().await;
}

#[tokio::test]
async fn parquet_partitions_read_back_typed_on_every_storage_type() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let t = setup(Options::default()).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    for (i, storage) in Storage::all(&t).await.iter().enumerate() {
        let connection = format!("lake{i}");
        connections
            .create_connection(storage.connection(&connection))
            .await
            .unwrap();
        let id = format!("pq{i}");
        let mut request = data_out("acme", &id, "Parquet", &connection, &[CUSTOMERS]);
        let settings = &mut request.export.as_mut().unwrap().settings;
        settings.insert("format".into(), "parquet".into());
        settings.insert("compression".into(), "zstd".into());
        settings.insert("max_rows_per_file".into(), "4".into());
        create_export(&mut exports, request).await;
        let run = run_to_end(&mut exports, &export_name("acme", &id)).await;
        succeeded(&run, storage.kind);

        let model: Value = serde_json::from_slice(&storage.read(&format!("{id}/model.json")).await).unwrap();
        assert_eq!(schema_errors(&model), Vec::<String>::new(), "{}", storage.kind);
        let partitions = model["entities"][0]["partitions"].as_array().unwrap();
        assert_eq!(partitions.len(), 3, "ten rows, four a file: {}", storage.kind);
        let mut rows = Vec::new();
        for partition in partitions {
            assert!(
                partition.get("fileFormatSettings").is_none(),
                "CSV settings only for CSV"
            );
            let location = partition["location"].as_str().unwrap();
            assert!(location.ends_with(".parquet"), "{location}");
            let bytes = bytes::Bytes::from(storage.read(location).await);
            let reader = SerializedFileReader::new(bytes).unwrap();
            for row in reader.get_row_iter(None).unwrap() {
                let row = row.unwrap();
                let fields: BTreeMap<String, Field> = row
                    .get_column_iter()
                    .map(|(name, field)| (name.clone(), field.clone()))
                    .collect();
                rows.push(fields);
            }
        }
        assert_eq!(rows.len(), 10, "{}", storage.kind);
        for expected in ten_customers() {
            let id = expected["id"].as_str().unwrap();
            let row = rows
                .iter()
                .find(|r| r["id"] == Field::Str(id.into()))
                .expect("every record has its row");
            assert_eq!(row["email"], Field::Str(expected["email"].as_str().unwrap().into()));
            assert_eq!(row["ltv"], Field::Double(expected["ltv"].as_f64().unwrap()));
            assert_eq!(row["vip"], Field::Bool(expected["vip"].as_bool().unwrap()));
            // JSON fields are their JSON text.
            let tags: Value = match &row["tags"] {
                Field::Str(text) => serde_json::from_str(text).unwrap(),
                other => panic!("tags is {other:?}"),
            };
            assert_eq!(tags, expected["tags"]);
        }
    }
    // A compression the format cannot have is refused when the export is saved.
    let mut request = data_out("acme", "badpq", "Bad", "lake0", &[CUSTOMERS]);
    let settings = &mut request.export.as_mut().unwrap().settings;
    settings.insert("format".into(), "parquet".into());
    settings.insert("compression".into(), "gzip".into());
    let status = expect_code(exports.create_export(request).await, tonic::Code::InvalidArgument);
    assert_eq!(bad_fields(&status), vec!["export.settings.compression".to_string()]);
    t.stop().await;
}

#[tokio::test]
async fn a_cancelled_run_leaves_nothing_at_the_target() {
    let t = setup(Options::default()).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    // Enough records in many small partitions (4,000 of 50 rows) that the run is still writing
    // when cancelled: progress is first reported half a second into a run, and 400 partitions
    // to local files could already be written by then on a quiet machine.
    let messages: Vec<_> = (0..4)
        .map(|m| {
            let rows = (0..50_000)
                .map(|i| json!({"id": format!("m{m}-{i:05}"), "email": format!("u{i}@example.com"), "ltv": i as f64}))
                .collect();
            write(CUSTOMERS, rows, &[])
        })
        .collect();
    write_all(&mut catalog, messages).await.unwrap();
    let mut connections = t.connections("acme", Role::Admin).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    for (i, storage) in Storage::all(&t).await.iter().enumerate() {
        let connection = format!("lake{i}");
        connections
            .create_connection(storage.connection(&connection))
            .await
            .unwrap();
        let id = format!("big{i}");
        let mut request = data_out("acme", &id, "Big", &connection, &[CUSTOMERS]);
        request
            .export
            .as_mut()
            .unwrap()
            .settings
            .insert("max_rows_per_file".into(), "50".into());
        create_export(&mut exports, request).await;
        let run = run_export(&mut exports, &export_name("acme", &id)).await;
        // Cancel once partitions are being written.
        let writing = wait_for_run(&mut exports, &run.name, |r| is_terminal(r) || r.records_exported > 0).await;
        assert!(
            !is_terminal(&writing),
            "{}: the run ended before it could be cancelled",
            storage.kind
        );
        exports
            .cancel_export_run(pb::CancelExportRunRequest { name: run.name.clone() })
            .await
            .unwrap();
        let ended = wait_for_end(&mut exports, &run.name).await;
        assert_eq!(run_state(&ended), pb::RunState::Cancelled, "{}", storage.kind);
        let left: Vec<String> = storage
            .list()
            .await
            .into_iter()
            .filter(|p| p.starts_with(&format!("{id}/")))
            .collect();
        assert!(left.is_empty(), "{}: a cancelled run left {left:?}", storage.kind);
    }
    t.stop().await;
}

/// A target that starts answering 500 mid-run (after a few partitions went up) fails the run
/// with the target's answer and where it came from; the partitions already written are
/// removed and no `model.json` appears. Object stores only: SFTP has no HTTP to fail (its lost
/// connections are the SFTP suite's).
#[tokio::test]
async fn a_target_that_fails_mid_run_fails_the_run_and_removes_what_it_wrote() {
    let t = setup(Options::default()).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let mut storages = Vec::new();
    storages.extend(Storage::s3().await);
    storages.extend(Storage::azure().await);
    for (i, storage) in storages.iter().enumerate() {
        let proxy = crate::common::failing_proxy::FailingProxy::start(&storage.config["endpoint"], 3).await;
        let mut request = storage.connection(&format!("flaky{i}"));
        let connection = request.connection.as_mut().unwrap();
        connection.config.insert("endpoint".into(), proxy.endpoint.clone());
        connections.create_connection(request).await.unwrap();
        let id = format!("flaky{i}");
        let mut export = data_out("acme", &id, "Flaky", &format!("flaky{i}"), &[CUSTOMERS]);
        let settings = &mut export.export.as_mut().unwrap().settings;
        settings.insert("max_rows_per_file".into(), "1".into());
        create_export(&mut exports, export).await;

        let run = run_to_end(&mut exports, &export_name("acme", &id)).await;
        assert_eq!(run_state(&run), pb::RunState::Failed, "{}", storage.kind);
        let error = run.error.expect("a failed run says why").message;
        assert!(
            error.contains("500"),
            "{}: the error says what the target answered: {error}",
            storage.kind
        );
        assert!(error.contains("127.0.0.1"), "{}: and where: {error}", storage.kind);
        assert!(
            proxy.refused() >= 1,
            "{}: the failure came from the proxy",
            storage.kind
        );
        let left: Vec<String> = storage
            .list()
            .await
            .into_iter()
            .filter(|path| path.starts_with(&format!("{id}/")))
            .collect();
        assert_eq!(
            left,
            Vec::<String>::new(),
            "{}: the partitions written are removed",
            storage.kind
        );
    }
    assert!(
        !storages.is_empty() || std::env::var("CI").is_err(),
        "moto and Azurite are required under CI"
    );
    t.stop().await;
}
