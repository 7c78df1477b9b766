//! Channels to the control plane's TLS port: the server pinned to the platform root, the
//! agent's SVID as client certificate once it has one.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::svid::{Svid, pem_certs};

/// Where the control plane is and how to recognise it.
#[derive(Clone)]
pub struct ControlPlane {
    /// `host:port`.
    pub addr: String,
    host: ServerName<'static>,
    roots: Arc<rustls::RootCertStore>,
}

impl ControlPlane {
    /// `addr` is `host:port`; `platform_root_pem` the root its server certificate chains to.
    pub fn new(addr: &str, platform_root_pem: &str) -> anyhow::Result<ControlPlane> {
        let (host, port) =
            addr.rsplit_once(':').ok_or_else(|| anyhow!("--server {addr:?}: expected HOST:PORT"))?;
        port.parse::<u16>().map_err(|_| anyhow!("--server {addr:?}: {port:?} is not a port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host =
            ServerName::try_from(host.to_owned()).map_err(|_| anyhow!("--server {addr:?}: bad host name"))?;
        let mut roots = rustls::RootCertStore::empty();
        let certs = pem_certs(platform_root_pem).context("--platform-ca")?;
        if certs.is_empty() {
            return Err(anyhow!("--platform-ca holds no PEM certificate"));
        }
        for c in certs {
            roots.add(c).context("--platform-ca: not a usable root certificate")?;
        }
        Ok(ControlPlane { addr: addr.to_owned(), host, roots: Arc::new(roots) })
    }

    /// A channel presenting `client` (the SVID) if given. Connects lazily: errors surface on
    /// the first call.
    pub fn channel(&self, client: Option<&Svid>) -> anyhow::Result<Channel> {
        let builder = rustls::ClientConfig::builder().with_root_certificates(self.roots.clone());
        let mut config = match client {
            Some(s) => {
                builder.with_client_auth_cert(s.chain(), s.key()).context("the SVID's key does not fit")?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let (target, host) = (self.addr.clone(), self.host.clone());
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_timeout(std::time::Duration::from_secs(10));
        Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let (connector, target, host) = (connector.clone(), target.clone(), host.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(host, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        })))
    }
}

/// One line for a failed call to the control plane, naming what the user can fix.
pub fn explain(addr: &str, s: &tonic::Status) -> String {
    use std::error::Error;
    match s.code() {
        tonic::Code::Unauthenticated => {
            format!("the control plane at {addr} refused the credential: {}", s.message())
        }
        tonic::Code::PermissionDenied => {
            format!("the control plane at {addr} denied this identity: {}", s.message())
        }
        tonic::Code::Unavailable | tonic::Code::Unknown
            if s.source().is_some() || s.message().contains("transport") =>
        {
            let mut why = s.message().to_owned();
            let mut src = s.source();
            while let Some(e) = src {
                why = e.to_string();
                src = e.source();
            }
            format!("cannot reach the control plane at {addr}: {why}")
        }
        _ => format!("the control plane at {addr} answered {:?}: {}", s.code(), s.message()),
    }
}
