//! Client-side commands of the CLI that talk to a running server.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

use crate::pb;

fn state_name(state: i32) -> &'static str {
    pb::RunState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("RUN_STATE_"))
        .unwrap_or("UNKNOWN")
}

/// What a watcher sees of a run: its step (state and current task, which decides when a new
/// line is due) and the whole line with the counts.
fn progress_line(run: &pb::ExportRun) -> (String, String) {
    let task = run
        .tasks
        .iter()
        .rev()
        .find(|t| t.state != pb::RunState::Queued as i32)
        .map(|t| format!("{} ({})", t.name, t.message))
        .unwrap_or_default();
    let state = state_name(run.state);
    let line = format!(
        "{state} · {task} · {} of {} records · {} bytes",
        run.records_exported, run.records_total, run.bytes_written
    );
    (format!("{state} {task}"), line)
}

/// An error with what caused it, outermost first ("transport error: tcp connect error:
/// Connection refused (os error 111)"): tonic's own message alone says only "transport error".
fn causes(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let text = current.to_string();
        // Wrappers often repeat their source's message; say each thing once.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = current.source();
    }
    parts.join(": ")
}

/// Starts a run of `export` and, with `watch`, shows its progress until it ends. Returns
/// whether it succeeded (without `watch`: whether it was accepted).
pub async fn run_export(server: &str, token: &str, export: &str, watch: bool) -> Result<bool, String> {
    let url = if server.starts_with("http") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let channel = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad server address '{server}': {e}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| {
            format!(
                "cannot reach exportd at {url}: {} (is `exportd serve` running there? the address comes from \
                 --server, EXPORTD_SERVER or the configuration's `listen`)",
                causes(&e)
            )
        })?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token is not valid metadata".to_string())?;
    let mut client = pb::export_service_client::ExportServiceClient::new(InterceptedService::new(
        channel,
        move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", bearer.clone());
            Ok(request)
        },
    ));
    let run = client
        .run_export(pb::RunExportRequest {
            name: export.to_string(),
            request_id: String::new(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    println!("started {}", run.name);
    if !watch {
        return Ok(true);
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut stream = client
        .watch_export_run(pb::WatchExportRunRequest { name: run.name.clone() })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    // Without a terminal, progress goes to stderr as lines, one per change of state or task,
    // starting with the run as it was accepted.
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut shown = String::new();
    let mut show = |update: &pb::ExportRun| {
        let (step, line) = progress_line(update);
        if plain && step != shown {
            eprintln!("{line}");
            shown = step;
        }
        bar.set_message(line);
    };
    show(&run);
    let mut last = run;
    while let Some(update) = stream
        .message()
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
    {
        show(&update);
        last = update;
    }
    bar.finish_and_clear();
    let state = state_name(last.state);
    match pb::RunState::try_from(last.state) {
        Ok(pb::RunState::Succeeded) => {
            println!(
                "{} SUCCEEDED: {} records, {} bytes",
                last.name, last.records_exported, last.bytes_written
            );
            Ok(true)
        }
        Ok(pb::RunState::Skipped) => {
            println!("{} SKIPPED: {}", last.name, last.skip_reason);
            Ok(false)
        }
        _ => {
            let why = last.error.map(|e| e.message).unwrap_or_default();
            println!("{} {state}: {why}", last.name);
            Ok(false)
        }
    }
}
