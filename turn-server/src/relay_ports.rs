//! Relay sockets: one UDP socket per allocation, bound in the configured port
//! range with large kernel buffers, counting what it relays.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use turn::relay::RelayAddressGenerator;
use webrtc_util::Conn;

use crate::fast_path::{FastPath, RelayEntry};
use crate::udp_batch::with_scratch;

/// Ports tried before an Allocate is refused with 508 Insufficient Capacity.
const MAX_TRIES: u32 = 128;

pub(crate) struct RelayPorts {
    pub bind_ip: IpAddr,
    pub advertised_ip: RelayIp,
    pub min_port: u16,
    pub max_port: u16,
    pub buffer_bytes: usize,
    pub fast: Arc<FastPath>,
}

/// The address put in relayed transport addresses.
#[derive(Clone)]
pub(crate) enum RelayIp {
    Fixed(IpAddr),
    /// Learned from a file; unknown means new allocations are refused (508).
    Learned(Arc<crate::advertised::AdvertisedAddress>),
}

impl RelayIp {
    pub fn current(&self) -> Option<IpAddr> {
        match self {
            RelayIp::Fixed(ip) => Some(*ip),
            RelayIp::Learned(address) => address.get(),
        }
    }
}

/// Binds a UDP socket with SO_REUSEPORT optional and the given buffer sizes.
pub(crate) fn udp_socket(
    addr: SocketAddr,
    buffer_bytes: usize,
    reuse_port: bool,
) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if buffer_bytes > 0 {
        // The kernel caps these at net.core.{r,w}mem_max; best effort.
        let _ = socket.set_recv_buffer_size(buffer_bytes);
        let _ = socket.set_send_buffer_size(buffer_bytes);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

#[async_trait]
impl RelayAddressGenerator for RelayPorts {
    fn validate(&self) -> Result<(), turn::Error> {
        if self.min_port == 0 || self.min_port > self.max_port {
            return Err(turn::Error::ErrMaxPortLessThanMinPort);
        }
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.bind_ip.is_ipv4() {
            return Err(turn::Error::Other(
                "requested address family is not served".into(),
            ));
        }
        let Some(advertised_ip) = self.advertised_ip.current() else {
            return Err(turn::Error::Other("no relay address yet".into()));
        };
        let span = u32::from(self.max_port - self.min_port) + 1;
        let candidates: Vec<u16> = if requested_port != 0 {
            vec![requested_port]
        } else {
            let start = rand::random::<u32>() % span;
            (0..span.min(MAX_TRIES))
                .map(|i| self.min_port + ((start + i) % span) as u16)
                .collect()
        };
        for port in candidates {
            let addr = SocketAddr::new(self.bind_ip, port);
            let Ok(sock) = udp_socket(addr, self.buffer_bytes, false) else {
                continue;
            };
            let conn = RelaySocket {
                entry: self.fast.new_relay(sock, port),
            };
            return Ok((Arc::new(conn), SocketAddr::new(advertised_ip, port)));
        }
        Err(turn::Error::ErrMaxRetriesExceeded)
    }
}

/// An allocation's relay socket as the crate sees it. Its receive side is
/// the fast path's loop for peer datagrams: the crate's per-allocation task
/// calls `recv_from`, which relays what the fast path may and returns only
/// the rest to the crate.
struct RelaySocket {
    entry: Arc<RelayEntry>,
}

#[async_trait]
impl Conn for RelaySocket {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.entry.sock.connect(addr).await?)
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            if let Some((pkt, from)) = self.entry.take_slow() {
                let n = pkt.len().min(buf.len());
                buf[..n].copy_from_slice(&pkt[..n]);
                return Ok((n, from));
            }
            self.entry.sock.readable().await?;
            let received = with_scratch(|sc| {
                sc.recv_with(&self.entry.sock, |sc| self.entry.relay_received(sc))
            });
            match received {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => {
                    // The crate drops the allocation on a receive error
                    // without closing it; the fast path must stop too.
                    self.entry.end();
                    return Err(err.into());
                }
            }
        }
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.entry.sock.send(buf).await?)
    }
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let n = self.entry.sock.send_to(buf, target).await?;
        self.entry.relayed_to_peer(n);
        Ok(n)
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.entry.sock.local_addr()?)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }
    /// The crate closes the relay socket when the allocation ends (Refresh
    /// 0, expiry, shutdown): the fast path stops for it at once.
    async fn close(&self) -> webrtc_util::Result<()> {
        self.entry.end();
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
