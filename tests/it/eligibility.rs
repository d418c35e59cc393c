//! Segment eligibility through ListEligibleSegments: environment kind × connection type ×
//! segment type × target option, plus profile limits and minimum sizes.

use exportd::auth::Role;
use exportd::pb;
use serde_json::json;
use tonic::Code;

use crate::common::*;

fn connection(
    env: &str,
    id: &str,
    r#type: &str,
    config: &[(&str, &str)],
    secrets: &[(&str, &str)],
    limit: i64,
) -> pb::CreateConnectionRequest {
    pb::CreateConnectionRequest {
        parent: format!("environments/{env}"),
        connection_id: id.into(),
        connection: Some(pb::Connection {
            display_name: id.into(),
            r#type: r#type.into(),
            config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            secrets: secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            profile_limit: limit,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates `count` records in an entity and a pushed segment holding all of them.
async fn segment_of(
    catalog: &mut Catalog,
    env: &str,
    entity: &str,
    kind: pb::EntityKind,
    id: &str,
    display: &str,
    count: usize,
) {
    let entity_name = format!("environments/{env}/entities/{entity}");
    if catalog
        .get_entity(pb::GetEntityRequest {
            name: entity_name.clone(),
        })
        .await
        .is_err()
    {
        catalog
            .create_entity(customers_entity(env, entity, kind))
            .await
            .unwrap();
    }
    let keys: Vec<String> = (0..count).map(|i| format!("{id}-{i}")).collect();
    let records = keys
        .iter()
        .map(|k| json!({"id": k, "email": format!("{k}@x.io")}))
        .collect();
    write_all(catalog, vec![write(&entity_name, records, &[])])
        .await
        .unwrap();
    let segment = create_pushed_segment(catalog, env, id, entity, display).await;
    set_members(catalog, &segment.name, vec![keys]).await.unwrap();
}

async fn eligible(
    catalog: &mut Catalog,
    connection: &str,
    settings: &[(&str, &str)],
) -> Vec<(String, bool, bool, bool, String)> {
    let response = catalog
        .list_eligible_segments(pb::ListEligibleSegmentsRequest {
            connection: connection.into(),
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    response
        .segments
        .into_iter()
        .map(|s| (s.display_name, s.eligible, s.over_limit, s.under_minimum, s.reason))
        .collect()
}

#[tokio::test]
async fn b2b_people_targets_take_contact_segments_only() {
    let t = TestServer::start().await;
    let mut catalog = t.catalog("globex", Role::Admin).await;
    segment_of(
        &mut catalog,
        "globex",
        "accounts",
        pb::EntityKind::Account,
        "big",
        "Big accounts",
        5,
    )
    .await;
    segment_of(
        &mut catalog,
        "globex",
        "contacts",
        pb::EntityKind::Contact,
        "buyers",
        "Buyers",
        400,
    )
    .await;
    let mut connections = t.connections("globex", Role::Admin).await;
    connections
        .create_connection(connection(
            "globex",
            "mc",
            "mailchimp",
            &[("server_prefix", "us1"), ("audience_id", "a")],
            &[("api_key", "k")],
            0,
        ))
        .await
        .unwrap();
    connections
        .create_connection(connection(
            "globex",
            "li",
            "linkedin-ads",
            &[("ad_account_id", "1")],
            &[("access_token", "t")],
            0,
        ))
        .await
        .unwrap();
    connections
        .create_connection(connection("globex", "files", "local-files", &[], &[], 0))
        .await
        .unwrap();
    connections
        .create_connection(connection("globex", "capped", "local-files", &[], &[], 100))
        .await
        .unwrap();

    let mailchimp = eligible(&mut catalog, "environments/globex/connections/mc", &[]).await;
    assert_eq!(mailchimp[0].0, "Big accounts");
    assert!(!mailchimp[0].1);
    assert_eq!(
        mailchimp[0].4,
        "The following segment is not eligible for this export destination: 'Big accounts'. Please choose only segments of type ContactProfile and try again."
    );
    assert!(mailchimp[1].1, "contact segments are eligible");

    // LinkedIn: CONTACT (default) like Mailchimp; COMPANY takes accounts and refuses contacts.
    let contact = eligible(&mut catalog, "environments/globex/connections/li", &[]).await;
    assert_eq!(contact.iter().map(|s| s.1).collect::<Vec<_>>(), vec![false, true]);
    let company = eligible(
        &mut catalog,
        "environments/globex/connections/li",
        &[("target", "COMPANY")],
    )
    .await;
    assert!(company[0].1, "account segments go to LinkedIn COMPANY audiences");
    assert!(!company[1].1);
    assert!(company[1].4.contains("segments of type Account"), "{}", company[1].4);
    // Five accounts are under LinkedIn's minimum of 300; 400 contacts are not.
    assert!(company[0].3 && !contact[1].3);

    // Storage targets take every segment as it is; a connection may set its own limit.
    let files = eligible(&mut catalog, "environments/globex/connections/files", &[]).await;
    assert!(files.iter().all(|s| s.1 && !s.2 && !s.3));
    let capped = eligible(&mut catalog, "environments/globex/connections/capped", &[]).await;
    assert_eq!(capped.iter().map(|s| s.2).collect::<Vec<_>>(), vec![false, true]);
    assert!(
        capped[1].4.contains("400") && capped[1].4.contains("100"),
        "{}",
        capped[1].4
    );

    // Bad settings name the key; unknown connections are NOT_FOUND.
    let status = catalog
        .list_eligible_segments(pb::ListEligibleSegmentsRequest {
            connection: "environments/globex/connections/li".into(),
            settings: [("target".to_string(), "PLANETS".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), vec!["settings.target"]);
    expect_code(
        catalog
            .list_eligible_segments(pb::ListEligibleSegmentsRequest {
                connection: "environments/globex/connections/none".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    t.stop().await;
}

#[tokio::test]
async fn b2c_segments_go_anywhere_within_limits() {
    let t = TestServer::start().await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    segment_of(
        &mut catalog,
        "acme",
        "profiles",
        pb::EntityKind::Profile,
        "small",
        "Small",
        299,
    )
    .await;
    segment_of(
        &mut catalog,
        "acme",
        "profiles",
        pb::EntityKind::Profile,
        "exact",
        "Exact",
        300,
    )
    .await;
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(connection(
            "acme",
            "fb",
            "facebook-ads",
            &[("ad_account_id", "1")],
            &[("access_token", "t")],
            0,
        ))
        .await
        .unwrap();
    connections
        .create_connection(connection(
            "acme",
            "li",
            "linkedin-ads",
            &[("ad_account_id", "1")],
            &[("access_token", "t")],
            0,
        ))
        .await
        .unwrap();
    connections
        .create_connection(connection(
            "acme",
            "li-capped",
            "linkedin-ads",
            &[("ad_account_id", "1")],
            &[("access_token", "t")],
            299,
        ))
        .await
        .unwrap();

    let facebook = eligible(&mut catalog, "environments/acme/connections/fb", &[]).await;
    assert!(facebook.iter().all(|s| s.1 && !s.2 && !s.3), "{facebook:?}");
    let linkedin = eligible(&mut catalog, "environments/acme/connections/li", &[]).await;
    let by_name: std::collections::BTreeMap<_, _> = linkedin.iter().map(|s| (s.0.as_str(), s)).collect();
    assert!(
        by_name["Small"].1 && by_name["Small"].3,
        "299 is under the minimum of 300"
    );
    assert!(!by_name["Exact"].3);
    let capped = eligible(&mut catalog, "environments/acme/connections/li-capped", &[]).await;
    let by_name: std::collections::BTreeMap<_, _> = capped.iter().map(|s| (s.0.as_str(), s)).collect();
    assert!(by_name["Exact"].2 && !by_name["Small"].2, "300 is over a limit of 299");

    // Viewers may ask about shared connections only.
    let mut viewer = t.catalog("acme", Role::Viewer).await;
    expect_code(
        viewer
            .list_eligible_segments(pb::ListEligibleSegmentsRequest {
                connection: "environments/acme/connections/fb".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    t.stop().await;
}
