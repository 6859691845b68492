//! The `gbrelay` binary: CLI dispatch only; everything else lives in the library.
//!
//! - `gbrelay [--config gateway.toml]` runs the gateway (built-in defaults without a file);
//! - `gbrelay probe FILE [--json]` and `gbrelay remux IN OUT` use the media core on files;
//! - `gbrelay sim …` runs the GB/T 28181 device simulator.

use clap::{Parser, Subcommand};
use gbrelay::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "gbrelay", version, about = "GB/T 28181 media gateway")]
struct Cli {
    /// gateway.toml; without it the gateway runs on built-in defaults.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Describe an MPEG-PS file or RFC 4571 RTP capture: streams, codecs, counts, quirks.
    Probe {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Treat PS stream type 0x90 as G.711 µ-law.
        #[arg(long)]
        ulaw: bool,
    },
    /// Remux an MPEG-PS file or RFC 4571 RTP capture into .flv, .ts or .m3u8 (+ segments beside it).
    Remux {
        input: PathBuf,
        output: PathBuf,
        /// HEVC in FLV: enhanced | codec-id-12.
        #[arg(long, default_value = "enhanced")]
        hevc: String,
        #[arg(long)]
        ulaw: bool,
    },
    /// Load harness: start the real gateway as a child process and drive it with sources and
    /// viewers on 127.0.0.1; report CPU, RSS, rates, losses and first-frame latencies.
    Bench {
        #[command(flatten)]
        opts: gbrelay::loadtest::BenchOptions,
    },
    /// Run the GB/T 28181 device simulator (an NVR or IPC that registers, answers Catalog and
    /// INVITE, and streams a PS file).
    Sim {
        #[command(flatten)]
        args: gbrelay::sim::cli::SimArgs,
    },
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

/// `tracing` to stderr; `RUST_LOG` wins over the configured level.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Run one async command on a multi-threaded runtime; its error is printed with `name`.
fn block_on<T, E: std::fmt::Display>(
    name: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let cfg = match load_config(cli.config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("gbrelay: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg.log.level);
            block_on("gbrelay", gbrelay::gateway::run(cfg))
        }
        Command::Bench { opts } => {
            init_logging("warn");
            block_on("gbrelay bench", gbrelay::loadtest::run_and_print(opts))
        }
        Command::Sim { args } => {
            init_logging("info");
            block_on("gbrelay sim", args.run())
        }
        Command::Probe { file, json, ulaw } => {
            let policy = gbrelay::proto::ps::DemuxPolicy { g711_0x90_is_ulaw: ulaw };
            match gbrelay::tools::probe(&file, policy) {
                Ok(r) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                    } else {
                        print!("{}", r.to_text());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gbrelay probe: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Remux { input, output, hevc, ulaw } => {
            let hevc = match hevc.as_str() {
                "enhanced" => gbrelay::proto::mux::flv::HevcMode::Enhanced,
                "codec-id-12" => gbrelay::proto::mux::flv::HevcMode::CodecId12,
                other => {
                    eprintln!("gbrelay remux: --hevc {other:?}: use enhanced or codec-id-12");
                    return ExitCode::from(2);
                }
            };
            let policy = gbrelay::proto::ps::DemuxPolicy { g711_0x90_is_ulaw: ulaw };
            match gbrelay::tools::remux(&input, &output, policy, hevc) {
                Ok(r) => {
                    eprintln!(
                        "gbrelay remux: {} video + {} audio frames -> {}",
                        r.video_frames,
                        r.audio_frames,
                        r.files.len()
                    );
                    for n in &r.notes {
                        eprintln!("note: {n}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gbrelay remux: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
