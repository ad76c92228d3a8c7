//! TLS termination on the proxy listener: the rustls server config made
//! from the `tls` block's PEM files, and the watcher that re-reads them.
//!
//! The listener takes the current config for each new handshake
//! ([`Tls::acceptor`]); a connection keeps the config it shook hands
//! with, so swapping in a rotated certificate drops nothing. The files are
//! polled like the config ([`crate::reload::watch::POLL`]): when their
//! content changes the pair is loaded again, and a pair that does not load
//! (unreadable, not PEM, a key that does not match the certificate, a bad
//! CA file) is refused with an error in the log while the old one stays.
//!
//! TLS 1.2 and 1.3 only, with rustls's ring provider; ALPN offers `h2`
//! then `http/1.1`, and the listener picks the front end by what was
//! agreed.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// Why a certificate/key pair (or the client CA file) did not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file held no usable PEM item of the kind it should.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the pair or the CA (a key that does not match the
    /// certificate, an unsupported key type, a bad CA certificate).
    #[error("{0}")]
    Rustls(String),
}

/// The listener's TLS state: the config new handshakes get.
pub(crate) struct Tls {
    files: TlsConfig,
    current: ArcSwap<ServerConfig>,
}

/// The files' content, to notice a change.
type Digest32 = [u8; 32];

impl Tls {
    /// Loads the pair (and the client CA) named in `files`.
    pub(crate) fn load(files: &TlsConfig) -> Result<Arc<Tls>, TlsError> {
        let config = server_config(files)?;
        Ok(Arc::new(Tls {
            files: files.clone(),
            current: ArcSwap::from_pointee(config),
        }))
    }

    /// An acceptor for one new connection, with the current pair.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Runs forever: re-reads the files every poll and swaps in a pair
    /// whose content changed and loads. A pair that does not load is
    /// logged once per distinct content and leaves the old one in place.
    pub(crate) async fn watch(self: Arc<Tls>) {
        let mut seen = digest(&self.files);
        let mut tick = tokio::time::interval(crate::reload::watch::POLL);
        loop {
            tick.tick().await;
            let now = digest(&self.files);
            if now == seen {
                continue;
            }
            seen = now;
            match server_config(&self.files) {
                Ok(config) => {
                    self.current.store(Arc::new(config));
                    tracing::info!(
                        cert_file = %self.files.cert_file.display(),
                        "TLS certificate reloaded"
                    );
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "TLS files changed but do not load; still serving the previous certificate"
                ),
            }
        }
    }
}

/// The content of the files, a missing one as empty.
fn digest(files: &TlsConfig) -> Digest32 {
    let mut h = Sha256::new();
    for p in [Some(&files.cert_file), Some(&files.key_file)]
        .into_iter()
        .chain([files.client_ca_file.as_ref()])
        .flatten()
    {
        h.update(std::fs::read(p).unwrap_or_default());
        h.update([0xff]);
    }
    h.finalize().into()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |what: String| TlsError::Pem {
        path: path.display().to_string(),
        what,
    };
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The rustls config of `files`.
fn server_config(files: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let chain = certs(&files.cert_file)?;
    let key =
        PrivateKeyDer::from_pem_slice(&read(&files.key_file)?).map_err(|e| TlsError::Pem {
            path: files.key_file.display().to_string(),
            what: format!("no private key: {e}"),
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rustls_err = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_err)?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(rustls_err)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rustls(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // Checks that the key is usable and matches the leaf certificate.
    let mut config = builder.with_single_cert(chain, key).map_err(rustls_err)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, c.cert.pem()).expect("write");
        std::fs::write(&key, c.key_pair.serialize_pem()).expect("write");
        (cert.display().to_string(), key.display().to_string())
    }

    fn files(cert: &str, key: &str) -> TlsConfig {
        TlsConfig {
            cert_file: cert.into(),
            key_file: key.into(),
            client_ca_file: None,
        }
    }

    #[test]
    fn a_matching_pair_loads_and_offers_h2_then_http1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = pair(dir.path(), "a");
        let config = server_config(&files(&cert, &key)).expect("loads");
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn bad_pairs_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_a, _) = pair(dir.path(), "a");
        let (_, key_b) = pair(dir.path(), "b");
        let e = server_config(&files(&cert_a, &key_b)).unwrap_err();
        assert!(matches!(e, TlsError::Rustls(_)), "{e}");
        let e = server_config(&files(&key_b, &key_b)).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let e = server_config(&files(&cert_a, &cert_a)).unwrap_err();
        assert!(e.to_string().contains("no private key"), "{e}");
        let missing = dir.path().join("missing").display().to_string();
        let e = server_config(&files(&missing, &key_b)).unwrap_err();
        assert!(e.to_string().starts_with("cannot read"), "{e}");
    }
}
