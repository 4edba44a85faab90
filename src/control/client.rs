//! The client's end of the control socket: one request, one response.

use super::{Request, Response};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long [`request`] waits: longer than the daemon's own wait for its engine
/// ([`super::server::REPLY_TIMEOUT`]), so that its answer comes first.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The longest answer read (a status of a few hundred relays and triggers fits many times).
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no pmtr daemon listening at {}: is `pmtr run` running? (systemctl status pmtr)", path.display())]
    NotRunning { path: PathBuf },
    #[error(
        "permission denied on {}: run as root or add yourself to the socket's group (ls -l {})",
        path.display(), path.display()
    )]
    PermissionDenied { path: PathBuf },
    #[error("the pmtr daemon at {} did not answer within {} s", path.display(), timeout.as_secs_f32())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("bad answer from the pmtr daemon at {}: {message}", path.display())]
    BadAnswer { path: PathBuf, message: String },
    #[error("cannot talk to the pmtr daemon at {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Sends `req` to the daemon listening at `path` and returns its answer, waiting at most
/// [`TIMEOUT`].
pub async fn request(path: &Path, req: &Request) -> Result<Response, ClientError> {
    request_within(path, req, TIMEOUT).await
}

/// [`request`] with another time limit.
pub async fn request_within(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    match tokio::time::timeout(timeout, exchange(path, req)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout { path: path.to_path_buf(), timeout }),
    }
}

async fn exchange(path: &Path, req: &Request) -> Result<Response, ClientError> {
    let p = || path.to_path_buf();
    let stream = UnixStream::connect(path).await.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning { path: p() },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path: p() },
        _ => ClientError::Io { path: p(), source: e },
    })?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(req).expect("a request always encodes");
    line.push(b'\n');
    wr.write_all(&line).await.map_err(|e| ClientError::Io { path: p(), source: e })?;
    let mut answer = Vec::new();
    BufReader::new(rd.take(MAX_ANSWER))
        .read_until(b'\n', &mut answer)
        .await
        .map_err(|e| ClientError::Io { path: p(), source: e })?;
    if answer.last() != Some(&b'\n') {
        let message = if answer.is_empty() {
            "it closed the connection without answering".to_string()
        } else {
            format!("the answer was cut off after {} bytes", answer.len())
        };
        return Err(ClientError::BadAnswer { path: p(), message });
    }
    serde_json::from_slice(&answer).map_err(|e| ClientError::BadAnswer {
        path: p(),
        message: format!(
            "{e}: {}",
            String::from_utf8_lossy(&answer).trim_end().chars().take(200).collect::<String>()
        ),
    })
}
