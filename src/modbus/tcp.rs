//! Modbus TCP (MBAP header, unit ids) for `kind = "tcp"` buses, on tokio-modbus's client.
//!
//! A [`ModbusTcp`] is a [`Line`] that carries whole transactions ([`Session`]) rather than RTU
//! bytes, so the bus engine runs on it unchanged: one request in flight, per-request timeouts,
//! the same outcomes and counters. TCP has no frame gap, no CRC and no stale bytes to drop; a
//! reply that does not come in time, or that does not match its request (transaction id,
//! function), closes the connection, so that a late reply can never pass for the next one:
//! the next transaction opens it again, and a connection that cannot be opened ends the port
//! task, whose supervisor reconnects with back-off.

use super::frame::{FrameError, Pdu, Reply, Request};
use super::transport::{Line, Outcome, Session};
use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::{Slave, SlaveContext};

/// One Modbus TCP connection to `host`, opened again after a failed transaction.
pub struct ModbusTcp {
    host: String,
    connect_timeout: Duration,
    context: Option<Context>,
    /// Connections opened again after a timeout or a mismatched reply.
    pub reconnects: u64,
}

impl std::fmt::Debug for ModbusTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusTcp").field("host", &self.host).field("open", &self.context.is_some()).finish()
    }
}

async fn open(host: &str, timeout: Duration) -> io::Result<Context> {
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(host)).await {
        Ok(s) => s?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{host}: no answer to the connection"),
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(tokio_modbus::client::tcp::attach(stream))
}

impl ModbusTcp {
    /// Connects to `host` (`HOST:PORT`).
    pub async fn connect(host: &str, connect_timeout: Duration) -> io::Result<ModbusTcp> {
        let context = open(host, connect_timeout).await?;
        Ok(ModbusTcp { host: host.to_owned(), connect_timeout, context: Some(context), reconnects: 0 })
    }

    async fn exchange(&mut self, req: &Request, timeout: Duration) -> io::Result<Outcome> {
        let outcome = |result| Outcome { result, stale_bytes: 0, noise_bytes: 0 };
        let Some(call) = to_request(&req.pdu) else {
            return Ok(outcome(Err(FrameError::Malformed("this request has no Modbus TCP form"))));
        };
        if req.is_broadcast() {
            return Ok(outcome(Err(FrameError::Malformed("no broadcast over Modbus TCP"))));
        }
        if self.context.is_none() {
            self.context = Some(open(&self.host, self.connect_timeout).await?);
            self.reconnects += 1;
        }
        let Some(context) = self.context.as_mut() else { unreachable!("opened above") };
        context.set_slave(Slave(req.address));
        let result = match tokio::time::timeout(timeout, context.call(call)).await {
            Err(_) => {
                self.context = None;
                Err(FrameError::Timeout)
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                self.context = None;
                return Err(e);
            }
            Ok(Err(tokio_modbus::Error::Protocol(_))) => {
                self.context = None;
                Err(FrameError::Malformed(
                    "the reply does not match the request (transaction, unit or function)",
                ))
            }
            Ok(Ok(Err(exception))) => {
                Err(FrameError::Exception(crate::modbus::Exception::from_code(u8::from(exception))))
            }
            Ok(Ok(Ok(response))) => from_response(&req.pdu, response),
        };
        Ok(outcome(result))
    }
}

/// The tokio-modbus request for `pdu`.
fn to_request(pdu: &Pdu) -> Option<tokio_modbus::Request<'static>> {
    use tokio_modbus::Request as R;
    Some(match pdu {
        Pdu::ReadHolding { start, count } => R::ReadHoldingRegisters(*start, *count),
        Pdu::ReadInput { start, count } => R::ReadInputRegisters(*start, *count),
        Pdu::WriteSingle { register, value } => R::WriteSingleRegister(*register, *value),
        Pdu::EchoCommand { function } => R::Custom(*function, Cow::Owned(vec![])),
        Pdu::ReadCoils { start, count } => R::ReadCoils(*start, *count),
        Pdu::WriteCoil { coil, on } => R::WriteSingleCoil(*coil, *on),
        Pdu::WriteCoils { start, values } => R::WriteMultipleCoils(*start, Cow::Owned(values.clone())),
        Pdu::WriteRegisters { start, values } => {
            R::WriteMultipleRegisters(*start, Cow::Owned(values.clone()))
        }
    })
}

/// The reply to `pdu` in `response`, checked as an RTU reply is (counts, echoes).
fn from_response(pdu: &Pdu, response: tokio_modbus::Response) -> Result<Reply, FrameError> {
    use tokio_modbus::Response as A;
    match (pdu, response) {
        (Pdu::ReadHolding { count, .. }, A::ReadHoldingRegisters(r))
        | (Pdu::ReadInput { count, .. }, A::ReadInputRegisters(r)) => {
            if r.len() == usize::from(*count) {
                Ok(Reply::Registers(r))
            } else {
                Err(FrameError::Malformed("register count differs from the request"))
            }
        }
        (Pdu::ReadCoils { count, .. }, A::ReadCoils(mut bits)) => {
            // The reply carries whole bytes of coils.
            if bits.len() < usize::from(*count) {
                return Err(FrameError::Malformed("coil count differs from the request"));
            }
            bits.truncate(usize::from(*count));
            Ok(Reply::Bits(bits))
        }
        (Pdu::WriteSingle { register, value }, A::WriteSingleRegister(r, v))
            if (r, v) == (*register, *value) =>
        {
            Ok(Reply::Echo)
        }
        (Pdu::WriteCoil { coil, on }, A::WriteSingleCoil(c, o)) if (c, o) == (*coil, *on) => Ok(Reply::Echo),
        (Pdu::WriteCoils { start, values }, A::WriteMultipleCoils(s, n))
            if s == *start && usize::from(n) == values.len() =>
        {
            Ok(Reply::Echo)
        }
        (Pdu::WriteRegisters { start, values }, A::WriteMultipleRegisters(s, n))
            if s == *start && usize::from(n) == values.len() =>
        {
            Ok(Reply::Echo)
        }
        (Pdu::EchoCommand { function }, A::Custom(f, _)) if f == *function => Ok(Reply::Echo),
        _ => Err(FrameError::Malformed("reply does not echo the request")),
    }
}

impl Session for ModbusTcp {
    fn transact<'a>(
        &'a mut self,
        req: &'a Request,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = io::Result<Outcome>> + Send + 'a>> {
        Box::pin(self.exchange(req, timeout))
    }
}

fn not_a_byte_stream() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "a Modbus TCP connection carries whole transactions, not RTU bytes",
    )
}

// The transport never reads or writes bytes on a line that is a session: these only say so.
impl AsyncRead for ModbusTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(not_a_byte_stream()))
    }
}

impl AsyncWrite for ModbusTcp {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>, _data: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(not_a_byte_stream()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Line for ModbusTcp {
    fn clear_input(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn session(&mut self) -> Option<&mut dyn Session> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked_against_their_request() {
        use tokio_modbus::Response as A;
        let read = Pdu::ReadInput { start: 0, count: 3 };
        assert_eq!(
            from_response(&read, A::ReadInputRegisters(vec![1, 2, 3])),
            Ok(Reply::Registers(vec![1, 2, 3]))
        );
        assert!(matches!(
            from_response(&read, A::ReadInputRegisters(vec![1, 2])),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            from_response(&read, A::ReadHoldingRegisters(vec![1, 2, 3])),
            Err(FrameError::Malformed(_))
        ));
        let write = Pdu::WriteSingle { register: 2, value: 7 };
        assert_eq!(from_response(&write, A::WriteSingleRegister(2, 7)), Ok(Reply::Echo));
        assert!(from_response(&write, A::WriteSingleRegister(2, 8)).is_err());
        let coils = Pdu::ReadCoils { start: 0, count: 3 };
        assert_eq!(
            from_response(&coils, A::ReadCoils(vec![true, false, true, false, false, false, false, false])),
            Ok(Reply::Bits(vec![true, false, true]))
        );
        let regs = Pdu::WriteRegisters { start: 4, values: vec![1, 2] };
        assert_eq!(from_response(&regs, A::WriteMultipleRegisters(4, 2)), Ok(Reply::Echo));
        assert!(from_response(&regs, A::WriteMultipleRegisters(4, 3)).is_err());
        let reset = Pdu::EchoCommand { function: 0x42 };
        assert_eq!(from_response(&reset, A::Custom(0x42, Default::default())), Ok(Reply::Echo));
    }
}
