//! Origin checks: which browser pages may open `/ws` and make REST writes.
//!
//! An origin is compared as scheme, host and port (default ports filled in),
//! against the allow-list and the service's own public origins, both from
//! configuration. The request's Host header is never trusted for "same
//! origin": a DNS-rebinding page sends its own Host.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::Uri;

use crate::error::Result;
use crate::watched_file::WatchedFile;

/// `scheme://host:port`, lower-cased, with the scheme's default port filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses an `Origin` header value or a configured origin.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not an origin like https://chat.example.com[:port]");
        let uri: Uri = text.trim().parse().map_err(|_| bad())?;
        let scheme = uri.scheme_str().ok_or_else(bad)?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("`{text}`: the scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(bad)?.to_ascii_lowercase();
        if host.is_empty() || !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad());
        }
        Ok(Self {
            scheme,
            host,
            port: uri.port_u16().unwrap_or(default_port),
        })
    }
}

/// The allow-list plus the service's own origins, some of which may come
/// from a file that is re-read when it changes.
#[derive(Clone)]
pub struct OriginPolicy {
    any: bool,
    allowed: Vec<Origin>,
    /// Public origins kept in a file (the operator writes the address the
    /// Service is published under, which can change without a restart).
    file: Option<Arc<WatchedFile<Vec<Origin>>>>,
}

impl std::fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginPolicy")
            .field("any", &self.any)
            .field("allowed", &self.allowed)
            .field("file", &self.file.is_some())
            .finish()
    }
}

/// Origins in a file: comma-, space- or line-separated, `#` starts a comment.
/// An empty file is no origin yet (the address is not published).
pub fn parse_origins(text: &str) -> std::result::Result<Vec<Origin>, String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split([',', ' ', '\t']))
        .filter(|word| !word.is_empty())
        .map(|word| Origin::parse(word).map_err(|why| format!("holds {why}")))
        .collect()
}

impl OriginPolicy {
    /// From `--allowed-origins` and `--public-origin`; without public origins,
    /// the loopback origins of the bound address `listen` (and the address
    /// itself when it is a specific one) count as the service's own.
    pub fn new(allowed: &[String], public: &[String], listen: SocketAddr) -> Self {
        let any = allowed.iter().any(|a| a == "*");
        let mut origins: Vec<Origin> = allowed
            .iter()
            .chain(public)
            .filter_map(|o| Origin::parse(o).ok())
            .collect();
        if public.is_empty() {
            let port = listen.port();
            let mut own = vec![
                format!("http://localhost:{port}"),
                format!("http://127.0.0.1:{port}"),
                format!("http://[::1]:{port}"),
            ];
            match listen.ip() {
                ip if ip.is_unspecified() || ip.is_loopback() => {}
                IpAddr::V4(v4) => own.push(format!("http://{v4}:{port}")),
                IpAddr::V6(v6) => own.push(format!("http://[{v6}]:{port}")),
            }
            origins.extend(own.iter().filter_map(|o| Origin::parse(o).ok()));
        }
        Self {
            any,
            allowed: origins,
            file: None,
        }
    }

    /// Also allows the origins in `path` (`--public-origins-file`), re-read
    /// when it changes; a file that cannot be read or parsed at start is a
    /// configuration error.
    pub fn with_public_origins_file(mut self, path: PathBuf) -> Result<Self> {
        let file = WatchedFile::open("--public-origins-file", path, parse_origins)?;
        self.file = Some(Arc::new(file));
        Ok(self)
    }

    /// Whether a request with this `Origin` header (None: not a browser) may go on.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.any {
            return true;
        }
        match Origin::parse(origin) {
            Ok(o) => {
                self.allowed.contains(&o)
                    || self
                        .file
                        .as_ref()
                        .is_some_and(|file| file.get().contains(&o))
            }
            // `null` (sandboxed frames, file://) and anything unparsable.
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], public: &[&str]) -> OriginPolicy {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        OriginPolicy::new(&s(allowed), &s(public), "0.0.0.0:18080".parse().unwrap())
    }

    #[test]
    fn scheme_host_and_port_all_count() {
        let p = policy(&["https://app.example"], &[]);
        assert!(p.allows(Some("https://app.example")));
        assert!(p.allows(Some("https://APP.example:443")));
        assert!(!p.allows(Some("http://app.example")));
        assert!(!p.allows(Some("https://app.example:8443")));
        assert!(!p.allows(Some("evil://app.example")));
        assert!(!p.allows(Some("https://app.example.evil.example")));
        assert!(!p.allows(Some("null")));
        assert!(p.allows(None));
    }

    #[test]
    fn own_origin_comes_from_configuration_not_the_host_header() {
        let p = policy(&[], &[]);
        assert!(p.allows(Some("http://localhost:18080")));
        assert!(p.allows(Some("http://127.0.0.1:18080")));
        assert!(!p.allows(Some("evil://127.0.0.1:18080")));
        assert!(!p.allows(Some("http://127.0.0.1:18081")));
        // A rebinding page's origin is its own name, whatever address it resolves to.
        assert!(!p.allows(Some("http://rebind.evil.example:18080")));
        let p = policy(&[], &["https://chat.example.com"]);
        assert!(p.allows(Some("https://chat.example.com")));
        assert!(!p.allows(Some("http://localhost:18080")));
        assert!(policy(&["*"], &[]).allows(Some("https://anything.example")));
    }

    #[test]
    fn an_origins_file_lists_origins_and_refuses_anything_else() {
        let parsed = parse_origins(
            "# published\nhttp://198.18.0.10:8080\n\nhttps://a.example, https://b.example\n",
        )
        .unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0], Origin::parse("http://198.18.0.10:8080").unwrap());
        assert!(parse_origins("").unwrap().is_empty());
        let error = parse_origins("http://ok.example\nchat.example.com\n").unwrap_err();
        assert!(error.contains("chat.example.com"), "{error}");
    }

    #[test]
    fn configured_origins_must_parse() {
        assert!(Origin::parse("https://chat.example.com").is_ok());
        assert!(Origin::parse("http://[::1]:8080").is_ok());
        assert!(Origin::parse("chat.example.com").is_err());
        assert!(Origin::parse("ftp://chat.example.com").is_err());
        assert!(Origin::parse("https://chat.example.com/path").is_err());
    }
}
