//! Batched UDP system calls for the fast path: one `recvmmsg` takes up to
//! [`BATCH`] datagrams off a socket and one `sendmmsg` sends a batch of
//! datagrams, instead of a system call per datagram.
//!
//! The `nix` crate's safe wrappers are used (the workspace forbids unsafe
//! code); their header arrays are not `Send`, so each worker thread keeps one
//! preallocated [`Scratch`] of headers and buffers and uses it only between
//! two await points. Nothing here allocates per datagram.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams taken per `recvmmsg` and sent per `sendmmsg`.
pub(crate) const BATCH: usize = 32;
/// Receive slot size: the `turn` crate reads into 1500-byte buffers, so a
/// longer datagram is truncated to this on both paths alike.
pub(crate) const SLOT: usize = 1500;
/// Send slot size: a slot's payload plus a Data indication's headers.
pub(crate) const OUT_SLOT: usize = SLOT + 64;

/// Per-thread buffers and system call headers.
pub(crate) struct Scratch {
    recv_headers: MultiHeaders<SockaddrStorage>,
    send_headers: MultiHeaders<SockaddrStorage>,
    inbuf: Vec<u8>,
    received: [(usize, Option<SocketAddr>); BATCH],
    count: usize,
    pub out: Outbox,
}

/// Datagrams built for one destination socket, sent together by [`Scratch::flush`].
pub(crate) struct Outbox {
    buf: Vec<u8>,
    lens: [usize; BATCH],
    addrs: Vec<Option<SockaddrStorage>>,
    count: usize,
}

impl Outbox {
    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// Builds one datagram to `to` in the next slot with `write`, which
    /// returns how many bytes it wrote (0 leaves the slot unused).
    pub fn push(&mut self, to: SocketAddr, write: impl FnOnce(&mut [u8]) -> usize) {
        if self.is_full() {
            return;
        }
        let slot = &mut self.buf[self.count * OUT_SLOT..(self.count + 1) * OUT_SLOT];
        let n = write(slot);
        if n == 0 {
            return;
        }
        self.lens[self.count] = n;
        self.addrs[self.count] = Some(SockaddrStorage::from(to));
        self.count += 1;
    }

    /// The datagrams built so far, for transports without `sendmmsg`.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        (0..self.count).filter_map(|i| {
            let to = storage_addr(self.addrs[i].as_ref()?)?;
            Some((&self.buf[i * OUT_SLOT..i * OUT_SLOT + self.lens[i]], to))
        })
    }

    pub fn clear(&mut self) {
        self.count = 0;
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new());
}

/// Runs `f` with this thread's scratch space. `f` must not await (it cannot:
/// it is a plain closure) and must not call `with_scratch` again.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

fn storage_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            recv_headers: MultiHeaders::preallocate(BATCH, None),
            send_headers: MultiHeaders::preallocate(BATCH, None),
            inbuf: vec![0u8; BATCH * SLOT],
            received: [(0, None); BATCH],
            count: 0,
            out: Outbox {
                buf: vec![0u8; BATCH * OUT_SLOT],
                lens: [0; BATCH],
                addrs: vec![None; BATCH],
                count: 0,
            },
        }
    }

    /// Takes up to [`BATCH`] datagrams off `sock` with one `recvmmsg`
    /// without waiting and hands them to `process` (through
    /// [`Scratch::received`] or [`Scratch::for_each_received`]).
    /// `WouldBlock` when none was queued, and also after processing a batch
    /// that did not fill every slot: the queue was empty then, and telling
    /// tokio so saves the `recvmmsg` that would only find it empty (tokio
    /// keeps a readiness event that arrived meanwhile).
    pub fn recv_with(
        &mut self,
        sock: &UdpSocket,
        process: impl FnOnce(&mut Scratch),
    ) -> io::Result<usize> {
        let fd = sock.as_raw_fd();
        sock.try_io(Interest::READABLE, || {
            self.count = 0;
            let n = {
                let Scratch {
                    recv_headers,
                    inbuf,
                    received,
                    ..
                } = &mut *self;
                let mut chunks = inbuf.chunks_exact_mut(SLOT);
                let slices: [[IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
                    [IoSliceMut::new(
                        chunks.next().expect("BATCH slots in the buffer"),
                    )]
                });
                let results = recvmmsg(fd, recv_headers, slices.iter(), MsgFlags::empty(), None)
                    .map_err(io::Error::from)?;
                let mut n = 0;
                for msg in results {
                    received[n] = (msg.bytes, msg.address.as_ref().and_then(storage_addr));
                    n += 1;
                }
                n
            };
            self.count = n;
            process(self);
            if n < BATCH {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        })
    }

    /// Datagrams taken by the last receive, with their senders.
    pub fn received(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        (0..self.count).filter_map(|i| {
            let (len, from) = self.received[i];
            Some((&self.inbuf[i * SLOT..i * SLOT + len.min(SLOT)], from?))
        })
    }

    /// Hands each received datagram to `each` together with the outbox.
    pub fn for_each_received(&mut self, mut each: impl FnMut(&[u8], SocketAddr, &mut Outbox)) {
        let Scratch {
            inbuf,
            received,
            count,
            out,
            ..
        } = self;
        for (i, (len, from)) in received.iter().take(*count).enumerate() {
            if let Some(from) = from {
                each(&inbuf[i * SLOT..i * SLOT + (*len).min(SLOT)], *from, out);
            }
        }
    }

    /// Sends the outbox's datagrams from `sock` with one `sendmmsg` without
    /// waiting and empties it. What the kernel does not take (a full socket
    /// buffer) is dropped, as a UDP send would drop it.
    pub fn flush(&mut self, sock: &UdpSocket) {
        let Scratch {
            send_headers, out, ..
        } = self;
        let count = out.count;
        if count == 0 {
            return;
        }
        let fd = sock.as_raw_fd();
        let Outbox {
            buf, lens, addrs, ..
        } = out;
        let sent = sock.try_io(Interest::WRITABLE, || {
            let mut i = 0;
            let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|_| {
                let s = if i < count {
                    &buf[i * OUT_SLOT..i * OUT_SLOT + lens[i]]
                } else {
                    &buf[..0]
                };
                i += 1;
                [IoSlice::new(s)]
            });
            // The per-message results are not read: their sender addresses
            // are only meaningful for recvmmsg.
            sendmmsg(
                fd,
                send_headers,
                slices.iter(),
                &addrs[..count],
                [] as [ControlMessage<'_>; 0],
                MsgFlags::empty(),
            )
            .map(|_| ())
            .map_err(io::Error::from)
        });
        out.count = 0;
        if let Err(err) = sent
            && err.kind() != io::ErrorKind::WouldBlock
        {
            tracing::debug!(error = %err, "sendmmsg failed");
        }
    }
}
