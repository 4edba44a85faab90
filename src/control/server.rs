//! The daemon's end of the control socket: one task per connection reads requests, one JSON
//! object per line, hands each to the engine as a [`Command`] and writes back its [`Response`].

use super::{Caller, Command, Peer, Request, Response};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

/// The longest request line read (a request is a few hundred bytes).
pub const MAX_LINE: usize = 64 * 1024;
/// How long a request waits for the engine's answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Access control: the daemon's user and group read and write, nobody else.
pub const SOCKET_MODE: u32 = 0o660;

/// A bound control socket, ready to [`run`](ControlServer::run).
#[derive(Debug)]
pub struct ControlServer {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file, so that only ours is removed on stop.
    file: (u64, u64),
    reply_timeout: Duration,
}

fn error(kind: io::ErrorKind, message: String) -> io::Error {
    io::Error::new(kind, message)
}

impl ControlServer {
    /// Creates the socket at `path` with mode 0660, creating its folder when missing. A stale
    /// socket file (nobody listening) is replaced; a live one is refused, as is a path that is
    /// not a socket. The socket appears at `path` with its mode already set.
    pub fn bind(path: &Path) -> io::Result<ControlServer> {
        let shown = path.display();
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().ok_or_else(|| {
            error(io::ErrorKind::InvalidInput, format!("control socket {shown}: not a file path"))
        })?;
        std::fs::create_dir_all(dir).map_err(|e| {
            error(e.kind(), format!("cannot create the folder of the control socket {}: {e}", dir.display()))
        })?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(error(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "another pmtr is running: a process listens on {shown}; stop it first \
                             (systemctl stop pmtr), or give this one another gateway.control_socket"
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!("replacing the stale control socket {shown} (nobody listens on it)")
                }
                Err(e) => {
                    return Err(error(e.kind(), format!("cannot tell whether {shown} is in use: {e}")));
                }
            },
            Ok(_) => {
                return Err(error(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{shown} exists and is not a socket: remove it, or set gateway.control_socket \
                         to another path"
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(e.kind(), format!("cannot look at {shown}: {e}"))),
        }
        // Bound under a temporary name, given its mode, then renamed into place: nobody can
        // connect before the mode is set, and a stale file is replaced in one step.
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| {
            error(e.kind(), format!("cannot create the control socket {}: {e}", tmp.display()))
        })?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
            .and_then(|()| std::fs::rename(&tmp, path))
            .and_then(|()| std::fs::symlink_metadata(path))
            .and_then(|m| listener.set_nonblocking(true).map(|()| (m.dev(), m.ino())));
        match placed {
            Ok(file) => {
                Ok(ControlServer { listener, path: path.to_path_buf(), file, reply_timeout: REPLY_TIMEOUT })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(error(e.kind(), format!("cannot set up the control socket {shown}: {e}")))
            }
        }
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long a request waits for the engine (default [`REPLY_TIMEOUT`]).
    pub fn with_reply_timeout(mut self, timeout: Duration) -> ControlServer {
        self.reply_timeout = timeout;
        self
    }

    /// Serves connections, each in its own task, until `stop` turns true (or its sender goes),
    /// then closes them and removes the socket file.
    pub async fn run(self, commands: mpsc::Sender<Command>, mut stop: watch::Receiver<bool>) {
        let ControlServer { listener, path, file, reply_timeout } = self;
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(
                    "control socket {}: {e}; `pmtr relay` and `pmtr trigger` will not work",
                    path.display()
                );
                remove_if_ours(&path, file);
                return;
            }
        };
        tracing::debug!("control socket at {}", path.display());
        let mut connections = JoinSet::new();
        // True, or the sender gone: stop either way.
        let stopped = async {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(serve(stream, commands.clone(), reply_timeout));
                    }
                    Err(e) => {
                        // Out of file descriptors, most likely: let some connections finish.
                        tracing::warn!("control socket {}: cannot accept a connection: {e}", path.display());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.shutdown().await;
        drop(listener);
        remove_if_ours(&path, file);
    }
}

fn remove_if_ours(path: &Path, file: (u64, u64)) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == file => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!("cannot remove the control socket {}: {e}", path.display());
            }
        }
        // Gone, or replaced by someone else's: leave it.
        _ => {}
    }
}

enum Line {
    /// A line is in the buffer (without its newline).
    Text,
    /// The line was longer than the limit; it was read to its end and dropped.
    TooLong,
    /// The client closed its end.
    End,
}

/// Reads one line into `buf`, never holding more than `max` bytes of it.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(match (too_long, read_any) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Text,
                (false, false) => Line::End,
            });
        }
        read_any = true;
        let newline = chunk.iter().position(|&b| b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        if !too_long {
            if buf.len() + part.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let used = newline.map_or(chunk.len(), |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            return Ok(if too_long { Line::TooLong } else { Line::Text });
        }
    }
}

/// One connection: requests in, responses out, until the client closes.
async fn serve(stream: UnixStream, commands: mpsc::Sender<Command>, reply_timeout: Duration) {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer { uid: c.uid(), gid: c.gid(), pid: c.pid().unwrap_or(0) },
        Err(e) => {
            tracing::warn!("control socket: cannot read the caller's credentials ({e}): connection closed");
            return;
        }
    };
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut buf = Vec::new();
    loop {
        let response = match read_line(&mut rd, &mut buf, MAX_LINE).await {
            Ok(Line::End) => return,
            Ok(Line::TooLong) => {
                tracing::info!("control: request of more than {} KiB from {peer} refused", MAX_LINE / 1024);
                Response::Error {
                    message: format!(
                        "request longer than {} KiB refused: send one JSON object per line",
                        MAX_LINE / 1024
                    ),
                }
            }
            Ok(Line::Text) if buf.trim_ascii().is_empty() => continue,
            Ok(Line::Text) => answer(&buf, peer, &commands, reply_timeout).await,
            Err(e) => {
                tracing::debug!("control: connection of {peer} lost: {e}");
                return;
            }
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_else(|e| {
            format!(r#"{{"response":"error","message":"cannot encode the answer: {e}"}}"#).into_bytes()
        });
        out.push(b'\n');
        if let Err(e) = wr.write_all(&out).await {
            tracing::debug!("control: cannot answer {peer}: {e}");
            return;
        }
    }
}

/// What the request asks, in words, for the log.
fn describe(request: &Request) -> String {
    match request {
        Request::Status => "status".to_string(),
        Request::Force { relay, level, seconds: Some(s) } => format!("force relay {relay} {level} for {s} s"),
        Request::Force { relay, level, seconds: None } => format!("force relay {relay} {level}"),
        Request::Release { relay } => format!("release relay {relay}"),
        Request::Reset { trigger } => format!("reset trigger {trigger}"),
        Request::EnergySet { meter, counter, value } => {
            format!("set energy total of {meter} {} to {value}", counter.as_deref().unwrap_or(""))
        }
    }
}

async fn answer(
    line: &[u8],
    peer: Peer,
    commands: &mpsc::Sender<Command>,
    reply_timeout: Duration,
) -> Response {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!("control: unreadable request from {peer}: {e}");
            return Response::Error {
                message: format!(
                    "not a request ({e}): send one JSON object per line, e.g. {{\"request\":\"status\"}}"
                ),
            };
        }
    };
    let what = describe(&request);
    let quiet = request == Request::Status;
    let (reply, answer) = oneshot::channel();
    let exchange = async {
        commands
            .send(Command::within(request, Caller::Socket(peer), reply, reply_timeout))
            .await
            .map_err(|_| "the daemon is stopping".to_string())?;
        answer.await.map_err(|_| "the daemon dropped the request without answering".to_string())
    };
    let response = match tokio::time::timeout(reply_timeout, exchange).await {
        Ok(Ok(r)) => r,
        Ok(Err(message)) => Response::Error { message },
        Err(_) => Response::Error {
            message: format!(
                "the daemon did not answer within {}: it may be stuck (journalctl -u pmtr)",
                humanize(reply_timeout)
            ),
        },
    };
    match &response {
        _ if quiet => tracing::debug!(uid = peer.uid, pid = peer.pid, "control: {what} by {peer}"),
        Response::Error { message } => {
            tracing::info!(uid = peer.uid, pid = peer.pid, "control: {what} by {peer} refused: {message}")
        }
        Response::Done { message } => {
            tracing::info!(uid = peer.uid, pid = peer.pid, "control: {what} by {peer}: {message}")
        }
        Response::Status { .. } => {
            tracing::info!(uid = peer.uid, pid = peer.pid, "control: {what} by {peer}")
        }
    }
    response
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<String, &'static str>> {
        // A tiny buffer, so that lines span several reads.
        let mut r = BufReader::with_capacity(3, input);
        let mut buf = Vec::new();
        let mut out = vec![];
        loop {
            match read_line(&mut r, &mut buf, max).await.unwrap() {
                Line::Text => out.push(Ok(String::from_utf8(buf.clone()).unwrap())),
                Line::TooLong => out.push(Err("too long")),
                Line::End => return out,
            }
        }
    }

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        assert_eq!(lines(b"ab\ncd\n", 8).await, vec![Ok("ab".into()), Ok("cd".into())]);
        assert_eq!(lines(b"ab\nlast", 8).await, vec![Ok("ab".into()), Ok("last".into())]);
        assert_eq!(lines(b"12345678\n", 8).await, vec![Ok("12345678".into())]);
        assert_eq!(
            lines(b"123456789\nok\n123456789012345", 8).await,
            vec![Err("too long"), Ok("ok".into()), Err("too long")]
        );
        assert_eq!(lines(b"", 8).await, vec![]);
        assert_eq!(lines(b"\n\n", 8).await, vec![Ok("".into()), Ok("".into())]);
    }

    #[test]
    fn requests_in_words() {
        use crate::relay::Level;
        let f = Request::Force { relay: "pump".into(), level: Level::Off, seconds: Some(60) };
        assert_eq!(describe(&f), "force relay pump off for 60 s");
        assert_eq!(describe(&Request::Reset { trigger: "t".into() }), "reset trigger t");
        assert_eq!(humanize(Duration::from_secs(5)), "5 s");
        assert_eq!(humanize(Duration::from_millis(200)), "200 ms");
    }
}
