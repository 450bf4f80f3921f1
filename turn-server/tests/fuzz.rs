//! Property test of the packet path: random, truncated and mutated STUN and
//! ChannelData messages over UDP and TCP never crash or stall the relay, and
//! it still serves valid requests afterwards.

mod common;

use std::time::Duration;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::integrity::MessageIntegrity;
use stun::message::{
    BINDING_REQUEST, CLASS_REQUEST, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CONNECT,
    METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND, Message, MessageType, Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use turn::proto::lifetime::Lifetime;
use turn::proto::reqtrans::RequestedTransport;

/// Well-formed messages to mutate: requests of every kind the relay handles.
fn seeds() -> Vec<Vec<u8>> {
    let c = cred(SECRET, "fuzz");
    let build = |setters: Vec<Box<dyn Setter>>| {
        let mut m = Message::new();
        m.build(&setters).expect("build seed");
        m.raw
    };
    let auth = |method| -> Vec<Box<dyn Setter>> {
        vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: turn::proto::PROTO_UDP,
            }),
            Box::new(Lifetime(Duration::from_secs(60))),
            Box::new(XorMappedAddress {
                ip: "127.0.0.1".parse().expect("ip"),
                port: 9,
            }),
            Box::new(TextAttribute::new(ATTR_USERNAME, c.username.clone())),
            Box::new(TextAttribute::new(ATTR_REALM, "videochat".into())),
            Box::new(TextAttribute::new(ATTR_NONCE, "0123456789abcdef".into())),
            Box::new(MessageIntegrity::new_long_term_integrity(
                c.username.clone(),
                "videochat".into(),
                c.password.clone(),
            )),
        ]
    };
    let mut out = vec![
        build(vec![
            Box::new(TransactionId::new()),
            Box::new(BINDING_REQUEST),
        ]),
        build(vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: turn::proto::PROTO_UDP,
            }),
        ]),
        // ChannelData on channel 0x4000 with 5 bytes.
        vec![0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0],
    ];
    for method in [
        METHOD_ALLOCATE,
        METHOD_REFRESH,
        METHOD_SEND,
        METHOD_CREATE_PERMISSION,
        METHOD_CHANNEL_BIND,
        METHOD_CONNECT,
    ] {
        out.push(build(auth(method)));
    }
    // An unknown method (0xfff) in the request class.
    let mut unknown = build(auth(METHOD_ALLOCATE));
    unknown[0..2].copy_from_slice(&0x3eefu16.to_be_bytes());
    out.push(unknown);
    out
}

fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut m = seeds[rng.gen_range(0..seeds.len())].clone();
    match rng.gen_range(0..6) {
        // Truncated anywhere.
        0 => m.truncate(rng.gen_range(0..=m.len())),
        // Random bytes flipped.
        1 => {
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..m.len());
                m[i] = rng.r#gen();
            }
        }
        // Lying length fields (message and attribute headers).
        2 => {
            let i = if rng.gen_bool(0.5) {
                2
            } else {
                rng.gen_range(20..m.len().max(21)).min(m.len() - 2)
            };
            m[i] = rng.r#gen();
            m[i + 1] = rng.r#gen();
        }
        // Pure noise.
        3 => {
            let n = rng.gen_range(0..200);
            m = (0..n).map(|_| rng.r#gen()).collect();
        }
        // Oversized: padded past the receive buffer.
        4 => m.resize(rng.gen_range(1400..4000), rng.r#gen()),
        // Random garbage appended.
        _ => m.extend((0..rng.gen_range(1..64)).map(|_| rng.r#gen::<u8>())),
    }
    m
}

async fn binding_answered(server: std::net::SocketAddr) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut req = Message::new();
    req.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
        .expect("build");
    sock.send_to(&req.raw, server).await.expect("send");
    let mut buf = [0u8; 1500];
    match tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => {
            let mut resp = Message {
                raw: buf[..n].to_vec(),
                ..Default::default()
            };
            resp.decode().is_ok() && resp.transaction_id == req.transaction_id
        }
        _ => false,
    }
}

#[tokio::test]
async fn random_and_truncated_packets_never_break_the_relay() {
    let relay = relay_with(|_| {}).await;
    let seeds = seeds();
    let mut rng = StdRng::seed_from_u64(0x7e57_5eed);

    // UDP: several sources, a few thousand packets.
    let socks = [
        UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
        UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
        UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
    ];
    for i in 0..6000 {
        let pkt = mutate(&mut rng, &seeds);
        let _ = socks[i % socks.len()].send_to(&pkt, relay.udp_addr()).await;
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }

    // TCP: streams of mutated frames; a bad frame closes only its connection.
    let tcp = relay.tcp_addr().expect("tcp");
    for _ in 0..40 {
        let mut s = TcpStream::connect(tcp).await.expect("connect");
        let mut stream = Vec::new();
        for _ in 0..rng.gen_range(1..20) {
            stream.extend(mutate(&mut rng, &seeds));
        }
        let _ = s.write_all(&stream).await;
        if rng.gen_bool(0.5) {
            let _ = s.shutdown().await;
        }
    }

    assert!(
        binding_answered(relay.udp_addr()).await,
        "relay still answers a Binding request"
    );
    let c = client(&relay, Transport::Udp, &cred(SECRET, "after-fuzz")).await;
    let conn = c.client.allocate().await.expect("allocate after fuzzing");
    round_trip(&conn, b"still relaying").await;
    let c = client(&relay, Transport::Tcp, &cred(SECRET, "after-fuzz-tcp")).await;
    let conn = c
        .client
        .allocate()
        .await
        .expect("allocate over TCP after fuzzing");
    round_trip(&conn, b"still relaying over tcp").await;

    let text = relay.metrics_text();
    assert!(
        metric(
            &text,
            "videochat_turn_bad_packets_total{reason=\"malformed\"}"
        ) > 100.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "videochat_turn_bad_packets_total{reason=\"oversized\"}"
        ) > 0.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "videochat_turn_bad_packets_total{reason=\"unknown_method\"}"
        ) > 0.0,
        "{text}"
    );
    relay.shutdown().await;
}
