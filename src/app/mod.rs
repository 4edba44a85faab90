//! The commands behind the `pmtr` binary. `main.rs` only parses the command line.

pub mod control;
pub mod demo;
pub mod run;
pub mod servers;
pub mod status;
pub mod test_email;
pub mod tools;

use std::time::Duration;

/// Sets up logging: plain lines without timestamps under systemd (journald adds its own),
/// timestamps on a terminal. `RUST_LOG` overrides the level.
pub fn init_logging(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some() {
        builder.without_time().with_ansi(false).with_target(false).init();
    } else {
        use std::io::IsTerminal;
        builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Parses a duration like "300ms" for command-line flags.
pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

/// A future that resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
