//! `pmtr test-email`: one mail with the configured settings, the SMTP dialogue reported step by
//! step.

use crate::alert::email::{Mailer, Step};
use crate::config::Config;
use std::io::Write;

const STEPS: [Step; 5] = [Step::Dns, Step::Connect, Step::Tls, Step::Auth, Step::Message];

/// Sends the test mail and prints each step to `out`. Ok(true) when the server accepted it.
pub async fn test_email(config: &Config, to: &[String], out: &mut impl Write) -> anyhow::Result<bool> {
    let Some(settings) = &config.email else {
        anyhow::bail!(
            "the configuration has no [alerts.email] table: add one (see the README, \"Alerts\", and the \
             commented-out example in config/pmtr.toml)"
        );
    };
    let mailer = Mailer::new(settings)?;
    let to: Vec<String> = if to.is_empty() { settings.to.clone() } else { to.to_vec() };
    let gateway = &config.gateway.name;
    writeln!(
        out,
        "sending a test mail through {}:{} (tls = \"{}\") from {} to {}",
        settings.host,
        settings.port,
        settings.tls.name(),
        settings.from,
        to.join(", ")
    )?;
    let subject = format!("test mail from {gateway}");
    let body = format!(
        "This is a test mail from pmtr on {gateway}, sent by `pmtr test-email` at {}.\n\
         If you read it, alert mail works.\n",
        chrono::Local::now().format("%Y-%m-%d %H:%M:%S %z")
    );
    let mut done = Vec::new();
    let result = mailer
        .send_step_by_step(&to, &subject, &body, |step, what| {
            done.push(step);
            let _ = writeln!(out, "  ok      {step}: {what}");
        })
        .await;
    match result {
        Ok(()) => {
            writeln!(
                out,
                "the server accepted the test mail: look for \"{} {subject}\" in the inbox of {}",
                settings.subject_prefix,
                to.join(", ")
            )?;
            Ok(true)
        }
        Err(e) => {
            writeln!(out, "  FAILED  {}: {}", e.step(), e.message())?;
            for step in STEPS.iter().filter(|s| !done.contains(s) && **s != e.step()) {
                writeln!(out, "  -       {step}: not tried")?;
            }
            if e.is_retry_later() {
                writeln!(
                    out,
                    "the test mail was not sent; this looks temporary: the daemon would try again later"
                )?;
            } else {
                writeln!(
                    out,
                    "the test mail was not sent; this will not work until the cause above is fixed"
                )?;
            }
            Ok(false)
        }
    }
}
