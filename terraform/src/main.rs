//! `terraform-provider-trellis`: Trellis meshes, services and policies as Terraform
//! resources. Terraform starts it as a go-plugin: the environment carries the magic cookie,
//! the protocol versions Terraform speaks and its client certificate; the plugin answers
//! with one handshake line on stdout and serves plugin protocol 6 over mutual TLS.

#![forbid(unsafe_code)]

mod client;
mod data;
mod minted;
mod provider;
mod schema;
mod tls;
mod value;

use std::sync::Arc;

use base64::Engine;

/// Terraform's go-plugin handshake cookie: without it the binary was not started by Terraform.
const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
const MAGIC_COOKIE_VALUE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
const PROTOCOL_VERSION: &str = "6";

fn main() {
    if let Err(e) = run() {
        eprintln!("terraform-provider-trellis: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run() -> anyhow::Result<()> {
    if std::env::var(MAGIC_COOKIE_KEY).as_deref() != Ok(MAGIC_COOKIE_VALUE) {
        anyhow::bail!(
            "this is a Terraform provider plugin: Terraform runs it (see the README's Terraform section), not a person"
        );
    }
    let versions = std::env::var("PLUGIN_PROTOCOL_VERSIONS").unwrap_or_default();
    if !versions.split(',').any(|v| v.trim() == PROTOCOL_VERSION) {
        anyhow::bail!(
            "this provider speaks plugin protocol 6; this Terraform offers {versions:?} (Terraform 1.0 or later is needed)"
        );
    }
    let client_cert = std::env::var("PLUGIN_CLIENT_CERT")
        .map_err(|_| anyhow::anyhow!("PLUGIN_CLIENT_CERT is not set: Terraform's mutual TLS is required"))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = tls::server_tls(&client_cert)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cert = base64::engine::general_purpose::STANDARD_NO_PAD.encode(tls.certificate.as_ref());
    // The handshake line: core protocol 1, plugin protocol 6, where, how, and our certificate.
    println!("1|{PROTOCOL_VERSION}|tcp|{addr}|grpc|{cert}");
    // Terraform answers Ctrl-C itself (StopProvider, then Shutdown) and signals the whole
    // process group: like go-plugin's servers, let a request in flight finish.
    tokio::spawn(async { while tokio::signal::ctrl_c().await.is_ok() {} });
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let provider = provider::Provider::new();
    let stopped = shutdown.clone();
    tonic::transport::Server::builder()
        .add_service(
            provider::proto::provider_server::ProviderServer::new(provider)
                .max_decoding_message_size(64 << 20),
        )
        .add_service(provider::plugin::grpc_controller_server::GrpcControllerServer::new(
            provider::Controller(shutdown.clone()),
        ))
        .add_service(provider::health::health_server::HealthServer::new(provider::Health))
        .serve_with_incoming_shutdown(
            tls::incoming(listener, tls.config),
            async move { stopped.notified().await },
        )
        .await?;
    Ok(())
}
