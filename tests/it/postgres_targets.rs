//! The `postgres` target through the gRPC API, against the PostgreSQL server of the suite: a
//! fresh database per test, read back with SQL (CONNECTORS.md "Wire details": `postgres`;
//! PRODUCT.md §11 and §12).

use exportd::auth::Role;
use exportd::pb;
use serde_json::{Value, json};
use tonic::Code;

use crate::common::postgres_target::{InterruptingProxy, Interruption, RefusingPostgres, TargetDb};
use crate::common::*;

const PEOPLE: &str = "environments/acme/entities/web-people";

fn postgres(id: &str, url: &str, config: &[(&str, &str)]) -> pb::CreateConnectionRequest {
    connection("acme", id, "Warehouse", "postgres", config, &[("url", url)], true)
}

fn with_settings(mut request: pb::CreateExportRequest, settings: &[(&str, &str)]) -> pb::CreateExportRequest {
    request.export.as_mut().unwrap().settings = pairs(settings);
    request
}

fn incremental(mut request: pb::CreateExportRequest) -> pb::CreateExportRequest {
    request.export.as_mut().unwrap().sync_mode = pb::SyncMode::Incremental as i32;
    request
}

async fn run_to_end(exports: &mut Exports, export: &str) -> pb::ExportRun {
    let run = run_export(exports, export).await;
    wait_for_end(exports, &run.name).await
}

async fn succeeded(exports: &mut Exports, export: &str) -> pb::ExportRun {
    let run = run_to_end(exports, export).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:#?}", run.error);
    run
}

/// acme (customers, vip) and a `pg` connection to `db`.
async fn server_with(db: &TargetDb, config: &[(&str, &str)]) -> TestServer {
    let t = setup(Options::default()).await;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(postgres("pg", &db.url, config))
        .await
        .unwrap();
    t
}

/// The entity `web-people` with a field of every type, and three records whose text needs
/// every escape COPY has.
async fn people(t: &TestServer) -> Vec<Value> {
    let mut catalog = t.catalog("acme", Role::Admin).await;
    catalog
        .create_entity(pb::CreateEntityRequest {
            parent: ACME.into(),
            entity_id: "web-people".into(),
            entity: Some(pb::Entity {
                display_name: "Web people".into(),
                kind: pb::EntityKind::Profile as i32,
                fields: vec![
                    field("id", pb::FieldType::String),
                    field("name", pb::FieldType::String),
                    field("visits", pb::FieldType::Int64),
                    field("score", pb::FieldType::Double),
                    field("active", pb::FieldType::Bool),
                    field("seen", pb::FieldType::Timestamp),
                    field("born", pb::FieldType::Date),
                    field("doc", pb::FieldType::Json),
                ],
                primary_key: "id".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let records = vec![
        json!({"id": "p1", "name": "tab\there, new\nline, back\\slash, \"quotes\", 'single', comma, 🎉",
               "visits": 9007199254740993i64.to_string(), "score": 1.5, "active": true,
               "seen": "2026-01-31T12:00:00Z", "born": "1990-05-17",
               "doc": {"k": "v\\w\n", "list": [1, "two", null]}}),
        json!({"id": "p2", "name": "\\N is not null", "visits": -3, "score": -0.25, "active": false,
               "seen": "2026-06-01T08:30:00+02:00", "born": "2000-02-29", "doc": "just a string"}),
        json!({"id": "p3"}),
    ];
    write_all(&mut catalog, vec![write(PEOPLE, records, &[])])
        .await
        .unwrap();
    // row_to_json of what the table must hold.
    vec![
        json!({"id": "p1", "name": "tab\there, new\nline, back\\slash, \"quotes\", 'single', comma, 🎉",
               "visits": 9007199254740993i64, "score": 1.5, "active": true,
               "seen": "2026-01-31T12:00:00+00:00", "born": "1990-05-17",
               "doc": {"k": "v\\w\n", "list": [1, "two", null]}}),
        json!({"id": "p2", "name": "\\N is not null", "visits": -3, "score": -0.25, "active": false,
               "seen": "2026-06-01T06:30:00+00:00", "born": "2000-02-29", "doc": "just a string"}),
        json!({"id": "p3", "name": null, "visits": null, "score": null, "active": null, "seen": null,
               "born": null, "doc": null}),
    ]
}

fn typed_columns() -> Vec<(String, String)> {
    [
        ("id", "text"),
        ("name", "text"),
        ("visits", "bigint"),
        ("score", "double precision"),
        ("active", "boolean"),
        ("seen", "timestamp with time zone"),
        ("born", "date"),
        ("doc", "jsonb"),
    ]
    .iter()
    .map(|(c, t)| (c.to_string(), t.to_string()))
    .collect()
}

/// A value as `row_to_json` writes it: a whole `double precision` without a fraction (`200`,
/// not `200.0`).
fn as_row_json(value: Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() && n.as_f64().unwrap().fract() == 0.0 => json!(n.as_f64().unwrap() as i64),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, as_row_json(v))).collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(as_row_json).collect()),
        other => other,
    }
}

/// The customers as the table must hold them (row_to_json), in key order.
fn customer_rows(customers: &[Value]) -> Vec<Value> {
    let mut rows: Vec<Value> = customers.iter().cloned().map(as_row_json).collect();
    rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    rows
}

#[tokio::test]
async fn replace_and_upsert_write_typed_tables_row_for_row() {
    let mut db = TargetDb::create().await;
    // Over TLS (the suite's server has a self-signed certificate, which `require` accepts).
    db.url.push_str("?sslmode=require");
    let t = server_with(&db, &[("table_prefix", "crm_")]).await;
    let expected = people(&t).await;
    let mut exports = t.exports("acme", Role::Admin).await;

    // replace (the default), the table named after the entity id with `-` as `_`.
    create_export(&mut exports, data_out("acme", "load", "Load", "pg", &[PEOPLE])).await;
    let run = succeeded(&mut exports, &export_name("acme", "load")).await;
    assert_eq!((run.records_exported, run.records_rejected), (3, 0));
    let finalize = run.tasks.iter().find(|t| t.name == "finalize").unwrap();
    assert_eq!(finalize.message, "delivered 3 rows to public.crm_web_people");
    assert_eq!(db.columns("crm_web_people").await, typed_columns());
    assert_eq!(db.primary_key("crm_web_people").await, ["id"]);
    assert_eq!(db.rows("crm_web_people", "id").await, expected);

    // upsert into a table named by the export (with the prefix), created since it is missing.
    create_export(
        &mut exports,
        with_settings(
            data_out("acme", "merge", "Merge", "pg", &[PEOPLE]),
            &[("mode", "upsert"), ("table", "people")],
        ),
    )
    .await;
    succeeded(&mut exports, &export_name("acme", "merge")).await;
    assert_eq!(db.columns("crm_people").await, typed_columns());
    assert_eq!(db.primary_key("crm_people").await, ["id"]);
    assert_eq!(db.rows("crm_people", "id").await, expected);
    // A second run changes nothing: upserts of the same rows.
    succeeded(&mut exports, &export_name("acme", "merge")).await;
    assert_eq!(db.rows("crm_people", "id").await, expected);

    // A segment export writes the mapped target fields, typed from the source fields.
    create_export(
        &mut exports,
        segment_export(
            "acme",
            "vips",
            "VIPs",
            "pg",
            &[VIP],
            &[("id", "customer_id"), ("ltv", "value"), ("vip", "is_vip")],
        ),
    )
    .await;
    succeeded(&mut exports, &export_name("acme", "vips")).await;
    assert_eq!(
        db.columns("crm_vip").await,
        [
            ("customer_id".to_string(), "text".to_string()),
            ("value".into(), "double precision".into()),
            ("is_vip".into(), "boolean".into())
        ]
    );
    assert_eq!(db.primary_key("crm_vip").await, ["customer_id"]);
    let vips: Vec<Value> = (0..10)
        .step_by(2)
        .map(|i| json!({"customer_id": format!("c{i:02}"), "value": i * 100, "is_vip": true}))
        .collect();
    assert_eq!(db.rows("crm_vip", "customer_id").await, vips);
    // No staging table is left behind.
    assert_eq!(db.tables().await, ["crm_people", "crm_vip", "crm_web_people"]);
    t.stop().await;
    db.drop().await;
}

#[tokio::test]
async fn incremental_runs_after_updates_and_deletes_leave_tables_equal_to_the_entity() {
    let mut db = TargetDb::create().await;
    let t = server_with(&db, &[]).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    for (id, mode) in [("merged", "upsert"), ("replaced", "replace")] {
        create_export(
            &mut exports,
            incremental(with_settings(
                data_out("acme", id, id, "pg", &[CUSTOMERS]),
                &[("mode", mode), ("table", id)],
            )),
        )
        .await;
        let first = succeeded(&mut exports, &export_name("acme", id)).await;
        assert_eq!(first.records_exported, 10, "{id}");
    }
    assert_eq!(db.rows("merged", "id").await, customer_rows(&ten_customers()));

    // c04 changes, c05 goes, c10 arrives.
    let mut customers = ten_customers();
    customers[4]["country"] = json!("DE");
    customers[4]["tags"] = json!({"moved": true});
    let c10 = json!({"id": "c10", "email": "new@example.com", "country": "SG", "ltv": 1.25, "vip": false, "tags": []});
    let mut catalog = t.catalog("acme", Role::Admin).await;
    write_all(
        &mut catalog,
        vec![write(CUSTOMERS, vec![customers[4].clone(), c10.clone()], &["c05"])],
    )
    .await
    .unwrap();
    customers.remove(5);
    customers.push(c10);
    for id in ["merged", "replaced"] {
        let run = succeeded(&mut exports, &export_name("acme", id)).await;
        assert_eq!((run.records_exported, run.records_removed), (2, 1), "{id}");
        assert_eq!(db.rows(id, "id").await, customer_rows(&customers), "{id}");
    }
    t.stop().await;
    db.drop().await;
}

#[tokio::test]
async fn an_incremental_segment_upsert_deletes_the_rows_of_members_who_left() {
    let mut db = TargetDb::create().await;
    let t = server_with(&db, &[]).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let picked = create_pushed_segment(&mut catalog, "acme", "picked", "customers", "Picked").await;
    let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    set_members(&mut catalog, &picked.name, vec![keys(&["c01", "c02", "c03"])])
        .await
        .unwrap();
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(
        &mut exports,
        incremental(with_settings(
            segment_export(
                "acme",
                "picks",
                "Picks",
                "pg",
                &[&picked.name],
                &[("id", "id"), ("email", "mail")],
            ),
            &[("mode", "upsert")],
        )),
    )
    .await;
    let export = export_name("acme", "picks");
    succeeded(&mut exports, &export).await;
    assert_eq!(ids(&db.rows("picked", "id").await), ["c01", "c02", "c03"]);

    // c01 leaves, c06 joins.
    set_members(&mut catalog, &picked.name, vec![keys(&["c02", "c03", "c06"])])
        .await
        .unwrap();
    let run = succeeded(&mut exports, &export).await;
    assert_eq!((run.records_exported, run.records_removed), (1, 1));
    assert_eq!(
        db.rows("picked", "id").await,
        [2, 3, 6]
            .iter()
            .map(|i| json!({"id": format!("c{i:02}"), "mail": format!("user{i}@example.com")}))
            .collect::<Vec<_>>()
    );
    t.stop().await;
    db.drop().await;
}

async fn list_rejected(exports: &mut Exports, parent: &str) -> Vec<pb::RejectedRecord> {
    exports
        .list_rejected_records(pb::ListRejectedRecordsRequest {
            parent: parent.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rejected_records
}

fn ids(rows: &[Value]) -> Vec<&str> {
    rows.iter().map(|r| r["id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn rows_breaking_a_check_constraint_are_rejected_with_their_sqlstate_and_sent_again_once_it_is_dropped() {
    let mut db = TargetDb::create().await;
    db.execute(
        "CREATE TABLE customers (id text PRIMARY KEY, email text, country text, ltv double precision, \
         vip boolean, tags jsonb, CONSTRAINT ltv_below_500 CHECK (ltv < 500))",
    )
    .await;
    let t = server_with(&db, &[]).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(
        &mut exports,
        with_settings(
            data_out("acme", "sync", "Sync", "pg", &[CUSTOMERS]),
            &[("mode", "upsert")],
        ),
    )
    .await;
    let export = export_name("acme", "sync");
    let first = succeeded(&mut exports, &export).await;
    // ltv = 100 × i: c05…c09 break the constraint, the others are delivered.
    assert_eq!((first.records_exported, first.records_rejected), (5, 5));
    assert!(
        first.warnings.iter().any(|w| w.code == "RECORDS_REJECTED"),
        "{:?}",
        first.warnings
    );
    assert_eq!(
        ids(&db.rows("customers", "id").await),
        ["c00", "c01", "c02", "c03", "c04"]
    );
    let rejects = list_rejected(&mut exports, &first.name).await;
    assert_eq!(
        rejects.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["c05", "c06", "c07", "c08", "c09"]
    );
    for reject in &rejects {
        assert_eq!(reject.code, "23514", "{reject:?}");
        assert_eq!(reject.source, CUSTOMERS);
        assert!(reject.reason.contains("ltv_below_500"), "{}", reject.reason);
    }

    db.execute("ALTER TABLE customers DROP CONSTRAINT ltv_below_500").await;
    let second = succeeded(&mut exports, &export).await;
    assert_eq!(
        (second.records_exported, second.records_rejected, second.records_retried),
        (10, 0, 5)
    );
    assert!(list_rejected(&mut exports, &export).await.is_empty());
    assert_eq!(db.rows("customers", "id").await, customer_rows(&ten_customers()));
    t.stop().await;
    db.drop().await;
}

#[tokio::test]
async fn values_postgresql_refuses_are_rejected_in_replace_mode_too() {
    let mut db = TargetDb::create().await;
    let t = server_with(&db, &[]).await;
    let expected = people(&t).await;
    // The catalog takes year 0 (ISO 8601's 1 BC); PostgreSQL has no year 0 (SQLSTATE 22008).
    let mut catalog = t.catalog("acme", Role::Admin).await;
    write_all(
        &mut catalog,
        vec![write(
            PEOPLE,
            vec![
                json!({"id": "p0", "born": "0000-01-01"}),
                json!({"id": "p4", "seen": "0000-06-01T00:00:00Z"}),
            ],
            &[],
        )],
    )
    .await
    .unwrap();
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, data_out("acme", "load", "Load", "pg", &[PEOPLE])).await;
    let run = succeeded(&mut exports, &export_name("acme", "load")).await;
    assert_eq!((run.records_exported, run.records_rejected), (3, 2));
    let rejects = list_rejected(&mut exports, &run.name).await;
    assert_eq!(
        rejects
            .iter()
            .map(|r| (r.key.as_str(), r.code.as_str()))
            .collect::<Vec<_>>(),
        [("p0", "22008"), ("p4", "22008")],
        "{rejects:?}"
    );
    assert!(rejects[0].reason.contains("out of range"), "{}", rejects[0].reason);
    assert_eq!(db.rows("web_people", "id").await, expected);
    t.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_swaps_the_table_at_once_for_a_concurrent_reader() {
    let mut db = TargetDb::create().await;
    let t = server_with(&db, &[]).await;
    big_entity(&t, 30_000).await;
    let big = "environments/acme/entities/big";
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, data_out("acme", "load", "Load", "pg", &[big])).await;
    let export = export_name("acme", "load");
    succeeded(&mut exports, &export).await;
    let count_and_min = "SELECT count(*)::int8, min(n)::int8 FROM big";
    let before: (i64, i64) = sea_orm::sqlx::query_as(count_and_min)
        .fetch_one(&mut db.conn)
        .await
        .unwrap();
    assert_eq!(before, (30_000, 0));

    // Every record changes and 5,000 more arrive: the new table is (35,000, 1,000,000).
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let messages: Vec<pb::WriteRecordsRequest> = (0..35_000)
        .collect::<Vec<_>>()
        .chunks(10_000)
        .map(|chunk| {
            write(
                big,
                chunk
                    .iter()
                    .map(|i| json!({"id": format!("r{i:07}"), "n": i + 1_000_000}))
                    .collect(),
                &[],
            )
        })
        .collect();
    write_all(&mut catalog, messages).await.unwrap();

    let run = run_export(&mut exports, &export).await;
    let reader = tokio::spawn({
        let url = db.url.clone();
        async move {
            use sea_orm::sqlx::Connection;
            let mut conn = sea_orm::sqlx::PgConnection::connect(&url).await.unwrap();
            let mut seen = Vec::new();
            loop {
                let observed: (i64, i64) = sea_orm::sqlx::query_as(count_and_min)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                seen.push(observed);
                if observed.0 == 35_000 {
                    return seen;
                }
            }
        }
    });
    let ended = wait_for_end(&mut exports, &run.name).await;
    assert_eq!(run_state(&ended), pb::RunState::Succeeded, "{:#?}", ended.error);
    let seen = tokio::time::timeout(std::time::Duration::from_secs(60), reader)
        .await
        .expect("the reader sees the new table")
        .unwrap();
    assert!(
        seen.iter().all(|s| *s == (30_000, 0) || *s == (35_000, 1_000_000)),
        "a reader saw a partial table: {:?}",
        seen.iter().filter(|s| **s != (30_000, 0)).take(5).collect::<Vec<_>>()
    );
    assert_eq!(db.tables().await, ["big"], "the staging table was renamed, not left");
    t.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_in_the_middle_of_a_copy_is_retried_on_a_new_one() {
    let mut db = TargetDb::create().await;
    // The run's first connection checks the target; its second is cut after 300 kB of the
    // 30,000 rows (three COPYs of about 200 kB) went out.
    let proxy = InterruptingProxy::start(1, 300_000, Interruption::Cut).await;
    let url = db.url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let t = setup(Options::default()).await;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(postgres("pg", &url, &[]))
        .await
        .unwrap();
    big_entity(&t, 30_000).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(
        &mut exports,
        data_out("acme", "load", "Load", "pg", &["environments/acme/entities/big"]),
    )
    .await;
    let run = succeeded(&mut exports, &export_name("acme", "load")).await;
    assert_eq!((run.records_exported, run.records_rejected), (30_000, 0));
    assert!(
        proxy.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "a new connection was opened after the cut"
    );
    let count: (i64, i64) = sea_orm::sqlx::query_as("SELECT count(*)::int8, count(DISTINCT id)::int8 FROM big")
        .fetch_one(&mut db.conn)
        .await
        .unwrap();
    assert_eq!(count, (30_000, 30_000), "every row once");
    assert_eq!(db.tables().await, ["big"]);
    t.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_replace_stops_in_its_copy_drops_its_staging_table_and_leaves_the_table_alone() {
    let mut db = TargetDb::create().await;
    db.execute("CREATE TABLE big (id text PRIMARY KEY, n bigint)").await;
    db.execute("INSERT INTO big VALUES ('old', 1)").await;
    // The second connection (the first checks the target) stalls after 300 kB of the rows.
    let proxy = InterruptingProxy::start(1, 300_000, Interruption::Hold).await;
    let url = db.url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let t = setup(Options::default()).await;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(postgres("pg", &url, &[]))
        .await
        .unwrap();
    big_entity(&t, 30_000).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(
        &mut exports,
        data_out("acme", "load", "Load", "pg", &["environments/acme/entities/big"]),
    )
    .await;
    let run = run_export(&mut exports, &export_name("acme", "load")).await;
    let holding = proxy.holding.clone();
    eventually(std::time::Duration::from_secs(30), "the COPY stalling", async || {
        if holding.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err("still sending".to_string())
        }
    })
    .await;
    exports
        .cancel_export_run(pb::CancelExportRunRequest { name: run.name.clone() })
        .await
        .unwrap();
    let ended = wait_for_end(&mut exports, &run.name).await;
    assert_eq!(run_state(&ended), pb::RunState::Cancelled, "{:#?}", ended.error);
    assert_eq!(db.rows("big", "id").await, [json!({"id": "old", "n": 1})]);
    assert_eq!(db.tables().await, ["big"], "the staging table was dropped");
    t.stop().await;
    db.drop().await;
}

#[tokio::test]
async fn an_upsert_into_a_table_that_does_not_fit_fails_naming_the_columns_and_writes_nothing() {
    let mut db = TargetDb::create().await;
    db.execute(
        "CREATE TABLE customers (id text PRIMARY KEY, email text, country text, ltv text, tags jsonb, \
         region text NOT NULL)",
    )
    .await;
    let t = server_with(&db, &[]).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(
        &mut exports,
        with_settings(
            data_out("acme", "sync", "Sync", "pg", &[CUSTOMERS]),
            &[("mode", "upsert")],
        ),
    )
    .await;
    let run = run_to_end(&mut exports, &export_name("acme", "sync")).await;
    assert_eq!(run_state(&run), pb::RunState::Failed, "{run:#?}");
    assert_eq!(run.records_exported, 0);
    let error = run.error.as_ref().unwrap();
    for named in [
        "\"ltv\" is text, double precision expected",
        "\"vip\" is missing",
        "\"region\"",
    ] {
        assert!(error.message.contains(named), "{named} in {}", error.message);
    }
    assert!(db.rows("customers", "id").await.is_empty(), "nothing was written");
    t.stop().await;
    db.drop().await;
}

/// Connection config pairs of a case.
type Config<'a> = Vec<(&'a str, &'a str)>;

fn check_names(report: &pb::TestConnectionResponse) -> Vec<(&str, bool)> {
    report.checks.iter().map(|c| (c.name.as_str(), c.ok)).collect()
}

#[tokio::test]
async fn test_connection_checks_each_step_and_never_shows_the_password() {
    let db = TargetDb::create().await;
    let t = TestServer::start().await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let refusing = RefusingPostgres::start().await;
    let password = "s3cret-Pässword";
    let encoded = "s3cret-P%C3%A4ssword";
    let database_url =
        |host: &str, user: &str, query: &str| format!("postgres://{user}:{encoded}@{host}/{}{query}", db.name);
    // A role that may use `public` but not create in it (PostgreSQL 15's default).
    let reader = format!("exportd_test_reader_{}", std::process::id());
    let mut admin = db_admin().await;
    admin_execute(&mut admin, &format!("DROP ROLE IF EXISTS {reader}")).await;
    admin_execute(&mut admin, &format!("CREATE ROLE {reader} LOGIN")).await;
    let cases = [
        (
            "good",
            database_url("127.0.0.1:5432", "postgres", ""),
            vec![],
            vec![
                ("connect", true),
                ("authenticate", true),
                ("schema", true),
                ("privileges", true),
            ],
        ),
        (
            "tls",
            database_url("127.0.0.1:5432", "postgres", "?sslmode=require"),
            vec![],
            vec![
                ("connect", true),
                ("authenticate", true),
                ("schema", true),
                ("privileges", true),
            ],
        ),
        (
            "no-schema",
            database_url("127.0.0.1:5432", "postgres", ""),
            vec![("schema", "nowhere")],
            vec![("connect", true), ("authenticate", true), ("schema", false)],
        ),
        (
            "reader",
            database_url("127.0.0.1:5432", &reader, ""),
            vec![],
            vec![
                ("connect", true),
                ("authenticate", true),
                ("schema", true),
                ("privileges", false),
            ],
        ),
        (
            "refused",
            database_url(&format!("127.0.0.1:{}", refusing.port), "app", ""),
            vec![],
            vec![("connect", true), ("authenticate", false)],
        ),
        (
            "closed",
            database_url("127.0.0.1:9", "app", ""),
            vec![],
            vec![("tcp_connect", false)],
        ),
    ];
    for (id, url, config, expected) in cases {
        connections
            .create_connection(postgres(id, &url, &config))
            .await
            .unwrap();
        let report = connections
            .test_connection(pb::TestConnectionRequest {
                name: conn_name("acme", id),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(check_names(&report), expected, "{id}: {report:?}");
        assert_eq!(report.ok, expected.iter().all(|(_, ok)| *ok), "{id}");
        let shown = format!("{report:?}");
        assert!(!shown.contains(password) && !shown.contains(encoded), "{id}: {shown}");
        let stored = connections
            .get_connection(pb::GetConnectionRequest {
                name: conn_name("acme", id),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!format!("{stored:?}").contains(encoded), "{id}");
    }
    let report = connections
        .test_connection(pb::TestConnectionRequest {
            name: conn_name("acme", "tls"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(report.checks[0].message.contains("over TLS"), "{report:?}");
    let report = connections
        .test_connection(pb::TestConnectionRequest {
            name: conn_name("acme", "reader"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(report.checks[3].message.contains("CREATE"), "{report:?}");
    let report = connections
        .test_connection(pb::TestConnectionRequest {
            name: conn_name("acme", "refused"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(report.checks[1].message.contains("28P01"), "{report:?}");
    // The password went to the server, decoded, and nowhere else.
    assert!(refusing.passwords.lock().unwrap().iter().all(|p| p == password));
    assert!(!refusing.passwords.lock().unwrap().is_empty());
    t.stop().await;
    db.drop().await;
    admin_execute(&mut admin, &format!("DROP ROLE IF EXISTS {reader}")).await;
}

async fn db_admin() -> sea_orm::sqlx::PgConnection {
    use sea_orm::sqlx::Connection;
    sea_orm::sqlx::PgConnection::connect(&crate::common::postgres_target::admin_url())
        .await
        .unwrap()
}

async fn admin_execute(admin: &mut sea_orm::sqlx::PgConnection, sql: &str) {
    sea_orm::sqlx::raw_sql(sea_orm::sqlx::AssertSqlSafe(sql.to_string()))
        .execute(admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_postgres_settings_are_invalid_argument_naming_the_key_and_nothing_is_stored() {
    let t = acme().await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let good = "postgres://app:pw@db.example:5432/crm";
    let long_prefix = "p".repeat(64);
    let cases: [(&str, Config, &str); 9] = [
        ("postgres://", vec![], "connection.secrets.url"),
        ("mysql://app@db.example/crm", vec![], "connection.secrets.url"),
        ("postgres://db.example/crm", vec![], "connection.secrets.url"),
        (
            "postgres://app@db.example/crm?sslmode=sometimes",
            vec![],
            "connection.secrets.url",
        ),
        (
            "postgres://app@db.example/crm?sslrootcert=/etc/passwd",
            vec![],
            "connection.secrets.url",
        ),
        (good, vec![("schema", "Sales")], "connection.config.schema"),
        (good, vec![("schema", "bad-name")], "connection.config.schema"),
        (good, vec![("table_prefix", "1st_")], "connection.config.table_prefix"),
        (
            good,
            vec![("table_prefix", &long_prefix)],
            "connection.config.table_prefix",
        ),
    ];
    for (i, (url, config, field)) in cases.iter().enumerate() {
        let status = expect_code(
            connections
                .create_connection(postgres(&format!("bad{i}"), url, config))
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), [field.to_string()], "{url} {config:?}");
        assert!(!status.message().contains("pw@"), "{}", status.message());
    }
    let listed = connections
        .list_connections(pb::ListConnectionsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.connections.iter().all(|c| !c.name.contains("/bad")),
        "{listed:?}"
    );

    // UpdateConnection checks the same way and keeps what was stored.
    connections
        .create_connection(postgres("pg", good, &[("schema", "sales")]))
        .await
        .unwrap();
    let mut update = pb::Connection {
        name: conn_name("acme", "pg"),
        ..Default::default()
    };
    update.secrets = pairs(&[("url", "postgres://nobody")]);
    let status = expect_code(
        connections
            .update_connection(pb::UpdateConnectionRequest {
                connection: Some(update.clone()),
                update_mask: mask(&["secrets"]),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["connection.secrets.url"]);
    update.secrets.clear();
    update.config = pairs(&[("schema", "NoSuch Schema")]);
    let status = expect_code(
        connections
            .update_connection(pb::UpdateConnectionRequest {
                connection: Some(update),
                update_mask: mask(&["config"]),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["connection.config.schema"]);
    let stored = connections
        .get_connection(pb::GetConnectionRequest {
            name: conn_name("acme", "pg"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.config.get("schema").map(String::as_str), Some("sales"));

    // Exports: `table` must be an identifier, `mode` one of the two.
    let mut exports = t.exports("acme", Role::Admin).await;
    for (settings, field) in [
        (vec![("table", "my table")], "export.settings.table"),
        (vec![("table", "Customers")], "export.settings.table"),
        (vec![("table", "x\"; DROP TABLE y; --")], "export.settings.table"),
        (vec![("mode", "merge")], "export.settings.mode"),
    ] {
        let status = expect_code(
            exports
                .create_export(with_settings(
                    data_out("acme", "bad", "Bad", "pg", &[CUSTOMERS]),
                    &settings,
                ))
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), [field.to_string()], "{settings:?}");
    }
    expect_code(
        exports
            .get_export(pb::GetExportRequest {
                name: export_name("acme", "bad"),
            })
            .await,
        Code::NotFound,
    );
    let created = create_export(
        &mut exports,
        with_settings(data_out("acme", "ok", "Ok", "pg", &[CUSTOMERS]), &[("table", "people")]),
    )
    .await;
    let mut changed = created.clone();
    changed.settings = pairs(&[("mode", "append")]);
    let status = expect_code(
        exports
            .update_export(pb::UpdateExportRequest {
                export: Some(changed),
                update_mask: mask(&["settings"]),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["export.settings.mode"]);
    let stored = exports
        .get_export(pb::GetExportRequest {
            name: export_name("acme", "ok"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.settings, pairs(&[("table", "people")]));
    t.stop().await;
}
