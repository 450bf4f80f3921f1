//! A test certificate authority made with `rcgen`, certificate files laid
//! out as a Kubernetes Secret volume, and a TLS client that trusts the CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A CA that signs leaf certificates for `localhost` and `127.0.0.1`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "videochat test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf valid from the start of `years.0` to the start of `years.1`.
    pub fn leaf(&self, years: (i32, i32)) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "videochat test relay");
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }

    /// A leaf valid now.
    pub fn valid_leaf(&self) -> Leaf {
        self.leaf((2020, 2200))
    }

    /// A client configuration that trusts only this CA.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der()).expect("add CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // A resumed session reports the certificate of the first handshake;
        // reload tests must see what the relay serves now.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// Certificate files as kubelet lays out a Secret volume: `tls.crt` and
/// `tls.key` are symlinks through `..data`, itself a symlink to a
/// timestamped directory, swapped atomically on every update.
pub struct SecretVolume {
    pub dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    pub fn new(dir: &Path, leaf: &Leaf) -> SecretVolume {
        std::fs::create_dir_all(dir).expect("volume dir");
        let mut v = SecretVolume {
            dir: dir.to_owned(),
            generation: 0,
        };
        v.update(&leaf.cert_pem, &leaf.key_pem);
        std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).expect("crt link");
        std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key")).expect("key link");
        v
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// Writes a new generation and re-points `..data` at it in one rename.
    pub fn update(&mut self, cert_pem: &str, key_pem: &str) {
        self.generation += 1;
        let name = format!("..2026_11_30_{}", self.generation);
        let generation = self.dir.join(&name);
        std::fs::create_dir_all(&generation).expect("generation dir");
        std::fs::write(generation.join("tls.crt"), cert_pem).expect("write crt");
        std::fs::write(generation.join("tls.key"), key_pem).expect("write key");
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).expect("tmp link");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
    }
}

/// A TLS client stream to `server`, verifying the relay's certificate for
/// the name `127.0.0.1`.
pub async fn connect(
    server: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server).await.expect("tcp connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::IpAddress(server.ip().into());
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the relay")
}

/// The leaf certificate the relay served on `stream`.
pub fn served_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server certificate")
        .clone()
        .into_owned()
}
