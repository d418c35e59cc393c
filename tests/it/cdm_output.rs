//! What a run leaves at a local-files target, read back file by file and row by row: the CDM
//! folder layout, model.json (against the CDM project's schema), CSV settings, segment exports
//! with mapped fields and incremental exports with `_deleted`.

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use exportd::auth::Role;
use exportd::pb;
use serde_json::{Value, json};

use crate::common::*;

const PEOPLE: &str = "environments/acme/entities/people";
const ORDERS_BY_ID: &str = "environments/acme/entities/purchases";
/// `people`: one field of every type. `purchases`: an INT64 key.
async fn people_and_purchases(t: &TestServer) {
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let entity = |id: &str, display: &str, fields: Vec<pb::EntityField>, key: &str| pb::CreateEntityRequest {
        parent: ACME.into(),
        entity_id: id.into(),
        entity: Some(pb::Entity {
            display_name: display.into(),
            kind: pb::EntityKind::Other as i32,
            fields,
            primary_key: key.into(),
            ..Default::default()
        }),
    };
    catalog
        .create_entity(entity(
            "people",
            "People",
            vec![
                field("id", pb::FieldType::String),
                field("age", pb::FieldType::Int64),
                field("score", pb::FieldType::Double),
                field("active", pb::FieldType::Bool),
                field("seen", pb::FieldType::Timestamp),
                field("born", pb::FieldType::Date),
                field("profile", pb::FieldType::Json),
                field("note", pb::FieldType::String),
            ],
            "id",
        ))
        .await
        .unwrap();
    catalog
        .create_entity(entity(
            "purchases",
            "Purchases",
            vec![
                field("order_id", pb::FieldType::Int64),
                field("amount", pb::FieldType::Double),
                field("customer", pb::FieldType::String),
            ],
            "order_id",
        ))
        .await
        .unwrap();
    write_all(
        &mut catalog,
        vec![write(PEOPLE, people(), &[]), write(ORDERS_BY_ID, purchases(), &[])],
    )
    .await
    .unwrap();
}

fn people() -> Vec<Value> {
    vec![
        json!({"id": "p01", "age": 34, "score": 12.5, "active": true, "seen": "2024-05-01T09:30:00Z",
               "born": "1990-02-28", "profile": {"tier": "gold", "tags": ["a", "b"], "ok": true}, "note": "plain"}),
        json!({"id": "p02", "note": null}),
        json!({"id": "p03", "age": 0, "score": -0.25, "active": false, "note": "with, comma; and semicolon",
               "profile": [1, 2.5, null]}),
        json!({"id": "p04", "age": "9007199254740993", "note": "she said \"hi\" and left", "profile": {"nested": {"q": "\"x\""}}}),
        json!({"id": "p05", "note": "line one\nline two\r\nline three", "profile": {"empty": {}, "list": []}, "score": 1e-7}),
        json!({"id": "p06", "note": "Ünïcödé ✓ 日本", "profile": true, "seen": "2024-12-31T23:59:59.123+07:00"}),
        json!({"id": "p07", "note": " padded ", "profile": null, "born": "2000-01-01", "age": -42}),
    ]
}

fn purchases() -> Vec<Value> {
    (1..=4)
        .map(|i| json!({"order_id": i, "amount": i as f64 * 10.5, "customer": format!("p0{i}")}))
        .collect()
}

const PEOPLE_COLUMNS: [(&str, &str); 8] = [
    ("id", "string"),
    ("age", "int64"),
    ("score", "double"),
    ("active", "boolean"),
    ("seen", "dateTimeOffset"),
    ("born", "date"),
    ("profile", "json"),
    ("note", "string"),
];
const PURCHASE_COLUMNS: [(&str, &str); 3] = [("order_id", "int64"), ("amount", "double"), ("customer", "string")];

/// Numbers compared by value (a Struct carries every number as a double).
fn loose(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(items) => Value::Array(items.iter().map(loose).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), loose(v))).collect()),
        other => other.clone(),
    }
}

/// Checks one CSV cell against the record's value, by the column's CDM type.
fn check_cell(cell: &str, value: Option<&Value>, data_type: &str, context: &str) {
    let value = value.filter(|v| !v.is_null());
    let Some(value) = value else {
        assert_eq!(cell, "", "null is an empty field: {context}");
        return;
    };
    match data_type {
        "string" | "dateTimeOffset" | "date" => assert_eq!(cell, value.as_str().unwrap(), "{context}"),
        "int64" => {
            let expected = match value {
                Value::String(s) => s.parse::<i64>().unwrap(),
                other => other.as_f64().unwrap() as i64,
            };
            assert_eq!(cell.parse::<i64>().ok(), Some(expected), "{cell:?}: {context}");
        }
        "double" => assert_eq!(cell.parse::<f64>().ok(), value.as_f64(), "{cell:?}: {context}"),
        "boolean" => assert_eq!(
            cell,
            if value.as_bool().unwrap() { "true" } else { "false" },
            "{context}"
        ),
        "json" => {
            let parsed: Value = serde_json::from_str(cell)
                .unwrap_or_else(|e| panic!("a json column holds JSON text, not {cell:?} ({e}): {context}"));
            assert_eq!(loose(&parsed), loose(value), "{context}");
        }
        other => panic!("unexpected CDM type {other}"),
    }
}

/// Checks rows read back (header first) against records, in order.
fn check_rows(rows: &[Vec<String>], columns: &[(&str, &str)], records: &[Value], context: &str) {
    let header: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    assert_eq!(rows[0], header, "header of {context}");
    assert_eq!(rows.len() - 1, records.len(), "rows of {context}: {rows:#?}");
    for (row, record) in rows[1..].iter().zip(records) {
        assert_eq!(row.len(), columns.len(), "{row:?}");
        for (cell, (name, data_type)) in row.iter().zip(columns) {
            check_cell(
                cell,
                record.get(*name),
                data_type,
                &format!("{context} {name} of {record}"),
            );
        }
    }
}

/// A CSV partition's records, header included.
fn read_csv(path: &Path, delimiter: u8) -> Vec<Vec<String>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes.as_slice()), &mut text)
            .unwrap_or_else(|e| panic!("{} is gzip: {e}", path.display()));
        text
    } else {
        bytes
    };
    csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delimiter)
        .from_reader(bytes.as_slice())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// Rows of several partitions of one entity: one header, then every data row.
fn read_partitions(paths: &[PathBuf], delimiter: u8) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for path in paths {
        let rows = read_csv(path, delimiter);
        if all.is_empty() {
            all.push(rows[0].clone());
        } else {
            assert_eq!(rows[0], all[0], "every partition has the header");
        }
        all.extend(rows.into_iter().skip(1));
    }
    all
}

fn run_id(run: &pb::ExportRun) -> String {
    run.name.rsplit('/').next().unwrap().to_string()
}

/// `<entity>/<yyyy>/<MM>/<dd>/<HHmm>-<run id>` of a run (its create time, UTC).
fn run_dir(run: &pb::ExportRun, entity: &str) -> String {
    let time = run.create_time.as_ref().unwrap();
    let time = Utc.timestamp_opt(time.seconds, time.nanos as u32).unwrap();
    format!(
        "{entity}/{}/{}-{}",
        time.format("%Y/%m/%d"),
        time.format("%H%M"),
        run_id(run)
    )
}

fn read_model(folder: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(folder.join("model.json")).unwrap()).unwrap()
}

/// What model.json must say about one entity.
struct ExpectedEntity<'a> {
    name: &'a str,
    description: &'a str,
    primary_key: &'a str,
    /// (attribute, CDM data type, mapping annotation)
    attributes: Vec<(String, String, String)>,
    /// The partition files, in order.
    files: Vec<PathBuf>,
}

fn attributes(columns: &[(&str, &str)]) -> Vec<(String, String, String)> {
    columns
        .iter()
        .map(|(name, data_type)| (name.to_string(), data_type.to_string(), format!("crm.{name}")))
        .collect()
}

fn annotation<'a>(item: &'a Value, name: &str) -> Option<&'a str> {
    item["annotations"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a["value"].as_str())
}

/// Checks model.json: valid CDM, named after the export, entities with their attributes,
/// annotations and partitions (absolute `file://` URLs of existing files, nothing else).
fn check_model(folder: &Path, export_id: &str, delimiter: &str, entities: &[ExpectedEntity]) {
    let model = read_model(folder);
    let errors = schema_errors(&model);
    assert!(
        errors.is_empty(),
        "model.json does not validate: {errors:#?}\n{model:#}"
    );
    assert_eq!(model["name"], export_id);
    let found = model["entities"].as_array().unwrap();
    assert_eq!(
        found.iter().map(|e| e["name"].as_str().unwrap()).collect::<Vec<_>>(),
        entities.iter().map(|e| e.name).collect::<Vec<_>>()
    );
    for (entity, expected) in found.iter().zip(entities) {
        assert_eq!(entity["$type"], "LocalEntity");
        assert_eq!(entity["description"], expected.description);
        assert_eq!(
            annotation(entity, "primaryKey"),
            Some(expected.primary_key),
            "{entity:#}"
        );
        let attributes: Vec<(String, String, String)> = entity["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().to_string(),
                    a["dataType"].as_str().unwrap().to_string(),
                    annotation(a, "mapping").unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert_eq!(attributes, expected.attributes, "{entity:#}");
        for attribute in entity["attributes"].as_array().unwrap() {
            if attribute["name"] != "_deleted" {
                let description = attribute["description"].as_str().unwrap_or_default();
                assert!(
                    description.starts_with("the "),
                    "the field's description: {attribute:#}"
                );
            }
        }
        let partitions = entity["partitions"].as_array().unwrap();
        let located: Vec<PathBuf> = partitions
            .iter()
            .map(|p| {
                assert!(p["refreshTime"].is_string(), "{p:#}");
                assert_eq!(p["fileFormatSettings"]["columnHeaders"], true, "{p:#}");
                assert_eq!(p["fileFormatSettings"]["delimiter"], delimiter, "{p:#}");
                let path = path_of_location(p["location"].as_str().unwrap());
                assert!(path.is_file(), "{} exists", path.display());
                path
            })
            .collect();
        let expected: Vec<PathBuf> = expected
            .files
            .iter()
            .map(|f| std::fs::canonicalize(f).unwrap())
            .collect();
        assert_eq!(located, expected, "partitions of {}", entity["name"]);
    }
}

async fn update_settings(admin: &mut Exports, export: &str, settings: &[(&str, &str)]) {
    admin
        .update_export(pb::UpdateExportRequest {
            export: Some(pb::Export {
                name: export.into(),
                settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            }),
            update_mask: mask(&["settings"]),
            validate_only: false,
        })
        .await
        .unwrap();
}

async fn run_ok(admin: &mut Exports, export: &str) -> pb::ExportRun {
    let run = run_export(admin, export).await;
    let done = wait_for_end(admin, &run.name).await;
    assert_eq!(run_state(&done), pb::RunState::Succeeded, "{done:#?}");
    done
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    files_under(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}

#[tokio::test]
async fn a_data_out_run_writes_a_cdm_folder_that_reads_back_row_for_row() {
    let t = setup(Options::default()).await;
    people_and_purchases(&t).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut request = data_out("acme", "lake", "Lake", "files", &[PEOPLE, ORDERS_BY_ID]);
    request.export.as_mut().unwrap().settings = [("folder", "cdm/acme"), ("delimiter", ";")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    create_export(&mut admin, request).await;
    let export = export_name("acme", "lake");
    let root = out(&t);
    let folder = root.join("cdm/acme");
    let expected_people = people();
    let expected_purchases = purchases();

    // Run 1: `;` as the delimiter.
    let first = run_ok(&mut admin, &export).await;
    assert_eq!(first.records_total, 11);
    assert_eq!(first.records_exported, 11);
    let people_1 = format!("{}/people_1.csv", run_dir(&first, "people"));
    let purchases_1 = format!("{}/purchases_1.csv", run_dir(&first, "purchases"));
    let mut expected_files = ["model.json".to_string(), people_1.clone(), purchases_1.clone()];
    expected_files.sort();
    assert_eq!(
        files_under(&root),
        expected_files
            .iter()
            .map(|f| format!("cdm/acme/{f}"))
            .collect::<Vec<_>>()
    );
    check_rows(
        &read_csv(&folder.join(&people_1), b';'),
        &PEOPLE_COLUMNS,
        &expected_people,
        "run 1 people",
    );
    check_rows(
        &read_csv(&folder.join(&purchases_1), b';'),
        &PURCHASE_COLUMNS,
        &expected_purchases,
        "run 1 purchases",
    );
    let entities = |people: Vec<PathBuf>, purchases: Vec<PathBuf>| {
        vec![
            ExpectedEntity {
                name: "people",
                description: "People",
                primary_key: "id",
                attributes: attributes(&PEOPLE_COLUMNS),
                files: people,
            },
            ExpectedEntity {
                name: "purchases",
                description: "Purchases",
                primary_key: "order_id",
                attributes: attributes(&PURCHASE_COLUMNS),
                files: purchases,
            },
        ]
    };
    check_model(
        &folder,
        "lake",
        ";",
        &entities(vec![folder.join(&people_1)], vec![folder.join(&purchases_1)]),
    );
    let after_first = snapshot(&folder);

    // Run 2: gzip. A new run folder; the first run's files stay as they were.
    update_settings(&mut admin, &export, &[("folder", "cdm/acme"), ("compression", "gzip")]).await;
    let second = run_ok(&mut admin, &export).await;
    let people_2 = format!("{}/people_1.csv.gz", run_dir(&second, "people"));
    let purchases_2 = format!("{}/purchases_1.csv.gz", run_dir(&second, "purchases"));
    let now = snapshot(&folder);
    for (file, bytes) in &after_first {
        if file != "model.json" {
            assert!(now.contains(&(file.clone(), bytes.clone())), "{file} is left as it was");
        }
    }
    let mut expected_files = vec![
        "model.json".to_string(),
        people_1.clone(),
        purchases_1.clone(),
        people_2.clone(),
        purchases_2.clone(),
    ];
    expected_files.sort();
    assert_eq!(files_under(&folder), expected_files);
    check_rows(
        &read_csv(&folder.join(&people_2), b','),
        &PEOPLE_COLUMNS,
        &expected_people,
        "run 2 people",
    );
    check_rows(
        &read_csv(&folder.join(&purchases_2), b','),
        &PURCHASE_COLUMNS,
        &expected_purchases,
        "run 2 purchases",
    );
    check_model(
        &folder,
        "lake",
        ",",
        &entities(vec![folder.join(&people_2)], vec![folder.join(&purchases_2)]),
    );

    // Run 3: three rows per file.
    update_settings(
        &mut admin,
        &export,
        &[("folder", "cdm/acme"), ("max_rows_per_file", "3")],
    )
    .await;
    let third = run_ok(&mut admin, &export).await;
    let people_3: Vec<PathBuf> = (1..=3)
        .map(|n| folder.join(format!("{}/people_{n}.csv", run_dir(&third, "people"))))
        .collect();
    let purchases_3: Vec<PathBuf> = (1..=2)
        .map(|n| folder.join(format!("{}/purchases_{n}.csv", run_dir(&third, "purchases"))))
        .collect();
    let sizes: Vec<usize> = people_3.iter().map(|p| read_csv(p, b',').len() - 1).collect();
    assert_eq!(sizes, [3, 3, 1]);
    check_rows(
        &read_partitions(&people_3, b','),
        &PEOPLE_COLUMNS,
        &expected_people,
        "run 3 people",
    );
    check_rows(
        &read_partitions(&purchases_3, b','),
        &PURCHASE_COLUMNS,
        &expected_purchases,
        "run 3 purchases",
    );
    check_model(&folder, "lake", ",", &entities(people_3.clone(), purchases_3.clone()));
    assert_eq!(
        files_under(&folder).len(),
        1 + 2 + 2 + 3 + 2,
        "{:#?}",
        files_under(&folder)
    );
    t.stop().await;
}

#[tokio::test]
async fn a_segment_export_writes_its_members_with_the_mapped_field_names() {
    let t = setup(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    create_export(
        &mut admin,
        segment_export(
            "acme",
            "members",
            "Members",
            "files",
            &[VIP],
            &[
                ("id", "customer_id"),
                ("email", "email_address"),
                ("ltv", "lifetime_value"),
                ("vip", "is_vip"),
            ],
        ),
    )
    .await;
    let run = run_ok(&mut admin, &export_name("acme", "members")).await;
    assert_eq!(run.records_exported, 5);
    let folder = out(&t).join("members");
    let partition = format!("{}/vip_1.csv", run_dir(&run, "vip"));
    assert_eq!(files_under(&folder), ["model.json".to_string(), partition.clone()]);

    let members: Vec<Value> = ten_customers()
        .into_iter()
        .filter(|c| c["vip"] == true)
        .map(|c| json!({"customer_id": c["id"], "email_address": c["email"], "lifetime_value": c["ltv"], "is_vip": c["vip"]}))
        .collect();
    let columns = [
        ("customer_id", "string"),
        ("email_address", "string"),
        ("lifetime_value", "double"),
        ("is_vip", "boolean"),
    ];
    check_rows(&read_csv(&folder.join(&partition), b','), &columns, &members, "vip");
    let model = read_model(&folder);
    let mappings: Vec<String> = model["entities"][0]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| annotation(a, "mapping").unwrap_or_default().to_string())
        .collect();
    for (mapping, source) in mappings.iter().zip(["id", "email", "ltv", "vip"]) {
        assert!(mapping.contains(&format!("crm.{source}")), "{mapping}");
        assert!(mapping.contains(source), "{mapping}");
    }
    check_model(
        &folder,
        "members",
        ",",
        &[ExpectedEntity {
            name: "vip",
            description: "Segment vip",
            primary_key: "customer_id",
            attributes: columns
                .iter()
                .zip(&mappings)
                .map(|((name, data_type), mapping)| (name.to_string(), data_type.to_string(), mapping.clone()))
                .collect(),
            files: vec![folder.join(&partition)],
        }],
    );
    t.stop().await;
}

#[tokio::test]
async fn incremental_runs_write_only_changes_with_deleted_flags() {
    let t = setup(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut request = data_out("acme", "inc", "Inc", "files", &[CUSTOMERS]);
    request.export.as_mut().unwrap().sync_mode = pb::SyncMode::Incremental as i32;
    create_export(&mut admin, request).await;
    let export = export_name("acme", "inc");
    let folder = out(&t).join("inc");
    let columns = [
        ("id", "string"),
        ("email", "string"),
        ("country", "string"),
        ("ltv", "double"),
        ("vip", "boolean"),
        ("tags", "json"),
        ("_deleted", "boolean"),
    ];
    let model_attributes = || {
        let mut attributes = attributes(&columns[..6]);
        attributes.push(("_deleted".into(), "boolean".into(), String::new()));
        attributes
    };
    let with_deleted = |record: &Value, deleted: bool| {
        let mut record = record.clone();
        record["_deleted"] = json!(deleted);
        record
    };

    // The first run: every live record, none deleted.
    let first = run_ok(&mut admin, &export).await;
    assert_eq!(first.records_exported, 10);
    let partition_1 = format!("{}/customers_1.csv", run_dir(&first, "customers"));
    let all: Vec<Value> = ten_customers().iter().map(|c| with_deleted(c, false)).collect();
    check_rows(&read_csv(&folder.join(&partition_1), b','), &columns, &all, "first run");
    let expected = |files: Vec<PathBuf>| ExpectedEntity {
        name: "customers",
        description: "Entity customers",
        primary_key: "id",
        attributes: model_attributes(),
        files,
    };
    check_model(&folder, "inc", ",", &[expected(vec![folder.join(&partition_1)])]);

    // Upserts and deletes: the second run has exactly those.
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let mut changed = ten_customers()[1].clone();
    changed["email"] = json!("changed@example.com");
    let added =
        json!({"id": "c10", "email": "new@example.com", "country": "SG", "ltv": 1.5, "vip": false, "tags": {"k": "v"}});
    write_all(
        &mut catalog,
        vec![
            write(CUSTOMERS, vec![changed.clone()], &[]),
            write(CUSTOMERS, vec![added.clone()], &["c02", "c03"]),
        ],
    )
    .await
    .unwrap();
    let second = run_ok(&mut admin, &export).await;
    assert_eq!(second.records_total, 4, "{second:#?}");
    assert_eq!(second.records_exported, 4);
    let partition_2 = format!("{}/customers_1.csv", run_dir(&second, "customers"));
    let changes = vec![
        with_deleted(&changed, false),
        json!({"id": "c02", "_deleted": true}),
        json!({"id": "c03", "_deleted": true}),
        with_deleted(&added, false),
    ];
    check_rows(
        &read_csv(&folder.join(&partition_2), b','),
        &columns,
        &changes,
        "second run",
    );
    check_model(&folder, "inc", ",", &[expected(vec![folder.join(&partition_2)])]);
    assert!(folder.join(&partition_1).is_file(), "the first run's file stays");

    // Nothing changed: a header-only partition.
    let third = run_ok(&mut admin, &export).await;
    assert_eq!(third.records_exported, 0);
    let partition_3 = format!("{}/customers_1.csv", run_dir(&third, "customers"));
    check_rows(&read_csv(&folder.join(&partition_3), b','), &columns, &[], "third run");
    t.stop().await;
}

/// A JSON column holds JSON text: a JSON string value is written quoted (`"[1]"`), so that it
/// reads back as the string it was and not as the array `[1]`.
#[tokio::test]
async fn json_string_values_read_back_as_strings() {
    let t = setup(Options::default()).await;
    people_and_purchases(&t).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let records = vec![
        json!({"id": "s1", "profile": "just a string"}),
        json!({"id": "s2", "profile": "[1]"}),
        json!({"id": "s3", "profile": [1]}),
        json!({"id": "s4", "profile": "true"}),
        json!({"id": "s5", "profile": true}),
    ];
    write_all(
        &mut catalog,
        vec![write(
            PEOPLE,
            records.clone(),
            &["p01", "p02", "p03", "p04", "p05", "p06", "p07"],
        )],
    )
    .await
    .unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;
    create_export(&mut admin, data_out("acme", "json", "Json", "files", &[PEOPLE])).await;
    let run = run_ok(&mut admin, &export_name("acme", "json")).await;
    let folder = out(&t).join("json");
    let rows = read_csv(&folder.join(format!("{}/people_1.csv", run_dir(&run, "people"))), b',');
    check_rows(&rows, &PEOPLE_COLUMNS, &records, "json values");
    t.stop().await;
}

/// Incremental segment exports: members who joined, whose records changed, who left or whose
/// records were deleted since the last successful run — and nobody else.
#[tokio::test]
async fn incremental_segment_exports_send_joined_changed_and_left_members() {
    let t = setup(Options::default()).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let segment = crate::common::create_pushed_segment(&mut catalog, "acme", "picked", "customers", "Picked").await;
    crate::common::set_members(
        &mut catalog,
        &segment.name,
        vec![vec!["c00".into(), "c01".into(), "c02".into()]],
    )
    .await
    .unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut request = segment_export(
        "acme",
        "picked",
        "Picked",
        "files",
        &[&segment.name],
        &[("id", "customer_id"), ("email", "email")],
    );
    request.export.as_mut().unwrap().sync_mode = pb::SyncMode::Incremental as i32;
    create_export(&mut admin, request).await;
    let export = export_name("acme", "picked");
    let folder = out(&t).join("picked");
    let columns = [("customer_id", "string"), ("email", "string"), ("_deleted", "boolean")];
    let row =
        |id: &str, email: Option<&str>, deleted: bool| json!({"customer_id": id, "email": email, "_deleted": deleted});

    let first = run_ok(&mut admin, &export).await;
    let rows = read_csv(
        &folder.join(format!("{}/picked_1.csv", run_dir(&first, "picked"))),
        b',',
    );
    check_rows(
        &rows,
        &columns,
        &[
            row("c00", Some("user0@example.com"), false),
            row("c01", Some("user1@example.com"), false),
            row("c02", Some("user2@example.com"), false),
        ],
        "first run",
    );

    // c03 joins (its record unchanged), c02 leaves, c00's record changes, c01's is deleted.
    crate::common::set_members(
        &mut catalog,
        &segment.name,
        vec![vec!["c00".into(), "c01".into(), "c03".into()]],
    )
    .await
    .unwrap();
    let mut changed = ten_customers()[0].clone();
    changed["email"] = json!("changed@example.com");
    write_all(&mut catalog, vec![write(CUSTOMERS, vec![changed], &["c01"])])
        .await
        .unwrap();
    let second = run_ok(&mut admin, &export).await;
    let mut rows = read_csv(
        &folder.join(format!("{}/picked_1.csv", run_dir(&second, "picked"))),
        b',',
    );
    // Members who joined or changed come first, then those who left; compare by key.
    rows[1..].sort();
    check_rows(
        &rows,
        &columns,
        &[
            row("c00", Some("changed@example.com"), false),
            row("c01", None, true),
            row("c02", None, true),
            row("c03", Some("user3@example.com"), false),
        ],
        "second run",
    );
    t.stop().await;
}

/// An incremental segment export whose mapping leaves the primary key out still says whose
/// row it is: the key comes first under its own name (and is the model's primary key), and a
/// deleted record or a member who left a rule segment is a row with that key and `_deleted`.
#[tokio::test]
async fn incremental_rows_carry_the_key_when_the_mapping_leaves_it_out() {
    let t = setup(Options::default()).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    // c02, c05, c08.
    let france = crate::common::create_rule_segment(&mut catalog, "acme", "france", "customers", "country == \"FR\"")
        .await
        .unwrap();
    assert_eq!(france.member_count, 3);
    let mut admin = t.exports("acme", Role::Admin).await;
    let incremental = |request: pb::CreateExportRequest| {
        let mut request = crate::common::with_schedule(request, crate::common::schedule_off());
        request.export.as_mut().unwrap().sync_mode = pb::SyncMode::Incremental as i32;
        request
    };

    // A target field cannot take the name the key is written under, nor `_deleted`.
    for (target, field) in [
        ("id", "export.field_mappings[1].target_field"),
        ("_deleted", "export.field_mappings[1].target_field"),
    ] {
        let clash = incremental(segment_export(
            "acme",
            "clash",
            "Clash",
            "files",
            &[&france.name],
            &[("email", "email_address"), ("country", target)],
        ));
        let status = expect_code(admin.create_export(clash).await, tonic::Code::InvalidArgument);
        assert_eq!(bad_fields(&status), [field], "{target}: {status:?}");
    }

    create_export(
        &mut admin,
        incremental(segment_export(
            "acme",
            "fr",
            "France",
            "files",
            &[&france.name],
            &[("email", "email_address")],
        )),
    )
    .await;
    let export = export_name("acme", "fr");
    let folder = out(&t).join("fr");
    let columns = [("id", "string"), ("email_address", "string"), ("_deleted", "boolean")];
    let row =
        |id: &str, email: Option<&str>, deleted: bool| json!({"id": id, "email_address": email, "_deleted": deleted});
    let first = run_ok(&mut admin, &export).await;
    let partition = |run: &pb::ExportRun| folder.join(format!("{}/france_1.csv", run_dir(run, "france")));
    check_rows(
        &read_csv(&partition(&first), b','),
        &columns,
        &[
            row("c02", Some("user2@example.com"), false),
            row("c05", Some("user5@example.com"), false),
            row("c08", Some("user8@example.com"), false),
        ],
        "first run",
    );
    let model = read_model(&folder);
    assert!(schema_errors(&model).is_empty(), "{model:#}");
    let entity = &model["entities"][0];
    assert_eq!(annotation(entity, "primaryKey"), Some("id"), "{entity:#}");
    let names: Vec<&str> = entity["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["id", "email_address", "_deleted"]);

    // c05 is deleted; c08 moves away (leaves the rule segment at the next refresh); c00 moves in.
    let mut moved = ten_customers()[8].clone();
    moved["country"] = json!("ID");
    let mut joined = ten_customers()[0].clone();
    joined["country"] = json!("FR");
    write_all(&mut catalog, vec![write(CUSTOMERS, vec![moved, joined], &["c05"])])
        .await
        .unwrap();
    let refresh = catalog
        .run_system_refresh(pb::RunSystemRefreshRequest { parent: ACME.into() })
        .await
        .unwrap()
        .into_inner();
    crate::common::wait_for_system_refresh(&mut catalog, &refresh.name).await;

    let second = run_ok(&mut admin, &export).await;
    let mut rows = read_csv(&partition(&second), b',');
    rows[1..].sort();
    check_rows(
        &rows,
        &columns,
        &[
            row("c00", Some("user0@example.com"), false),
            row("c05", None, true),
            row("c08", None, true),
        ],
        "second run",
    );
    t.stop().await;
}

/// `keep_runs = N`: after each commit, the partition folders of all but the last N successful
/// runs are removed; what model.json points to always stays.
#[tokio::test]
async fn keep_runs_removes_older_runs_after_each_commit() {
    let t = setup(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut request = data_out("acme", "kept", "Kept", "files", &[CUSTOMERS]);
    request.export.as_mut().unwrap().settings = [("keep_runs".to_string(), "2".to_string())].into();
    create_export(&mut admin, request).await;
    let export = export_name("acme", "kept");
    let folder = out(&t).join("kept");
    let partition = |run: &pb::ExportRun| format!("{}/customers_1.csv", run_dir(run, "customers"));

    let first = run_ok(&mut admin, &export).await;
    let second = run_ok(&mut admin, &export).await;
    let finalized = |run: &pb::ExportRun| {
        run.tasks
            .iter()
            .find(|task| task.name == "finalize")
            .unwrap()
            .message
            .clone()
    };
    assert!(!finalized(&second).contains("removed"), "{}", finalized(&second));
    let mut both = vec!["model.json".to_string(), partition(&first), partition(&second)];
    both.sort();
    assert_eq!(files_under(&folder), both);

    // The third run keeps itself and the second: the first run's folder goes.
    let third = run_ok(&mut admin, &export).await;
    let mut kept = vec!["model.json".to_string(), partition(&second), partition(&third)];
    kept.sort();
    assert_eq!(files_under(&folder), kept);
    assert!(
        finalized(&third).contains("removed 1 folder of an older run"),
        "{}",
        finalized(&third)
    );
    assert!(
        !folder.join(run_dir(&first, "customers")).exists(),
        "empty folders go too"
    );
    let model = read_model(&folder);
    let locations: Vec<PathBuf> = model["entities"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| path_of_location(p["location"].as_str().unwrap()))
        .collect();
    assert_eq!(
        locations,
        [std::fs::canonicalize(folder.join(partition(&third))).unwrap()]
    );

    // Down to one: only what model.json points to is left.
    update_settings(&mut admin, &export, &[("keep_runs", "1")]).await;
    let fourth = run_ok(&mut admin, &export).await;
    assert_eq!(files_under(&folder), [partition(&fourth), "model.json".to_string()]);

    // Without it, every run stays.
    update_settings(&mut admin, &export, &[]).await;
    let fifth = run_ok(&mut admin, &export).await;
    let mut all = vec!["model.json".to_string(), partition(&fourth), partition(&fifth)];
    all.sort();
    assert_eq!(files_under(&folder), all);

    // A number of runs it is, from one up.
    for bad in ["0", "-1", "two"] {
        let status = expect_code(
            admin
                .update_export(pb::UpdateExportRequest {
                    export: Some(pb::Export {
                        name: export.clone(),
                        settings: [("keep_runs".to_string(), bad.to_string())].into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["settings"]),
                    validate_only: false,
                })
                .await,
            tonic::Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), ["export.settings.keep_runs"], "{bad}");
    }
    t.stop().await;
}
