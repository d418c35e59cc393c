//! Concurrent start-ups on one database migrate the schema once (PRODUCT.md §16): `serve` and
//! `migrate` take an advisory lock around migrating on PostgreSQL (the write lock on SQLite),
//! so the processes that did not get it first wait and then find nothing pending, instead of
//! racing on `CREATE TABLE`.

use std::process::{Command, Stdio};

use crate::common::*;

#[tokio::test]
async fn three_servers_started_at_once_on_an_empty_database_all_come_up_and_migrate_once() {
    if backend() != "postgres" {
        // Several processes share one database only on PostgreSQL.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = server_env(&database_url, &[]);
    let envs = borrowed(&envs);
    let starting: Vec<_> = (0..3).map(|_| ServeProcess::spawn(dir.path(), &[], &envs)).collect();
    let servers: Vec<ServeProcess> = starting.into_iter().map(|s| s.ready()).collect();

    let migrated: Vec<bool> = servers
        .iter()
        .map(|s| s.logs().contains("applied database migrations"))
        .collect();
    assert_eq!(
        migrated.iter().filter(|m| **m).count(),
        1,
        "exactly one server migrates; logs:\n{}",
        servers.iter().map(|s| s.logs()).collect::<Vec<_>>().join("\n---\n")
    );
    // Every server answers, on the one schema.
    let (code, _, err) = run(
        &[
            "environment",
            "create",
            "acme",
            "--kind",
            "b2c",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &envs,
    );
    assert_eq!(code, 0, "{err}");
    for server in &servers {
        let (_, mut connections, _) = clients(&server.addr, "acme").await;
        connections
            .create_connection(local_files(
                "acme",
                &format!("files-{}", server.child.id()),
                "Files",
                false,
            ))
            .await
            .unwrap_or_else(|s| panic!("server {} answers: {s:?}\n{}", server.addr, server.logs()));
    }
    let (code, out, err) = run(&["migrate", "--data-dir", dir.path().to_str().unwrap()], &envs);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is up to date"), "{out}");
}

#[tokio::test]
async fn three_migrate_commands_at_once_apply_the_migrations_once() {
    // On SQLite too: an operator may run `migrate` beside a starting server.
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = server_env(&database_url, &[]);
    let children: Vec<_> = (0..3)
        .map(|_| {
            let mut command = Command::new(EXE);
            command
                .args(["migrate", "--data-dir", dir.path().to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in &envs {
                command.env(k, v);
            }
            command.spawn().unwrap()
        })
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let mut applied = 0;
    for output in &outputs {
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        if out.starts_with("applied ") {
            applied += 1;
        } else {
            assert!(out.contains("is up to date"), "{out}");
        }
    }
    assert_eq!(applied, 1, "exactly one command migrates");
}
