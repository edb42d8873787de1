//! Records JACK input ports to files with wall-clock timing (see
//! `loa_e2e::jack::capture`). Started by the end-to-end tests with
//! `JACK_DEFAULT_SERVER` naming the test's server; stops at end of stdin.
//! With `--source` the same client also plays clips into its output port
//! `NAME:source` on command (`play PATH` on stdin) and records them, so a
//! source and the receivers it reaches share one sample clock.

use clap::Parser;
use loa_e2e::jack::capture::{CaptureConfig, run};

/// Command line of the recorder.
#[derive(Parser)]
struct Args {
    /// JACK client name; ports are NAME:in_1 … NAME:in_N.
    #[arg(long, default_value = "loa_rec")]
    client: String,
    /// Number of input ports.
    #[arg(long, default_value_t = 2)]
    ports: usize,
    /// Output directory.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Register an output port `source` playing clips sent with `play PATH`.
    #[arg(long)]
    source: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    run(&CaptureConfig {
        client_name: args.client,
        ports: args.ports,
        out_dir: args.out,
        source: args.source,
    })
}
