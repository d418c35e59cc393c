//! Clients in other languages work: the Python client is generated from `proto/` with
//! grpcio-tools into a temporary folder, and `tests/sdk/python_flow.py` drives a whole flow
//! against a real server with the generated stubs only (connection, entity, records, segment,
//! export, run, watch to the end).
//!
//! Python with `grpcio` and `grpcio-tools` comes from `EXPORTD_TEST_PYTHON` (`.ci/run` installs
//! a venv) or `python3`. Without them the test says so and passes, outside CI only: under
//! `CI=true` it fails.

use std::path::Path;
use std::process::Command;

use exportd::auth::Role;

use crate::common::*;

/// A Python that can import grpc and grpc_tools, if there is one.
fn python() -> Option<String> {
    let candidate = std::env::var("EXPORTD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let usable = Command::new(&candidate)
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    usable.then_some(candidate)
}

fn generate(python: &str, out: &Path) {
    let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut files: Vec<String> = Vec::new();
    for dir in ["exportd/v1", "google/rpc", "google/type"] {
        for entry in std::fs::read_dir(protos.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "proto") {
                files.push(path.strip_prefix(&protos).unwrap().display().to_string());
            }
        }
    }
    let output = Command::new(python)
        .current_dir(&protos)
        .args(["-m", "grpc_tools.protoc", "-I", "."])
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "grpc_tools.protoc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_generated_python_client_drives_a_whole_flow() {
    let Some(python) = required(python(), "Python with grpcio and grpcio-tools") else {
        return;
    };
    let generated = tempfile::tempdir().unwrap();
    generate(&python, generated.path());
    assert!(generated.path().join("exportd/v1/export_service_pb2_grpc.py").is_file());

    let t = TestServer::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/python_flow.py");
    let token = t.token(&[("acme", Role::Admin)]);
    let addr = t.addr.to_string();
    let generated_dir = generated.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(script)
            .arg(&generated_dir)
            .arg(addr)
            .arg(token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Python flow failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Four of the five records were kept; three have ltv >= 200.
    let line = stdout.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("FLOW SUCCEEDED 3 environments/acme/exports/py-audience/runs/"),
        "{stdout}"
    );

    // What the Python client did is what the server holds: the run, and its CDM folder.
    let mut exports = t.exports("acme", Role::Viewer).await;
    let run_name = line.split(' ').nth(3).unwrap();
    let run = get_run(&mut exports, run_name).await;
    assert_eq!(run_state(&run), exportd::pb::RunState::Succeeded);
    let folder = t.state.settings.exports_root.join("acme/py-files/py-audience");
    assert!(folder.join("model.json").is_file(), "{:?}", files_under(&folder));
    t.stop().await;
}
