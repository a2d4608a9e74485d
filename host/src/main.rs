//! The `cordum` binary: `cordum serve` runs the gateway; `cordum pack …`
//! are the pack author's tools (see `cli/`).

mod cli;

use clap::{Parser, Subcommand};
use cordum::app::App;
use cordum::settings::ServeArgs;

#[derive(Parser)]
#[command(name = "cordum", version, about = "Cordum-compatible control-plane gateway hosting WebAssembly plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (embedded store and in-process bus by default).
    Serve(Box<ServeArgs>),
    /// Pack author tools: new, build, test, keygen, sign, verify, publish, install.
    Pack(cli::pack::PackArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The tools print what matters themselves; the gateway logs its progress.
    let default_filter = match cli.command {
        Command::Serve(_) => "info,wasmtime=warn,cranelift=warn",
        Command::Pack(_) => "warn,wasmtime=warn,cranelift=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORDUM_LOG").unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Pack(args) => runtime.block_on(cli::pack::run(args)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (app, report) = App::start(&args).await?;
    if let Some(key) = &report.generated_key {
        // Printed once, on the first start; only its digest is stored.
        println!("CORDUM_BOOTSTRAP_API_KEY={key}");
        eprintln!("Generated the bootstrap admin API key; it is printed once, on stdout, and stored only as a hash.");
    }
    for pack in &report.installed {
        tracing::info!(%pack, "installed default pack");
    }
    if report.recovered > 0 {
        tracing::info!(jobs = report.recovered, "re-dispatched jobs that were in flight");
    }
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    println!("CORDUM_LISTENING={addr}");
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "cordum gateway listening");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    cordum::http::serve::serve(listener, cordum::http::router(app), args.max_connections, shutdown_signal()).await?;
    Ok(())
}

/// Ctrl-C or SIGTERM: stop accepting, let in-flight requests finish.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
