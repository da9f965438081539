//! The `magpie` binary: server, terminal client and load generator in one executable.
//!
//! With no subcommand it runs `serve` with defaults, so `cargo run --release` starts a server
//! on 127.0.0.1:8080 storing data in `./magpie-data`.

mod bench;
mod chat;
mod memory;

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

/// Threads for blocking work: store reads (microseconds each) and Argon2 (at most
/// `ARGON2_CONCURRENCY_MAX` = 4 at a time, so reads always have threads left). Tokio's default
/// is 512: a storm of 15,000 connects (each reads its device, inbox head and catch-up) spawned
/// ~80, each keeping allocator pages of its own, and the server's memory per idle connection
/// measured 8–15 KiB from run to run; with 16 it measured 6.1–6.5 KiB in three runs
/// (`magpie bench idle --connections 15000`). The work is CPU-bound on two cores, so more
/// threads would only queue for the same cores.
const BLOCKING_THREADS_MAX: usize = 16;

fn main() -> anyhow::Result<()> {
    memory::configure();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_MAX)
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
