//! TLS to `https://` upstreams: the rustls client of an upstream (built
//! when its `tls:` block was validated, [`crate::config::UpstreamTls::client`],
//! with the ALPN of its protocol added)
//! and the socket hyper's client reads and writes, plain or TLS.
//!
//! SNI and the name the certificate is verified against are the
//! upstream's `server_name` when set, else the host of the endpoint URL
//! the request goes to (an IP address is verified as one). ALPN offers
//! only the protocol the upstream is configured to speak (`h2`, or
//! `http/1.1`): the config says what the upstream speaks, the handshake
//! only confirms it. A handshake that fails — an unknown issuer, a name
//! mismatch, a refused client certificate — is a [`TlsFailed`], which the
//! handler tells apart from a refused connection (`upstream_tls`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::body::BoxError;
use crate::config::{UpstreamConfig, UpstreamProtocol};

/// How an upstream's connections shake hands.
pub(crate) struct TlsTo {
    connector: TlsConnector,
    /// The upstream's `connect_timeout`, which the handshake gets too.
    timeout: Duration,
    /// `server_name`, when the config sets one.
    server_name: Option<ServerName<'static>>,
}

/// The TLS handshake with an upstream failed, and why (rustls's words).
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with the upstream failed: {0}")]
pub(crate) struct TlsFailed(pub io::Error);

impl TlsTo {
    /// The TLS side of `config`, `None` for a plain `http://` upstream.
    pub(crate) fn of(config: &UpstreamConfig) -> Option<Arc<TlsTo>> {
        let tls = config.tls.as_ref()?;
        let alpn: &[&[u8]] = match config.protocol {
            UpstreamProtocol::H2 => &[b"h2"],
            UpstreamProtocol::Http1 => &[b"http/1.1"],
        };
        let mut client = rustls::ClientConfig::clone(&tls.client);
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Some(Arc::new(TlsTo {
            connector: TlsConnector::from(Arc::new(client)),
            timeout: config.connect_timeout,
            server_name: tls
                .server_name
                .as_deref()
                .map(|n| ServerName::try_from(n.to_string()).expect("validated server_name")),
        }))
    }

    /// Shakes hands over `tcp` with the endpoint whose URL host is `host`,
    /// within the connect timeout (past it: a `TimedOut` I/O error, which
    /// the handler reports as a connect timeout), else a [`TlsFailed`].
    pub(crate) async fn handshake(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, BoxError> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_string())
                    .map_err(|e| TlsFailed(io::Error::new(io::ErrorKind::InvalidInput, e)))?
            }
        };
        match tokio::time::timeout(self.timeout, self.connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(Box::new(TlsFailed(e))),
            Err(_) => Err(Box::new(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))),
        }
    }
}

/// An upstream connection: plain TCP, or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether ALPN settled on HTTP/2.
    pub(crate) fn alpn_h2(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// An upstream is built from the client its config was validated with
    /// and reads no trust store itself (the old code re-read the system
    /// store here and panicked if that failed on a reload): this config
    /// names no `ca_file`, yet a handshake with a server whose CA only the
    /// validated client trusts succeeds.
    #[tokio::test]
    async fn an_upstream_shakes_hands_with_the_client_built_at_validation() {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(leaf.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        });

        let client = crate::config::upstream_tls_client(Some(ca.pem().as_bytes()), None).unwrap();
        let mut config = super::super::tests::config(&[addr.to_string()]);
        config.tls = Some(crate::config::UpstreamTls {
            ca: None,
            client_cert: None,
            server_name: None,
            files: [None, None, None],
            client: Arc::new(client),
        });
        let tls = TlsTo::of(&config).expect("an https upstream");
        let tcp = TcpStream::connect(addr).await.unwrap();
        tls.handshake("127.0.0.1", tcp)
            .await
            .expect("verified with the validated client's CA");
    }
}
