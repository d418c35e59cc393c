//! Run fixtures: the `acme` server the run tests start from, schedules, and the calls runs
//! tests make again and again.

use std::path::PathBuf;

use exportd::auth::Role;
use exportd::pb;

use super::*;

pub const ORDERS: &str = "environments/acme/entities/orders";

/// A server whose workers execute nothing: runs stay QUEUED (or WAITING_FOR_DEPENDENCIES).
pub fn api_only() -> Options {
    Options::default().var("EXPORTD_WORKERS", "0")
}

/// Where the `files` connection writes.
pub fn out(t: &TestServer) -> PathBuf {
    t.data_dir.path().join("out")
}

/// acme with the customers entity (ten records), an empty `orders` entity, the rule segment
/// `vip` (5 members) and two local-files connections: `files` (shared, writing under
/// `<data dir>/out`) and `private` (not shared, under `<data dir>/private`).
pub async fn setup(options: Options) -> TestServer {
    let t = TestServer::start_with(options).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    catalog
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    catalog
        .create_entity(customers_entity("acme", "orders", pb::EntityKind::Other))
        .await
        .unwrap();
    write_all(&mut catalog, vec![write(CUSTOMERS, ten_customers(), &[])])
        .await
        .unwrap();
    let vip = create_rule_segment(&mut catalog, "acme", "vip", "customers", "vip == true")
        .await
        .unwrap();
    assert_eq!(vip.member_count, 5);
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(local_files_at("acme", "files", "Files", true, &out(&t)))
        .await
        .unwrap();
    connections
        .create_connection(local_files_at(
            "acme",
            "private",
            "Private",
            false,
            &t.data_dir.path().join("private"),
        ))
        .await
        .unwrap();
    t
}

pub fn schedule_off() -> pb::Schedule {
    pb::Schedule {
        enabled: false,
        trigger: Some(pb::schedule::Trigger::SystemRefresh(pb::SystemRefreshTrigger {})),
        next_run_time: None,
    }
}

/// On, on a cron that does not come due during a test (midnight on January 1st).
pub fn yearly_cron() -> pb::Schedule {
    pb::Schedule {
        enabled: true,
        trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
            expression: "0 0 1 1 *".into(),
            time_zone: String::new(),
        })),
        next_run_time: None,
    }
}

pub fn with_schedule(mut request: pb::CreateExportRequest, schedule: pb::Schedule) -> pb::CreateExportRequest {
    request.export.as_mut().unwrap().schedule = Some(schedule);
    request
}

pub async fn create_export(client: &mut Exports, request: pb::CreateExportRequest) -> pb::Export {
    client.create_export(request).await.unwrap().into_inner()
}

pub async fn list_runs(client: &mut Exports, parent: &str, filter: &str, order_by: &str) -> Vec<pb::ExportRun> {
    client
        .list_export_runs(pb::ListExportRunsRequest {
            parent: parent.into(),
            filter: filter.into(),
            order_by: order_by.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("ListExportRuns {parent} {filter:?} {order_by:?}: {s:?}"))
        .into_inner()
        .runs
}

pub async fn start_refresh(catalog: &mut Catalog, name: &str) {
    catalog
        .start_refresh(pb::StartRefreshRequest { name: name.into() })
        .await
        .unwrap();
}

pub async fn complete_refresh(catalog: &mut Catalog, name: &str) {
    catalog
        .complete_refresh(pb::CompleteRefreshRequest { name: name.into() })
        .await
        .unwrap();
}

/// An entity `big` with `count` small records, written in messages of 10,000.
pub async fn big_entity(t: &TestServer, count: usize) -> String {
    let mut catalog = t.catalog("acme", Role::Admin).await;
    catalog
        .create_entity(pb::CreateEntityRequest {
            parent: ACME.into(),
            entity_id: "big".into(),
            entity: Some(pb::Entity {
                display_name: "Big".into(),
                kind: pb::EntityKind::Other as i32,
                fields: vec![field("id", pb::FieldType::String), field("n", pb::FieldType::Int64)],
                primary_key: "id".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let name = "environments/acme/entities/big".to_string();
    let messages: Vec<pb::WriteRecordsRequest> = (0..count)
        .collect::<Vec<_>>()
        .chunks(10_000)
        .map(|chunk| {
            write(
                &name,
                chunk
                    .iter()
                    .map(|i| serde_json::json!({"id": format!("r{i:07}"), "n": i}))
                    .collect(),
                &[],
            )
        })
        .collect();
    let written = write_all(&mut catalog, messages).await.unwrap();
    assert_eq!(written.upserted as usize, count);
    name
}
