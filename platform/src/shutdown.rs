//! The process-wide stop signal.

use tokio_util::sync::CancellationToken;

/// A token that is cancelled on Ctrl-C or SIGTERM. Every task of a process watches a child of it.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop signal received; shutting down");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Once shutdown has begun, a process that has not stopped after this long exits anyway. Below
/// the 30 s a Kubernetes pod gets by default (`terminationGracePeriodSeconds`) and the 30 s
/// `docker-compose.yml` gives (`stop_grace_period`), so the process ends itself, with its log
/// line, before anything SIGKILLs it.
pub const LIMIT: std::time::Duration = std::time::Duration::from_secs(25);

/// Runs `stopped` (a process's "wait until every task is done") to its end. Once `cancel` fires
/// it has [`LIMIT`] left; past that the process exits with status 1, so a stop is always bounded.
/// Nothing is lost by that: work in flight is redone after a restart.
pub async fn run_bounded(
    cancel: &CancellationToken,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    tokio::select! {
        _ = &mut stopped => return,
        _ = cancel.cancelled() => {}
    }
    if tokio::time::timeout(LIMIT, stopped).await.is_err() {
        tracing::error!(limit_s = LIMIT.as_secs(), "shutdown took too long; exiting");
        std::process::exit(1);
    }
    tracing::info!("stopped cleanly");
}

/// What a binary's `main` returns: success, or the error on one line of stderr and exit status
/// 1 (not the `Debug` dump a `Result` from `main` prints), so a misconfiguration reads as one
/// sentence that names the setting.
pub fn exit<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            tracing::error!(error = %line, "cannot start");
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}
