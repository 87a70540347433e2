//! The Eddy server: a Postgres-compatible front end over the streaming engine.
//!
//! [`serve`] binds the listener and runs until told to stop; everything a client can do goes
//! through [`pg`] (the wire protocol) into [`session::Session::execute`].

pub mod catalog;
pub mod cdc;
pub mod compat;
pub mod copy_in;
pub mod ddl;
pub mod dml;
pub mod engine;
pub mod error;
pub mod functions;
pub mod interval_arith;
pub mod live;
pub mod metrics_http;
pub mod params;
pub mod pg;
pub mod pg_catalog;
pub mod pg_functions;
pub mod pg_live;
pub mod point_read;
pub mod query;
pub mod retained;
pub mod session;
pub mod show;
pub mod system;
pub mod tls;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use engine::{Engine, EngineConfig};
pub use users::AuthMode;

/// How clients connect: authentication, and TLS when the server has a certificate.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    pub auth: AuthMode,
    /// Offered to clients that ask for TLS (see [`tls::acceptor`]); `None` declines it.
    pub tls: Option<pgwire::tokio::TlsAcceptor>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions").field("auth", &self.auth).field("tls", &self.tls.is_some()).finish()
    }
}

/// A second handle on a connection's socket (sharing the same file description), kept by its
/// session to notice a client that went away while the server only writes to it.
fn split_probe(socket: tokio::net::TcpStream) -> std::io::Result<(tokio::net::TcpStream, Option<std::net::TcpStream>)> {
    let std_socket = socket.into_std()?;
    let probe = std_socket.try_clone().ok();
    Ok((tokio::net::TcpStream::from_std(std_socket)?, probe))
}

/// Starts the engine and serves Postgres clients on `listen` until `shutdown` resolves.
///
/// # Errors
/// When the data directory cannot be opened or the address cannot be bound.
pub async fn serve(listen: SocketAddr, config: EngineConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    serve_with_metrics(listen, None, config, shutdown).await
}

/// [`serve`], plus Prometheus metrics at `http://<metrics_listen>/metrics` when given.
///
/// # Errors
/// As [`serve`], and when the metrics address cannot be bound.
pub async fn serve_with_metrics(
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    config: EngineConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_with_options(listen, metrics_listen, ConnectOptions::default(), config, shutdown).await
}

/// [`serve_with_metrics`] with authentication as `connect` says.
///
/// # Errors
/// As [`serve_with_metrics`].
pub async fn serve_with_options(
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    connect: ConnectOptions,
    config: EngineConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    // Reading a damaged store can panic deep inside the storage engine; say what it means
    // instead of dying with a backtrace.
    let engine = match tokio::spawn(Engine::start(config)).await {
        Ok(started) => started?,
        Err(e) if e.is_panic() => anyhow::bail!(
            "the data directory {} is damaged and cannot be read; eddy does not start over it. Restore it \
             from a backup, or move it away to start empty",
            data_dir.display()
        ),
        Err(e) => anyhow::bail!("starting the engine failed: {e}"),
    };
    if let Some(addr) = metrics_listen {
        metrics_http::spawn(addr, Arc::downgrade(&engine)).await?;
    }
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, tls = connect.tls.is_some(), "eddy is ready for connections");
    let tls = connect.tls.clone();
    let factory = Arc::new(pg::HandlerFactory::new(engine.clone(), connect.auth));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let (socket, probe) = match split_probe(socket) {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot set up the connection");
                        continue;
                    }
                };
                let factory = Arc::new(factory.for_connection(probe));
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, tls, factory).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down");
    engine.shutdown().await;
    Ok(())
}
