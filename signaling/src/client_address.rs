//! The client's address when requests arrive through reverse proxies (an
//! Ingress controller, a cloud L7 balancer). Every per-address limit keys on
//! it; without this, every client behind an Ingress shares the controller's
//! address and one busy minute of reconnects locks everyone out.
//!
//! Only proxies named by `--trusted-proxies` are believed. Their
//! `X-Forwarded-For` is walked from the right (the entry the nearest proxy
//! appended) past further trusted proxies; the first address that is not a
//! trusted proxy is the client. Entries left of it are whatever the client
//! sent and are never read, so a client cannot pick its own address. From an
//! untrusted peer the header is ignored.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Entries of `X-Forwarded-For` looked at, at most: more hops than this is
/// not a proxy chain but a header built to cost CPU.
const MAX_HOPS: usize = 16;

/// A `--trusted-proxies` entry: a network (`10.0.0.0/8`) or one address.
pub fn parse_trusted_proxy(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!("`{text}` is not an address or a network in CIDR form (e.g. 10.0.0.0/8)")
    })
}

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(proxies: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    proxies.iter().any(|net| net.contains(&ip))
}

/// The client's address of a request that came over a TCP connection from
/// `peer`.
pub fn client_ip(proxies: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(proxies, peer) {
        return peer;
    }
    // From the last header line's last entry backwards: the nearest first.
    // Nothing is collected, so a long header costs only the hops walked.
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.rsplit(','));
    let mut client = peer;
    for entry in entries.take(MAX_HOPS) {
        let Some(ip) = parse_entry(entry) else {
            // Not an address: what the nearest trusted hop saw is the answer.
            return client;
        };
        client = ip;
        if !is_trusted(proxies, ip) {
            return ip;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port
/// (`192.0.2.1:5000`, `[2001:db8::1]:5000`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        return Some(socket.ip().to_canonical());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| parse_trusted_proxy(s).unwrap())
            .collect()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies = nets(&["10.0.0.0/8"]);
        let claimed = headers(&["198.51.100.7"]);
        assert_eq!(
            client_ip(&proxies, ip("203.0.113.9"), &claimed),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(&[], ip("10.1.2.3"), &claimed),
            ip("10.1.2.3"),
            "no trusted proxies: the header is never read"
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client_and_entries_left_of_it_are_ignored() {
        let proxies = nets(&["10.0.0.0/8", "192.0.2.10"]);
        // The client sent a made-up entry; the edge proxy appended the real
        // address, the Ingress controller the edge's.
        let chain = headers(&["1.2.3.4, 198.51.100.7, 192.0.2.10"]);
        assert_eq!(
            client_ip(&proxies, ip("10.4.0.12"), &chain),
            ip("198.51.100.7")
        );
        // Several header lines count as one list, in order.
        let lines = headers(&["1.2.3.4", "198.51.100.7", "192.0.2.10"]);
        assert_eq!(
            client_ip(&proxies, ip("10.4.0.12"), &lines),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_read() {
        let proxies = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(&proxies, ip("10.0.0.1"), &headers(&["198.51.100.7:5000"])),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(&proxies, ip("10.0.0.1"), &headers(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(
                &proxies,
                ip("::ffff:10.0.0.1"),
                &headers(&["::ffff:198.51.100.7"])
            ),
            ip("198.51.100.7"),
            "an IPv4-mapped peer is the IPv4 proxy"
        );
    }

    #[test]
    fn garbage_or_a_missing_header_leaves_the_last_trusted_hop() {
        let proxies = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(&proxies, ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(&proxies, ip("10.0.0.1"), &headers(&["unknown, 10.0.0.2"])),
            ip("10.0.0.2")
        );
        // All trusted: the farthest one looked at.
        assert_eq!(
            client_ip(&proxies, ip("10.0.0.1"), &headers(&["10.0.0.3, 10.0.0.2"])),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn a_chain_longer_than_the_hop_limit_is_not_walked_to_its_end() {
        let proxies = nets(&["10.0.0.0/8"]);
        let mut chain = vec!["198.51.100.7".to_owned()];
        chain.extend((0..100).map(|i| format!("10.0.{}.{}", i / 250, i % 250 + 1)));
        let header = chain.join(", ");
        let client = client_ip(&proxies, ip("10.9.9.9"), &headers(&[&header]));
        assert!(
            is_trusted(&proxies, client),
            "the walk stops within {MAX_HOPS} hops: {client}"
        );
    }

    #[test]
    fn trusted_proxy_settings_are_networks_or_addresses() {
        assert_eq!(
            parse_trusted_proxy("10.1.2.3/8").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_trusted_proxy("192.0.2.10").unwrap(),
            "192.0.2.10/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_trusted_proxy("fd00::/8").unwrap(),
            "fd00::/8".parse::<IpNet>().unwrap()
        );
        let error = parse_trusted_proxy("ingress-nginx").unwrap_err();
        assert!(error.contains("CIDR"), "{error}");
    }
}
