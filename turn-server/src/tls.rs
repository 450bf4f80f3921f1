//! TLS for `turns:` (RFC 5766 2.1 over TLS): the certificate and key read
//! from PEM files and re-read when they change, and the handshake that
//! decides ALPN.
//!
//! TLS 1.2 and 1.3 only. ALPN is never required: a client that offers
//! `stun.turn` or `stun.nat-discovery` (RFC 7443) gets one of them, a client
//! that offers something else or nothing gets no ALPN at all (browsers offer
//! none for TURN; refusing other names would break probes and proxies that
//! offer `http/1.1`). SNI is not checked: every name gets the one certificate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::TurnError;
use crate::metrics::Metrics;

/// ALPN protocol ids for STUN and TURN over (D)TLS, RFC 7443, in the order
/// the relay prefers them.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"stun.turn", b"stun.nat-discovery"];

/// Where the certificate and key come from.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the certificate files held when they were last read, to see changes
/// (a Secret volume swaps a symlink, so contents are compared, not mtimes).
#[derive(PartialEq, Eq)]
struct FileContents {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl CertFiles {
    fn read(&self) -> Result<FileContents, TurnError> {
        let read = |setting: &'static str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| TurnError::config(setting, format!("{}: {e}", path.display())))
        };
        Ok(FileContents {
            cert: read("--tls-cert-file", &self.cert)?,
            key: read("--tls-key-file", &self.key)?,
        })
    }

    /// Parses and checks a certificate chain and key: both present, the key
    /// matching the leaf, and the leaf valid now.
    fn certified_key(
        &self,
        contents: &FileContents,
        provider: &CryptoProvider,
    ) -> Result<LoadedCert, TurnError> {
        let cert_err = |reason: String| {
            TurnError::config(
                "--tls-cert-file",
                format!("{}: {reason}", self.cert.display()),
            )
        };
        let key_err = |reason: String| {
            TurnError::config(
                "--tls-key-file",
                format!("{}: {reason}", self.key.display()),
            )
        };
        let chain = CertificateDer::pem_slice_iter(&contents.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_err(format!("not a PEM certificate chain ({e})")))?;
        let Some(leaf) = chain.first() else {
            return Err(cert_err("holds no PEM certificate".into()));
        };
        let not_after = check_validity(leaf, unix_now()).map_err(cert_err)?;
        let key = PrivateKeyDer::from_pem_slice(&contents.key)
            .map_err(|e| key_err(format!("not a PEM private key ({e})")))?;
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| key_err(format!("unusable private key ({e})")))?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified.keys_match().map_err(|_| {
            key_err(format!(
                "does not belong to the certificate in {}",
                self.cert.display()
            ))
        })?;
        Ok(LoadedCert {
            key: Arc::new(certified),
            not_after,
        })
    }
}

struct LoadedCert {
    key: Arc<CertifiedKey>,
    /// Unix time the leaf expires.
    not_after: i64,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks the leaf's validity period against `now`; returns its expiry.
fn check_validity(leaf: &CertificateDer<'_>, now: i64) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the first certificate does not parse ({e})"))?;
    let validity = cert.validity();
    let not_after = validity.not_after.timestamp();
    if now > not_after {
        return Err(format!("certificate expired on {}", validity.not_after));
    }
    if now < validity.not_before.timestamp() {
        return Err(format!(
            "certificate is not valid before {}",
            validity.not_before
        ));
    }
    Ok(not_after)
}

/// The certificate currently served; swapped whole on reload.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let guard = self.0.read().unwrap_or_else(|p| p.into_inner());
        Some(Arc::clone(&guard))
    }
}

/// The TLS side of the relay: certificate, reload, and the handshake.
#[derive(Clone)]
pub(crate) struct TlsServer {
    files: CertFiles,
    provider: Arc<CryptoProvider>,
    current: Arc<CurrentCert>,
    /// Answers clients that offered a STUN ALPN id.
    with_alpn: Arc<ServerConfig>,
    /// Answers everyone else, without ALPN.
    without_alpn: Arc<ServerConfig>,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("files", &self.files)
            .finish()
    }
}

impl TlsServer {
    /// Loads the certificate and key; any problem is a configuration error.
    pub fn load(files: CertFiles) -> Result<(TlsServer, FileState), TurnError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let contents = files.read()?;
        let loaded = files.certified_key(&contents, &provider)?;
        let current = Arc::new(CurrentCert(RwLock::new(loaded.key)));
        let config = |alpn: bool| -> Result<Arc<ServerConfig>, TurnError> {
            let mut c = ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_protocol_versions(&[&version::TLS13, &version::TLS12])
                .map_err(|e| TurnError::config("--tls-cert-file", e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
            if alpn {
                c.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
            }
            Ok(Arc::new(c))
        };
        let server = TlsServer {
            with_alpn: config(true)?,
            without_alpn: config(false)?,
            files,
            provider,
            current,
        };
        Ok((
            server,
            FileState {
                contents,
                not_after: loaded.not_after,
            },
        ))
    }

    /// Re-reads the files when their contents changed since `seen`. A new
    /// valid pair replaces the served one; a bad one leaves it serving.
    fn reload(&self, seen: &mut FileState) -> Reload {
        let contents = match self.files.read() {
            Ok(c) => c,
            // A file missing for a moment (a symlink swap) is not a change.
            Err(e) => return Reload::Unreadable(e),
        };
        if contents == seen.contents {
            return Reload::Unchanged;
        }
        let result = self.files.certified_key(&contents, &self.provider);
        seen.contents = contents;
        match result {
            Ok(loaded) => {
                *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = loaded.key;
                seen.not_after = loaded.not_after;
                Reload::Replaced {
                    not_after: loaded.not_after,
                }
            }
            Err(e) => Reload::Refused(e),
        }
    }

    /// Runs the server side of a handshake on `tcp`.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
        let offers_stun = start
            .client_hello()
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| ALPN_PROTOCOLS.contains(&p)));
        let config = if offers_stun {
            Arc::clone(&self.with_alpn)
        } else {
            Arc::clone(&self.without_alpn)
        };
        start.into_stream(config).await
    }
}

/// The file contents last seen and the expiry of the served certificate.
pub(crate) struct FileState {
    contents: FileContents,
    not_after: i64,
}

enum Reload {
    Unchanged,
    Unreadable(TurnError),
    Replaced { not_after: i64 },
    Refused(TurnError),
}

/// Polls the certificate files every `interval`. Polling, rather than
/// inotify, because a mounted Secret changes through a symlink swap
/// (`..data` is re-pointed), which watches on the files themselves miss.
/// A bad pair is logged once (until the files change again); an unreadable
/// file is logged once until it is readable again.
pub(crate) async fn watch_cert_files(
    tls: TlsServer,
    mut seen: FileState,
    metrics: Arc<Metrics>,
    interval: Duration,
) {
    metrics.tls_cert_expiry.set(seen.not_after);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreadable_logged = false;
    loop {
        tick.tick().await;
        match tls.reload(&mut seen) {
            Reload::Unchanged => unreadable_logged = false,
            Reload::Unreadable(err) => {
                if !unreadable_logged {
                    unreadable_logged = true;
                    metrics.tls_reload(false);
                    tracing::warn!(error = %err, "TLS certificate files unreadable, keeping the served certificate");
                }
            }
            Reload::Replaced { not_after } => {
                unreadable_logged = false;
                metrics.tls_reload(true);
                metrics.tls_cert_expiry.set(not_after);
                tracing::info!(
                    not_after,
                    "TLS certificate changed, now serving the new one"
                );
            }
            Reload::Refused(err) => {
                unreadable_logged = false;
                metrics.tls_reload(false);
                tracing::warn!(error = %err, "new TLS certificate refused, keeping the served one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed pair valid from `years.0` to `years.1`.
    fn write_pair(dir: &Path, name: &str, key: &rcgen::KeyPair, years: (i32, i32)) -> CertFiles {
        let mut params =
            rcgen::CertificateParams::new(vec!["turn.example".into()]).expect("params");
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let cert = params.self_signed(key).expect("self-signed");
        let files = CertFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vt-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn expired_and_mismatched_pairs_name_the_setting() {
        let dir = temp("unit");
        let key = rcgen::KeyPair::generate().expect("key");
        let ok = write_pair(&dir, "ok", &key, (2020, 2200));
        assert!(TlsServer::load(ok.clone()).is_ok());

        let expired = write_pair(&dir, "expired", &key, (2020, 2021));
        let err = TlsServer::load(expired).err().expect("expired refused");
        assert!(
            err.to_string().starts_with("--tls-cert-file:") && err.to_string().contains("expired"),
            "{err}"
        );

        let early = write_pair(&dir, "early", &key, (2190, 2200));
        let err = TlsServer::load(early).err().expect("not yet valid refused");
        assert!(err.to_string().contains("not valid before"), "{err}");

        let other_key = rcgen::KeyPair::generate().expect("key");
        std::fs::write(&ok.key, other_key.serialize_pem()).expect("write");
        let err = TlsServer::load(ok).err().expect("mismatch refused");
        assert!(
            err.to_string().starts_with("--tls-key-file:")
                && err.to_string().contains("does not belong"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
