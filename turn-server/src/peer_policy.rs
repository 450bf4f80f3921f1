//! Which peer addresses a client may relay to (SSRF protection).
//!
//! Order of decision, as coturn: an explicit `--allow-peer` range wins, then an
//! explicit `--deny-peer` range, then the built-in refusal of internal ranges
//! (loopback may be let through with `--allow-loopback-peers`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a peer address was refused; also the metrics label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRefusal {
    Denied,
    Loopback,
    Private,
    LinkLocal,
    SharedAddressSpace,
    Multicast,
    Unspecified,
    Reserved,
}

impl PeerRefusal {
    pub const ALL: [PeerRefusal; 8] = [
        PeerRefusal::Denied,
        PeerRefusal::Loopback,
        PeerRefusal::Private,
        PeerRefusal::LinkLocal,
        PeerRefusal::SharedAddressSpace,
        PeerRefusal::Multicast,
        PeerRefusal::Unspecified,
        PeerRefusal::Reserved,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PeerRefusal::Denied => "denied",
            PeerRefusal::Loopback => "loopback",
            PeerRefusal::Private => "private",
            PeerRefusal::LinkLocal => "link_local",
            PeerRefusal::SharedAddressSpace => "shared_address_space",
            PeerRefusal::Multicast => "multicast",
            PeerRefusal::Unspecified => "unspecified",
            PeerRefusal::Reserved => "reserved",
        }
    }
}

/// The peer policy of one relay.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub allow_loopback: bool,
}

impl PeerPolicy {
    /// Ok when relaying to `ip` is allowed, else the reason it is not.
    ///
    /// An IPv6 address that carries an IPv4 address (mapped, compatible,
    /// translated, 6to4, NAT64, Teredo) reaches that IPv4 host through a
    /// translator or tunnel, so each IPv4 address it may carry is judged
    /// instead, and the address is refused when any of them is.
    pub fn check(&self, ip: IpAddr) -> Result<(), PeerRefusal> {
        match ip {
            IpAddr::V4(_) => self.check_one(ip),
            IpAddr::V6(v6) => {
                let embedded = embedded_ipv4(v6);
                if embedded.is_empty() {
                    return self.check_one(ip);
                }
                embedded
                    .into_iter()
                    .try_for_each(|v4| self.check_one(IpAddr::V4(v4)))
            }
        }
    }

    fn check_one(&self, ip: IpAddr) -> Result<(), PeerRefusal> {
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Err(PeerRefusal::Denied);
        }
        match builtin_refusal(ip) {
            Some(PeerRefusal::Loopback) if self.allow_loopback => Ok(()),
            Some(r) => Err(r),
            None => Ok(()),
        }
    }
}

/// The IPv4 addresses an IPv6 address can lead to:
/// - IPv4-mapped `::ffff:a.b.c.d` (`::ffff:0:0/96`);
/// - IPv4-compatible `::a.b.c.d` (`::/96`, deprecated but still routed by
///   some stacks), except `::` and `::1`, which are IPv6's own unspecified
///   and loopback addresses;
/// - IPv4-translated `::ffff:0:a.b.c.d` (`::ffff:0:0:0/96`, SIIT);
/// - 6to4 `2002:AABB:CCDD::/48` (`2002::/16`);
/// - NAT64 well-known prefix `64:ff9b::a.b.c.d` (`64:ff9b::/96`);
/// - NAT64 local-use prefix `64:ff9b:1::/48` (RFC 8215), whose translator
///   may use any RFC 6052 prefix length (48, 56, 64 or 96): every position
///   the IPv4 address could sit in is returned;
/// - Teredo `2001:0::/32`: the client's IPv4 address, inverted, in the last
///   32 bits, and the Teredo server's in bits 32..64.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let o = ip.octets();
    let s = ip.segments();
    let v4 = |a: &[u8]| Ipv4Addr::new(a[0], a[1], a[2], a[3]);
    let last32 = v4(&o[12..16]);
    let zero_prefix = s[..5] == [0, 0, 0, 0, 0];
    if zero_prefix && (s[5] == 0xffff || (s[5] == 0 && u32::from(last32) > 1)) {
        return vec![last32];
    }
    if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        return vec![last32];
    }
    if s[0] == 0x2002 {
        return vec![v4(&o[2..6])];
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return vec![last32];
    }
    if s[..3] == [0x64, 0xff9b, 1] {
        // RFC 6052 2.2: octet 8 (bits 64..71, "u") never carries address bits.
        // Longest prefix first, so the reason names the likeliest address.
        return vec![
            last32,
            v4(&o[9..13]),
            v4(&[o[7], o[9], o[10], o[11]]),
            v4(&[o[6], o[7], o[9], o[10]]),
        ];
    }
    if s[..2] == [0x2001, 0] {
        let client = !u32::from(last32);
        return vec![Ipv4Addr::from(client), v4(&o[4..8])];
    }
    Vec::new()
}

fn builtin_refusal(ip: IpAddr) -> Option<PeerRefusal> {
    match ip {
        IpAddr::V4(v4) => v4_refusal(v4),
        IpAddr::V6(v6) => v6_refusal(v6),
    }
}

fn v4_refusal(ip: Ipv4Addr) -> Option<PeerRefusal> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some(PeerRefusal::Unspecified)
    } else if ip.is_loopback() {
        Some(PeerRefusal::Loopback)
    } else if ip.is_private() {
        Some(PeerRefusal::Private)
    } else if ip.is_link_local() {
        // 169.254.0.0/16, including the cloud metadata address 169.254.169.254.
        Some(PeerRefusal::LinkLocal)
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some(PeerRefusal::SharedAddressSpace)
    } else if ip.is_multicast() {
        Some(PeerRefusal::Multicast)
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some(PeerRefusal::Reserved)
    } else {
        None
    }
}

fn v6_refusal(ip: Ipv6Addr) -> Option<PeerRefusal> {
    let s0 = ip.segments()[0];
    if ip.is_unspecified() {
        Some(PeerRefusal::Unspecified)
    } else if ip.is_loopback() {
        Some(PeerRefusal::Loopback)
    } else if (s0 & 0xfe00) == 0xfc00 {
        // Unique local fc00::/7, the IPv6 kin of RFC 1918.
        Some(PeerRefusal::Private)
    } else if (s0 & 0xffc0) == 0xfe80 || (s0 & 0xffc0) == 0xfec0 {
        // Link-local fe80::/10 and the deprecated site-local fec0::/10.
        Some(PeerRefusal::LinkLocal)
    } else if ip.is_multicast() {
        Some(PeerRefusal::Multicast)
    } else {
        None
    }
}

/// Parses one CIDR (`10.0.0.0/8`) or bare address (`192.0.2.7`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not a CIDR range or IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn default_policy_refuses_internal_ranges() {
        let p = PeerPolicy::default();
        let cases = [
            ("127.0.0.1", PeerRefusal::Loopback),
            ("10.1.2.3", PeerRefusal::Private),
            ("172.16.0.1", PeerRefusal::Private),
            ("192.168.1.1", PeerRefusal::Private),
            ("169.254.169.254", PeerRefusal::LinkLocal),
            ("100.64.0.1", PeerRefusal::SharedAddressSpace),
            ("100.127.255.254", PeerRefusal::SharedAddressSpace),
            ("224.0.0.1", PeerRefusal::Multicast),
            ("0.0.0.0", PeerRefusal::Unspecified),
            ("255.255.255.255", PeerRefusal::Reserved),
            ("::1", PeerRefusal::Loopback),
            ("::", PeerRefusal::Unspecified),
            ("fd00::1", PeerRefusal::Private),
            ("fe80::1", PeerRefusal::LinkLocal),
            ("ff02::1", PeerRefusal::Multicast),
            ("::ffff:127.0.0.1", PeerRefusal::Loopback),
            ("::ffff:169.254.169.254", PeerRefusal::LinkLocal),
            ("64:ff9b::a00:1", PeerRefusal::Private),
            // Every embedded IPv4 form of an internal address.
            ("::7f00:1", PeerRefusal::Loopback),
            ("::127.0.0.1", PeerRefusal::Loopback),
            ("::169.254.169.254", PeerRefusal::LinkLocal),
            ("::ffff:0:a00:1", PeerRefusal::Private),
            ("2002:7f00:1::", PeerRefusal::Loopback),
            ("2002:a9fe:a9fe::1", PeerRefusal::LinkLocal),
            ("64:ff9b::7f00:1", PeerRefusal::Loopback),
            ("64:ff9b::169.254.169.254", PeerRefusal::LinkLocal),
            // 64:ff9b:1::/48 with a /96 translator prefix ...
            ("64:ff9b:1::a00:1", PeerRefusal::Private),
            // Teredo: client 127.0.0.1 inverted is 80ff:fffe.
            ("2001:0:cb00:7101::80ff:fffe", PeerRefusal::Loopback),
        ];
        for (addr, want) in cases {
            assert_eq!(p.check(ip(addr)), Err(want), "{addr}");
        }
        // 64:ff9b:1::/48 with a /48 translator prefix: 10.0.0.1 split around
        // the u octet (the reason may name another candidate position).
        assert!(p.check(ip("64:ff9b:1:a00:0:100::")).is_err());
        for public in [
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2001:4860::8888",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "2002:808:808::1",
            "64:ff9b::8.8.8.8",
        ] {
            assert_eq!(p.check(ip(public)), Ok(()), "{public}");
        }
    }

    #[test]
    fn loopback_flag_allows_only_loopback() {
        let p = PeerPolicy {
            allow_loopback: true,
            ..Default::default()
        };
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(p.check(ip("::1")), Ok(()));
        assert_eq!(p.check(ip("169.254.169.254")), Err(PeerRefusal::LinkLocal));
    }

    #[test]
    fn allow_list_beats_deny_list_beats_defaults() {
        let p = PeerPolicy {
            allow: vec![parse_cidr("10.0.5.0/24").expect("cidr")],
            deny: vec![
                parse_cidr("10.0.0.0/8").expect("cidr"),
                parse_cidr("203.0.113.9").expect("addr"),
            ],
            allow_loopback: false,
        };
        assert_eq!(p.check(ip("10.0.5.7")), Ok(()));
        assert_eq!(p.check(ip("10.0.6.7")), Err(PeerRefusal::Denied));
        assert_eq!(p.check(ip("203.0.113.9")), Err(PeerRefusal::Denied));
        assert_eq!(p.check(ip("203.0.113.10")), Ok(()));
    }

    #[test]
    fn bad_cidr_is_an_error() {
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("ten").is_err());
        assert_eq!(
            parse_cidr("10.1.2.3/8").expect("cidr").to_string(),
            "10.0.0.0/8"
        );
    }
}
