//! `eddy`: the streaming SQL server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use eddy_server::EngineConfig;
use tracing_subscriber::EnvFilter;

/// Eddy: a streaming SQL server speaking the Postgres protocol.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to accept Postgres connections on.
    #[arg(long, default_value = "127.0.0.1:4566")]
    listen: SocketAddr,
    /// Directory holding the catalog and all state.
    #[arg(long, default_value = "./eddy-data")]
    data_dir: PathBuf,
    /// Log level or filter (e.g. `info`, `eddy_executor=debug`).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// How often a barrier (and a commit) happens when no statement asks for one: how soon
    /// changes from sources become visible.
    #[arg(long, default_value_t = 1000)]
    barrier_interval_ms: u64,
    /// How often a barrier is a checkpoint that makes operator state and source positions
    /// durable: at most this much source work is redone after a crash. Statements that change
    /// data are durable when they return, whatever this is. 0 turns interval checkpoints off.
    #[arg(long, default_value_t = 1000)]
    checkpoint_interval_ms: u64,
    /// Verify every page of the data directory's store on start (reads it all): damage in the
    /// last checkpoint falls back to the one before, damage beyond repair stops the server
    /// with an error.
    #[arg(long)]
    verify_data_dir: bool,
    /// Operator state kept in memory (e.g. `2GB`); past it, joins and aggregates evict state
    /// that the last checkpoint saved and read it back from the data directory when needed.
    /// Unlimited when absent.
    #[arg(long, value_parser = eddy_executor::memory::parse_size)]
    memory_limit: Option<u64>,
    /// Address to serve Prometheus metrics on (`GET /metrics`); off when absent.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Actors per parallel operator; defaults to the number of cores.
    #[arg(long)]
    parallelism: Option<usize>,
    /// How clients authenticate: `trust` (anyone, as any user; meant for loopback) or
    /// `scram` (SCRAM-SHA-256 passwords of users made with `CREATE USER ... PASSWORD`).
    #[arg(long, value_enum, default_value_t = Auth::Trust)]
    auth: Auth,
    /// PEM certificate chain (leaf first) to offer TLS to clients with; needs `--tls-key`.
    /// Clients choose: `sslmode=require` (or `verify-full`) insists, the default `prefer`
    /// takes TLS when offered.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Auth {
    Trust,
    Scram,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let parallelism =
        args.parallelism.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let config = EngineConfig {
        data_dir: args.data_dir,
        barrier_interval: Duration::from_millis(args.barrier_interval_ms.max(1)),
        checkpoint_interval: Duration::from_millis(args.checkpoint_interval_ms),
        verify_data_dir: args.verify_data_dir,
        memory_limit: args.memory_limit,
        parallelism: parallelism.max(1),
    };
    let auth = match args.auth {
        Auth::Trust => eddy_server::AuthMode::Trust,
        Auth::Scram => eddy_server::AuthMode::Scram,
    };
    if auth == eddy_server::AuthMode::Trust && !args.listen.ip().is_loopback() {
        tracing::warn!(
            address = %args.listen,
            "trust authentication on a non-loopback address: anyone who can reach it connects as any user; \
             use --auth scram"
        );
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(eddy_server::tls::acceptor(cert, key)?),
        _ => None,
    };
    let connect = eddy_server::ConnectOptions { auth, tls };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(eddy_server::serve_with_options(
        args.listen,
        args.metrics_listen,
        connect,
        config,
        shutdown_signal(),
    ))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
