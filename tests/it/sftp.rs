//! The SFTP storage layer against a real OpenSSH server, through the public `ByteStore` API.

use crate::common::sshd::Sshd;
use bytes::Bytes;
use exportd::connectors::Check;
use exportd::connectors::retry::Failure;
use exportd::connectors::storage::ByteStore;
use exportd::connectors::storage::retrying::Retrying;
use exportd::connectors::storage::sftp::{SftpBytes, SftpConfig, SftpCredentials, check_config, probe};

/// The store as connectors use it: its requests retried.
fn store(config: &SftpConfig) -> Retrying<SftpBytes> {
    retrying(SftpBytes::new(config).expect("a good configuration"))
}

fn retrying(store: SftpBytes) -> Retrying<SftpBytes> {
    Retrying::new("sftp", store)
}

/// Bytes that differ from chunk to chunk (a wrong offset would show).
fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn names(checks: &[Check]) -> Vec<&str> {
    checks.iter().map(|c| c.name.as_str()).collect()
}

/// No line of a private key (nor the passphrase) in `message`.
fn assert_no_secret(message: &str, sshd: &Sshd) {
    for key in [&sshd.client_key, &sshd.encrypted_client_key, &sshd.host_key] {
        for line in key.private.lines().filter(|l| l.len() > 8) {
            assert!(!message.contains(line), "a private key line in: {message}");
        }
    }
    assert!(!message.contains(Sshd::PASSPHRASE), "the passphrase in: {message}");
}

#[tokio::test]
async fn sftp_streamed_upload_appears_only_after_finish_and_reads_back() {
    let Some(sshd) = Sshd::start() else { return };
    let store = store(&sshd.data_config());

    // Several MiB, in the ~1 MiB chunks the CDM writer hands over, plus an odd tail.
    let content = pattern(5 * (1 << 20) + 12_345);
    let mut upload = store
        .upload("customers/2026/01/02/0000-run-1/customers_1.csv")
        .await
        .unwrap();
    for chunk in content.chunks(1 << 20) {
        upload.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(
        store.list("").await.unwrap(),
        Vec::<String>::new(),
        "nothing before finish"
    );
    assert_eq!(
        Sshd::files_under(&sshd.folder),
        vec!["customers/2026/01/02/0000-run-1/customers_1.csv.exportd-tmp"],
        "only the temporary name exists while streaming"
    );
    assert_eq!(upload.finish().await.unwrap(), content.len() as u64);

    let path = "customers/2026/01/02/0000-run-1/customers_1.csv";
    assert_eq!(store.list("").await.unwrap(), vec![path]);
    assert_eq!(Sshd::files_under(&sshd.folder), vec![path], "no temporary file remains");
    let read = store.get(path).await.unwrap().expect("the object");
    assert!(read.as_ref() == content.as_slice(), "read back byte for byte");
    assert_eq!(
        std::fs::read(sshd.folder.join(path)).unwrap(),
        content,
        "on the server's disk too"
    );
    assert_eq!(store.get("customers/none.csv").await.unwrap(), None);

    // A small object, read back, and its URL: the absolute path on the server.
    store.put("a b/ü.json", Bytes::from_static(b"{}")).await.unwrap();
    assert_eq!(
        store.get("a b/ü.json").await.unwrap().unwrap(),
        Bytes::from_static(b"{}")
    );
    let url = store.url("a b/ü.json");
    let expected = format!(
        "sftp://127.0.0.1:{}{}/a%20b/%C3%BC.json",
        sshd.port,
        sshd.folder.display()
    );
    assert_eq!(url, expected);
    assert_eq!(store.inner().root().await.unwrap(), sshd.folder.display().to_string());

    // One SSH connection served all of it.
    assert_eq!(sshd.log().matches("Accepted publickey").count(), 1, "{}", sshd.log());
}

#[tokio::test]
async fn sftp_put_replaces_an_existing_model_json_with_and_without_posix_rename() {
    let Some(sshd) = Sshd::start() else { return };
    for posix_rename in [true, false] {
        let store = if posix_rename {
            store(&sshd.data_config())
        } else {
            retrying(SftpBytes::new(&sshd.data_config()).unwrap().without_posix_rename())
        };
        let folder = if posix_rename { "with" } else { "without" };
        let path = format!("{folder}/model.json");
        store.put(&path, Bytes::from_static(b"{\"v\":1}")).await.unwrap();
        store.put(&path, Bytes::from_static(b"{\"v\":2}")).await.unwrap();
        assert_eq!(
            store.get(&path).await.unwrap().unwrap(),
            Bytes::from_static(b"{\"v\":2}")
        );
        // A streamed upload replaces it too.
        let mut upload = store.upload(&path).await.unwrap();
        upload.write(Bytes::from_static(b"{\"v\":3}")).await.unwrap();
        upload.finish().await.unwrap();
        assert_eq!(
            std::fs::read(sshd.folder.join(&path)).unwrap(),
            b"{\"v\":3}",
            "posix-rename: {posix_rename}"
        );
    }
    assert_eq!(
        Sshd::files_under(&sshd.folder),
        vec!["with/model.json", "without/model.json"],
        "no temporary files remain"
    );
}

#[tokio::test]
async fn sftp_list_delete_and_prune() {
    let Some(sshd) = Sshd::start() else { return };
    let store = store(&sshd.data_config());
    for path in [
        "x/model.json",
        "x/e/2026/01/p_1.csv",
        "x/e/2026/01/p_2.csv",
        "x/e/2026/02/p_1.csv",
        "y/z.csv",
    ] {
        store.put(path, Bytes::from(path.as_bytes().to_vec())).await.unwrap();
    }
    // A temporary file left by someone is not an object.
    std::fs::write(sshd.folder.join("x/e/2026/01/p_3.csv.exportd-tmp"), b"partial").unwrap();
    assert_eq!(
        store.list("x/e").await.unwrap(),
        vec!["x/e/2026/01/p_1.csv", "x/e/2026/01/p_2.csv", "x/e/2026/02/p_1.csv"]
    );
    assert_eq!(
        store.list("x/e/").await.unwrap().len(),
        3,
        "a trailing slash is the same folder"
    );
    assert_eq!(store.list("nowhere").await.unwrap(), Vec::<String>::new());
    assert_eq!(store.list("").await.unwrap().len(), 5);

    store.delete("x/e/2026/02/p_1.csv").await.unwrap();
    assert!(!sshd.folder.join("x/e/2026/02").exists(), "an emptied folder is pruned");
    assert!(sshd.folder.join("x/e/2026/01").exists(), "a full one stays");
    store.delete("x/e/2026/02/p_1.csv").await.unwrap(); // already gone: fine
    store.delete("y/z.csv").await.unwrap();
    assert!(!sshd.folder.join("y").exists());
    assert!(sshd.folder.exists(), "never the root");
    assert!(store.delete("../escape").await.is_err(), "paths stay under the root");
    assert_eq!(
        store.list("").await.unwrap(),
        vec!["x/e/2026/01/p_1.csv", "x/e/2026/01/p_2.csv", "x/model.json"]
    );
}

#[tokio::test]
async fn sftp_abort_and_drop_leave_nothing() {
    let Some(sshd) = Sshd::start() else { return };
    let store = store(&sshd.data_config());
    let mut upload = store.upload("e/part_1.csv").await.unwrap();
    upload.write(Bytes::from(pattern(3 << 20))).await.unwrap();
    upload.abort().await;
    assert_eq!(
        Sshd::files_under(&sshd.folder),
        Vec::<String>::new(),
        "abort removes the temp file"
    );

    let mut dropped = store.upload("e/part_2.csv").await.unwrap();
    dropped.write(Bytes::from_static(b"a,b\n")).await.unwrap();
    drop(dropped);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !Sshd::files_under(&sshd.folder).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped upload's temp file is removed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(store.list("").await.unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn sftp_concurrent_operations_share_one_connection() {
    let Some(sshd) = Sshd::start() else { return };
    let store = std::sync::Arc::new(store(&sshd.data_config()));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut upload = store.upload(&format!("p/{i}.csv")).await?;
                upload.write(Bytes::from(pattern(300_000 + i))).await?;
                upload.finish().await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.list("p").await.unwrap().len(), 8);
    for i in 0..8 {
        let read = store.get(&format!("p/{i}.csv")).await.unwrap().unwrap();
        assert!(read.as_ref() == pattern(300_000 + i).as_slice());
    }
    assert_eq!(sshd.log().matches("Accepted publickey").count(), 1, "{}", sshd.log());
}

#[tokio::test]
async fn sftp_probe_passes_every_step_and_creates_a_missing_folder() {
    let Some(sshd) = Sshd::start() else { return };
    // Relative to the login folder, and missing: created by the probe (as by a first write).
    let config = sshd.config("exports/new");
    let checks = probe(&config).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    assert_eq!(
        names(&checks),
        [
            "dns",
            "tcp_connect",
            "ssh_handshake",
            "authentication",
            "sftp_subsystem",
            "folder_exists",
            "folder_writable"
        ]
    );
    assert!(checks[5].message.contains("was created"), "{checks:#?}");
    assert!(sshd.home.join("exports/new").is_dir());
    assert_eq!(
        Sshd::files_under(&sshd.home),
        Vec::<String>::new(),
        "the probe file is removed"
    );
    // Now it exists.
    let checks = probe(&config).await;
    assert!(
        checks.iter().all(|c| c.ok) && checks[5].message.contains("exists"),
        "{checks:#?}"
    );

    // A store on a missing relative folder creates it on its first write; URLs are absolute.
    let store = store(&sshd.config("~/other/deeper"));
    store.put("model.json", Bytes::from_static(b"{}")).await.unwrap();
    assert!(sshd.home.join("other/deeper/model.json").is_file());
    assert_eq!(
        store.url("model.json"),
        format!(
            "sftp://127.0.0.1:{}{}/other/deeper/model.json",
            sshd.port,
            sshd.home.display()
        )
    );

    // An encrypted key works with its passphrase, and is refused at configuration without.
    let mut encrypted = sshd.data_config();
    encrypted.credentials = SftpCredentials::PrivateKey {
        key: sshd.encrypted_client_key.private.clone(),
        passphrase: Some(Sshd::PASSPHRASE.into()),
    };
    assert!(probe(&encrypted).await.iter().all(|c| c.ok));
    encrypted.credentials = SftpCredentials::PrivateKey {
        key: sshd.encrypted_client_key.private.clone(),
        passphrase: None,
    };
    let error = check_config(&encrypted).unwrap_err();
    assert_eq!(error.key, "private_key");
    assert_no_secret(&error.message, &sshd);
    let checks = probe(&encrypted).await;
    assert_eq!(names(&checks), ["config"]);
}

#[tokio::test]
async fn sftp_wrong_host_key_fails_naming_both_fingerprints_and_writes_nothing() {
    let Some(sshd) = Sshd::start() else { return };
    let other_dir = tempfile::tempdir().unwrap();
    let other = crate::common::sshd::keygen(other_dir.path(), "impostor", "");
    let mut config = sshd.data_config();
    config.host_key = other.public.clone();
    assert_eq!(
        check_config(&config),
        Ok(()),
        "a well-formed key: only the server can tell"
    );

    let checks = probe(&config).await;
    assert_eq!(names(&checks), ["dns", "tcp_connect", "ssh_handshake"], "{checks:#?}");
    let failed = checks.last().unwrap();
    assert!(!failed.ok);
    for fingerprint in [&sshd.host_key.fingerprint, &other.fingerprint] {
        assert!(
            failed.message.contains(fingerprint.as_str()),
            "{fingerprint} in {}",
            failed.message
        );
    }

    let store = store(&config);
    let failure = store
        .put("model.json", Bytes::from_static(b"{}"))
        .await
        .expect_err("a mismatched host key");
    let Failure::Permanent { message } = &failure else {
        panic!("a host key mismatch is permanent: {failure:?}")
    };
    assert!(
        message.contains(&sshd.host_key.fingerprint) && message.contains(&other.fingerprint),
        "{message}"
    );
    assert!(message.contains("ssh_handshake"), "{message}");
    assert_no_secret(message, &sshd);
    assert!(store.upload("a.csv").await.is_err());
    assert_eq!(
        Sshd::files_under(&sshd.folder),
        Vec::<String>::new(),
        "nothing was written"
    );
    assert!(!sshd.log().contains("Accepted"), "never authenticated: {}", sshd.log());
}

#[tokio::test]
async fn sftp_wrong_private_key_fails_authentication_without_showing_it() {
    let Some(sshd) = Sshd::start() else { return };
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = crate::common::sshd::keygen(other_dir.path(), "stranger", "");
    let mut config = sshd.data_config();
    config.credentials = SftpCredentials::PrivateKey {
        key: stranger.private.clone(),
        passphrase: None,
    };
    let checks = probe(&config).await;
    assert_eq!(
        names(&checks),
        ["dns", "tcp_connect", "ssh_handshake", "authentication"],
        "{checks:#?}"
    );
    let failed = checks.last().unwrap();
    assert!(!failed.ok && failed.message.contains("refused"), "{}", failed.message);
    assert!(
        failed.message.contains(&stranger.fingerprint),
        "names the key by fingerprint: {}",
        failed.message
    );
    for line in stranger.private.lines().filter(|l| l.len() > 8) {
        assert!(!failed.message.contains(line), "{}", failed.message);
    }

    let failure = store(&config)
        .put("a.csv", Bytes::from_static(b"x"))
        .await
        .expect_err("a refused key");
    let Failure::Permanent { message } = &failure else {
        panic!("a refused key is permanent: {failure:?}")
    };
    assert!(message.contains("authentication"), "{message}");
    for line in stranger.private.lines().filter(|l| l.len() > 8) {
        assert!(!message.contains(line), "{message}");
    }
    assert_eq!(Sshd::files_under(&sshd.folder), Vec::<String>::new());

    // A password the server does not take (it accepts public keys only).
    config.credentials = SftpCredentials::Password("not-the-password-1234".into());
    let checks = probe(&config).await;
    let failed = checks.last().unwrap();
    assert_eq!(failed.name, "authentication");
    assert!(!failed.message.contains("not-the-password-1234"), "{}", failed.message);
    let failure = store(&config).list("").await.expect_err("a refused password");
    assert!(!failure.message().contains("not-the-password-1234"), "{failure:?}");
}

#[tokio::test]
async fn sftp_unreachable_server_is_transient_and_a_folder_that_is_a_file_is_reported() {
    let Some(sshd) = Sshd::start() else { return };
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = sshd.data_config();
    config.port = port;
    let checks = probe(&config).await;
    assert_eq!(names(&checks), ["dns", "tcp_connect"], "{checks:#?}");
    assert!(!checks[1].ok);
    let failure = store(&config).get("model.json").await.expect_err("refused");
    assert!(matches!(failure, Failure::Transient { .. }), "{failure:?}");

    let mut config = sshd.data_config();
    config.host = "no-such-host.invalid".into();
    let checks = probe(&config).await;
    assert_eq!(names(&checks), ["dns"], "{checks:#?}");

    std::fs::write(sshd.folder.join("plain"), b"a file").unwrap();
    let config = sshd.config(sshd.folder.join("plain").to_str().unwrap());
    let checks = probe(&config).await;
    let failed = checks.last().unwrap();
    assert_eq!(
        (failed.name.as_str(), failed.ok),
        ("folder_exists", false),
        "{checks:#?}"
    );
    assert!(failed.message.contains("not a folder"), "{}", failed.message);
    let failure = store(&config)
        .put("m.json", Bytes::from_static(b"{}"))
        .await
        .expect_err("not a folder");
    assert!(matches!(failure, Failure::Permanent { .. }), "{failure:?}");
}

#[tokio::test]
async fn sftp_a_lost_connection_is_retried_on_a_new_one() {
    let Some(sshd) = Sshd::start() else { return };
    let store = store(&sshd.data_config());
    store.put("a.csv", Bytes::from_static(b"1")).await.unwrap();
    assert_eq!(sshd.kill_sessions(), 1, "one connection to end");
    // The request that meets the lost connection is retried on a new one: the caller sees
    // no failure.
    store.put("b.csv", Bytes::from_static(b"2")).await.unwrap();
    assert_eq!(store.list("").await.unwrap(), vec!["a.csv", "b.csv"]);
    assert_eq!(sshd.log().matches("Accepted publickey").count(), 2, "{}", sshd.log());
}

/// A connection lost between two writes of a streamed file, and again before its rename: the
/// file is reopened where it was, and what lands is byte for byte what was written.
#[tokio::test]
async fn sftp_a_streamed_file_survives_lost_connections() {
    let Some(sshd) = Sshd::start() else { return };
    let store = store(&sshd.data_config());
    let content = pattern(3 * (1 << 20) + 777);
    let path = "customers/2026/01/02/0000-run-1/customers_1.csv";
    let mut upload = store.upload(path).await.unwrap();
    let chunks: Vec<&[u8]> = content.chunks(1 << 20).collect();
    upload.write(Bytes::copy_from_slice(chunks[0])).await.unwrap();
    assert_eq!(sshd.kill_sessions(), 1);
    upload.write(Bytes::copy_from_slice(chunks[1])).await.unwrap();
    upload.write(Bytes::copy_from_slice(chunks[2])).await.unwrap();
    upload.write(Bytes::copy_from_slice(chunks[3])).await.unwrap();
    assert_eq!(sshd.kill_sessions(), 1);
    assert_eq!(upload.finish().await.unwrap(), content.len() as u64);
    assert_eq!(Sshd::files_under(&sshd.folder), vec![path], "no temporary file remains");
    assert!(
        std::fs::read(sshd.folder.join(path)).unwrap() == content,
        "the file on the server is what was written"
    );
    assert_eq!(sshd.log().matches("Accepted publickey").count(), 3, "{}", sshd.log());
}

#[tokio::test]
async fn sftp_a_server_that_never_answers_times_out_as_transient() {
    let Some(sshd) = Sshd::start() else { return };
    // Accepts TCP connections and says nothing; counts them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = sshd.data_config();
    config.port = silent.local_addr().unwrap().port();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            sockets.push(socket);
        }
    });
    let store = retrying(
        SftpBytes::new(&config)
            .unwrap()
            .with_connect_timeout(std::time::Duration::from_millis(500)),
    );
    let failure = store.list("").await.expect_err("a silent server");
    let Failure::Transient { message, .. } = &failure else {
        panic!("a timeout is transient: {failure:?}")
    };
    assert!(
        message.contains("ssh_handshake") && message.contains("timed out"),
        "{message}"
    );
    // A timeout is retried, six attempts in all (PRODUCT.md §11), each on a new connection.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 6);
    held.abort();
}
