//! The rustls client config of an `https://` upstream, built once when
//! its `tls:` block is validated and carried in [`UpstreamTls::client`](super::UpstreamTls::client): a
//! bad file set (a key that does not fit its certificate, say) or an
//! empty system trust store is reported against the config, and building
//! the upstream from a validated config cannot fail — the system trust
//! store is not read a second time, where it might fail and leave no
//! error to report.
//!
//! Without `ca_file` the upstream is verified against the system's trust
//! store, read with `rustls-native-certs` (already in the tree for the
//! Redis client's `rediss://`): operators add their private CAs to the
//! system store as for any other client on the host, and a CA bundle
//! update from the OS needs no cohort release, which a compiled-in list
//! (webpki-roots) would.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// The client config verifying against `ca` (PEM; none: the system trust
/// store) and presenting `client_cert` (chain and key PEM), without ALPN
/// (each upstream sets the protocol it speaks).
pub(crate) fn upstream_tls_client(
    ca: Option<&[u8]>,
    client_cert: Option<&(Vec<u8>, Vec<u8>)>,
) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| format!("ca_file: not PEM certificates: {e}"))?;
                roots
                    .add(c)
                    .map_err(|e| format!("ca_file: unusable CA certificate: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no CA certificate in the system trust store: install one (ca-certificates) or set tls.ca_file"
                        .into(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("cert_file: not PEM certificates: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("key_file: no private key: {e}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!("cert_file and key_file do not make a client certificate: {e}")
            })?
        }
    };
    Ok(config)
}
