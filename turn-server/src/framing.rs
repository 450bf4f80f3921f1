//! STUN/TURN framing over a stream (RFC 5766 section 2.1 and 11.5): a STUN
//! message carries its own length; a ChannelData message carries its length
//! and is padded to a multiple of four bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// The largest frame accepted: the same as the UDP path's datagram buffer.
pub const MAX_FRAME: usize = 1500;

/// Why a stream cannot be read further.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The first bytes are neither STUN nor ChannelData.
    Malformed,
    /// The frame is longer than [`MAX_FRAME`].
    Oversized,
}

/// Total frame length (with padding) from its first four bytes.
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u16::from_be_bytes([header[2], header[3]]) as usize;
    let total = match header[0] >> 6 {
        0 => {
            if !len.is_multiple_of(4) {
                return Err(FrameError::Malformed);
            }
            20 + len
        }
        1 => (4 + len).div_ceil(4) * 4,
        _ => return Err(FrameError::Malformed),
    };
    if total > MAX_FRAME {
        return Err(FrameError::Oversized);
    }
    Ok(total)
}

/// Reads one frame into `buf` (cleared first). `Ok(false)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Result<bool, FrameError>> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Ok(false)),
        Err(e) => return Err(e),
    }
    let total = match frame_len(header) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    buf.clear();
    buf.extend_from_slice(&header);
    buf.resize(total, 0);
    r.read_exact(&mut buf[4..]).await?;
    Ok(Ok(true))
}

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A TURN client's TCP (or TLS) connection presented as a `Conn`, so the
/// `turn` crate's client (or any `Conn` user) can speak TURN over a stream.
pub struct TcpClientConn {
    reader: Mutex<(ReadHalf, Vec<u8>)>,
    writer: Mutex<WriteHalf>,
    local: SocketAddr,
    remote: SocketAddr,
}

impl TcpClientConn {
    pub async fn connect(server: SocketAddr) -> std::io::Result<Arc<Self>> {
        let stream = TcpStream::connect(server).await?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        Ok(Self::over(stream, local, server))
    }

    /// Frames STUN over an already connected stream, e.g. a TLS client
    /// stream for `turns:`.
    pub fn over<S>(stream: S, local: SocketAddr, remote: SocketAddr) -> Arc<Self>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        Arc::new(TcpClientConn {
            reader: Mutex::new((Box::new(r), Vec::with_capacity(MAX_FRAME))),
            writer: Mutex::new(Box::new(w)),
            local,
            remote,
        })
    }
}

fn io_err(msg: &str) -> webrtc_util::Error {
    std::io::Error::other(msg.to_owned()).into()
}

#[async_trait]
impl webrtc_util::Conn for TcpClientConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(io_err("already connected"))
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut guard = self.reader.lock().await;
        let (r, frame) = &mut *guard;
        match read_frame(r, frame).await? {
            Ok(true) => {
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                Ok((n, self.remote))
            }
            Ok(false) => Err(io_err("connection closed")),
            Err(e) => Err(io_err(&format!("bad frame from server: {e:?}"))),
        }
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        let mut w = self.writer.lock().await;
        w.write_all(buf).await?;
        // A TLS writer buffers records until flushed.
        w.flush().await?;
        Ok(buf.len())
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.remote)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        let _ = self.writer.lock().await.shutdown().await;
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths() {
        // STUN: 20-byte header plus the length field.
        assert_eq!(frame_len([0x00, 0x01, 0x00, 0x08]), Ok(28));
        // ChannelData: padded to four.
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x05]), Ok(12));
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x04]), Ok(8));
        assert_eq!(frame_len([0x80, 0, 0, 0]), Err(FrameError::Malformed));
        assert_eq!(
            frame_len([0x00, 0x01, 0x00, 0x07]),
            Err(FrameError::Malformed)
        );
        assert_eq!(
            frame_len([0x40, 0x00, 0xff, 0xff]),
            Err(FrameError::Oversized)
        );
    }
}
