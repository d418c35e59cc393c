//! The README's walkthrough runs exactly as written: the `sh` block after `<!-- walkthrough -->`
//! is run by bash in an empty folder, with the `exportd` binary and grpcurl on the PATH, from
//! `serve --dev` to a finished run. If the README and the service drift apart, this fails.
//!
//! grpcurl comes from `EXPORTD_TEST_GRPCURL` (`.ci/run` installs it from PyPI) or the PATH;
//! without it the test says so and passes, outside CI only: under `CI=true` it fails.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The walkthrough block of the README.
fn walkthrough() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let (_, after) = readme
        .split_once("<!-- walkthrough -->\n```sh\n")
        .expect("the README has a walkthrough block");
    let (block, _) = after.split_once("\n```").expect("the walkthrough block ends");
    block.to_string()
}

fn grpcurl() -> Option<PathBuf> {
    let candidate = std::env::var("EXPORTD_TEST_GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let works = Command::new(&candidate)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        return None;
    }
    // A bare name: where the PATH has it.
    let path = PathBuf::from(&candidate);
    if path.is_absolute() {
        return Some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(&candidate))
            .find(|p| p.is_file())
    })
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let Some(grpcurl) = required(grpcurl(), "grpcurl") else {
        return;
    };
    let folder = tempfile::tempdir().unwrap();
    let bin = folder.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(EXE, bin.join("exportd")).unwrap();
    std::os::unix::fs::symlink(&grpcurl, bin.join("grpcurl")).unwrap();
    let work = folder.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

    // Scaffolding around the block, not part of it: a failing command must not leave the
    // server running.
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{}", walkthrough());
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&work)
        .env_clear()
        .env("PATH", path)
        .env("HOME", folder.path())
        // An ephemeral port: tests run side by side.
        .env("EXPORTD_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            panic!("the walkthrough did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let log = std::fs::read_to_string(work.join("serve.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "the walkthrough failed:\n{stdout}\n{stderr}\nserver:\n{log}"
    );
    assert!(
        stdout.contains("environments/demo/exports/nightly/runs/") && stdout.contains("SUCCEEDED: 2 records"),
        "{stdout}"
    );
    // `cat model.json` printed the CDM folder's manifest.
    assert!(stdout.contains("\"entities\""), "{stdout}");
    assert!(
        work.join("exportd-data/exports/demo/files/nightly/model.json")
            .is_file()
    );
}
