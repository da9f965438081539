//! The `magpie` binary: server, terminal client and load generator in one executable.
//!
//! With no subcommand it runs `serve` with defaults, so `cargo run --release` starts a server
//! on 127.0.0.1:8080 storing data in `./magpie-data`.

mod bench;
mod chat;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the server allocates and frees many small buffers per
/// message on several threads, and glibc's allocator took 15–25% of the store threads' time
/// in profiles (`malloc_consolidate`, `unlink_chunk`, `cfree`); see docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "magpie", version, about = "Magpie instant-messaging server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(magpie_server::ServeArgs),
    /// Chat from a terminal.
    Chat(chat::ChatArgs),
    /// Drive a running server with real WebSocket clients and report throughput and latency.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        // No subcommand means `serve` with defaults; parsing it as such keeps the MAGPIE_* env
        // overrides working for `cargo run --release`.
        None => {
            let Cli { command } = Cli::parse_from(["magpie", "serve"]);
            let args = match command {
                Some(Command::Serve(args)) => args,
                _ => magpie_server::ServeArgs::default(),
            };
            runtime.block_on(magpie_server::run(args))
        }
        Some(Command::Serve(args)) => runtime.block_on(magpie_server::run(args)),
        Some(Command::Chat(args)) => runtime.block_on(chat::run(args)),
        Some(Command::Bench(args)) => runtime.block_on(bench::run(args)),
    }
}
