//! The commands behind the `pmtr` binary. `main.rs` only parses the command line.

pub mod control;
pub mod demo;
pub mod energy;
pub mod live;
pub mod pipeline;
pub mod run;
pub mod servers;
pub mod status;
pub mod systemd;
pub mod test_email;
pub mod tools;

use std::time::Duration;

/// Sets up logging: under systemd, plain lines without timestamps (journald adds its own)
/// that begin with their syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>`
/// debug), which journald files them under; on a terminal, timestamps and colours.
/// `RUST_LOG` overrides the level.
pub fn init_logging(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // A log line that cannot be written (stderr a pipe whose reader has gone) is dropped: the
    // subscriber's own report of it would be an `eprintln!`, which panics on that same stderr,
    // in whichever task logged, the daemon's included.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if systemd::under_journald() {
        let format = tracing_subscriber::fmt::format().without_time().with_ansi(false).with_target(false);
        builder.with_ansi(false).event_format(Priority(format)).init();
    } else {
        use std::io::IsTerminal;
        builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Prefixes each event with its syslog priority for journald (`SyslogLevelPrefix=`, on by
/// default), so `journalctl -p warning -u pmtr` shows warnings and errors only.
struct Priority<F>(F);

/// The syslog priority of a tracing level.
pub fn syslog_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Priority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Parses a duration like "300ms" for command-line flags.
pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

/// Prints to stdout like `print!` and flushes, but answers false instead of panicking when
/// stdout is closed (the reader of a pipe has gone): for the long-running commands (`demo`,
/// `simulate`), which keep SIGPIPE ignored and stop cleanly, or carry on, by themselves, and
/// for what must never panic (the live table's cursor guard, dropped while unwinding too).
pub fn print_out(args: std::fmt::Arguments<'_>) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.flush()).is_ok()
}

/// A future that resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
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

/// The daemon's signals: SIGTERM and SIGINT stop it, SIGHUP reloads its configuration.
pub fn signals() -> std::io::Result<tokio::sync::mpsc::Receiver<run::Signal>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                _ = term.recv() => run::Signal::Stop,
                _ = int.recv() => run::Signal::Stop,
                _ = hup.recv() => run::Signal::Reload,
            };
            tracing::info!(
                "{}",
                if s == run::Signal::Stop { "stop asked (SIGTERM/SIGINT)" } else { "reload asked (SIGHUP)" }
            );
            if tx.send(s).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
