//! A deliberately broken handler, for the supervision tests (`tests/supervision.rs`): it echoes every request,
//! but panics when the payload starts with [`MAGIC`]. It shows what happens when a handler panics in
//! production: the worker dies, `/ready` turns 503, the server detaches and stops, and the process exits with
//! code 3 (`shunt::control::cli::EXIT_WORKER_DIED`) and the panic message on stderr.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/panic_on_magic --config config/lab.toml --interface IF
//! printf 'shunt-test-panic' | nc -u -w1 198.18.0.1 9000   # from the client: the server exits with code 3
//! ```
//!
//! It takes every flag of `shunt serve` plus `--panic-in-factory`: the handler factory panics instead (a worker
//! that dies before it is ready; start-up fails with exit code 3, nothing attached).

use std::process::ExitCode;

use clap::Parser;
use shunt::{control::cli, Handler, Outbox, Request, Verdict};

/// A request whose payload starts with these bytes makes the handler panic.
const MAGIC: &[u8] = b"shunt-test-panic";

/// The panic message (the tests look for it on stderr).
const PANIC_MESSAGE: &str = "panic_on_magic: the magic payload arrived";

/// Echo, except for the magic payload.
struct PanicOnMagic;

impl Handler for PanicOnMagic {
    fn handle(&mut self, _request: &Request, payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
        if payload.get(..len).is_some_and(|p| p.starts_with(MAGIC)) {
            panic!("{PANIC_MESSAGE}");
        }
        Verdict::Reply { len }
    }
}

#[derive(Parser)]
#[command(about = "shunt's echo server, except that the payload `shunt-test-panic` makes the handler panic")]
struct Args {
    #[command(flatten)]
    serve: cli::ServeArgs,
    /// Make the handler factory panic instead (the worker dies before it is ready).
    #[arg(long)]
    panic_in_factory: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let in_factory = args.panic_in_factory;
    cli::run(args.serve, "panic_on_magic", move |worker| {
        if in_factory {
            panic!("panic_on_magic: the handler factory for queue {} refuses", worker.queue);
        }
        PanicOnMagic
    })
}
