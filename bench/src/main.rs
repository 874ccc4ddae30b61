//! `steward-bench`: Steward's benchmarks, one subcommand per scenario. Each prints its figures
//! and the machine it ran on. Every scenario talks only to loopback, is bounded in time and in
//! requests, and stops by itself. Build in release: `cargo run --release -p steward-bench --
//! <scenario>`.

/// mimalloc instead of the C library's allocator: a request's many small, short-lived
/// allocations are freed on whichever runtime thread finishes it, where glibc's arenas spent a
/// third of the runtime threads' time (malloc, free, consolidation) in the intake benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod audit;
mod child;
mod deliveries;
mod disk;
mod flagship;
mod hold;
mod hosted;
mod intake;
mod latency;
mod load;
mod machine;
mod pg;
mod probe;
mod recovery;
mod tap;
mod tenants;
mod waiting;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

use crate::machine::Machine;

/// Steward's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "steward-bench", version, about)]
struct Cli {
    /// Worker threads of the load generator's runtime (the stand-ins run there too).
    #[arg(long, global = true, default_value_t = 2)]
    load_threads: usize,
    /// The most run actors Steward keeps alive at once (its default unless given), for
    /// comparing scenarios with and without the cap.
    #[arg(long, global = true)]
    max_live_actors: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Signed webhooks at fixed open-loop rates and at saturation: throughput and latency.
    Intake {
        /// Tenants, each with one webhook source; deliveries go round-robin.
        #[arg(long, default_value_t = 50)]
        tenants: usize,
        /// Open-loop rates, per second.
        #[arg(long, value_delimiter = ',', default_values_t = [1000.0, 5000.0], value_parser = rate)]
        rates: Vec<f64>,
        /// Seconds each phase sends.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        /// Connections of the open-loop phases.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Connections of each closed-loop (saturation) phase.
        #[arg(long, value_delimiter = ',', default_values_t = [64])]
        saturation: Vec<usize>,
        /// What the runs that intake starts do meanwhile.
        #[arg(long, value_enum, default_value_t = Background::Parked)]
        background: Background,
        /// SQLite synchronous=NORMAL instead of FULL (not durable on power loss).
        #[arg(long)]
        synchronous_normal: bool,
        /// Worker threads of Steward's runtime (default: one per core).
        #[arg(long)]
        server_threads: Option<usize>,
        /// Serve from PostgreSQL instead of SQLite: a superuser URL of a server on loopback
        /// (`postgres://postgres@127.0.0.1:5432/postgres`), on which a database of the
        /// benchmark's own is made and dropped.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Whole runs at a steady rate: webhook → Slack request, click → ServiceNow PATCH.
    Flagship {
        /// Tenants; runs go round-robin.
        #[arg(long, default_value_t = 10)]
        tenants: usize,
        /// Offered rates of runs per second, one phase each.
        #[arg(long, value_delimiter = ',', default_values_t = [50.0, 500.0], value_parser = rate)]
        rates: Vec<f64>,
        /// Seconds each phase sends.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Seconds to wait, after the last webhook, for the runs to be written back.
        #[arg(long, default_value_t = 20)]
        drain_seconds: u64,
        /// Connections sending webhooks.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Worker threads of Steward's runtime (default: one per core).
        #[arg(long)]
        server_threads: Option<usize>,
    },
    /// Resident memory with runs waiting for approval, and per live run actor.
    Waiting {
        /// Tenants; runs go round-robin.
        #[arg(long, default_value_t = 10)]
        tenants: usize,
        /// Waiting-run counts to measure at, increasing (for example 10000,100000).
        #[arg(long, value_delimiter = ',', default_values_t = [10_000])]
        runs: Vec<u64>,
        /// Live run actors to hold.
        #[arg(long, default_value_t = 5_000)]
        live: u64,
        /// Connections sending webhooks.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// SQLite synchronous=FULL while building the waiting runs (slower; memory is the same).
        #[arg(long)]
        synchronous_full: bool,
    },
    /// Unfinished runs, SIGKILL, restart: time until all are resumed.
    Recovery {
        /// Tenants; runs go round-robin.
        #[arg(long, default_value_t = 10)]
        tenants: usize,
        /// Runs waiting for approval at the kill.
        #[arg(long, default_value_t = 2_000)]
        waiting: u64,
        /// Runs in flight (not waiting) at the kill.
        #[arg(long, default_value_t = 8_000)]
        moving: u64,
        /// Connections sending webhooks.
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// Audit appends per second, one tenant and many; verification rate of a long chain.
    Audit {
        /// Tenants of the many-tenant phase.
        #[arg(long, default_value_t = 50)]
        tenants: usize,
        /// Seconds each append phase runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent appenders of the second one-tenant phase.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Entries of the chain to verify.
        #[arg(long, default_value_t = 1_000_000)]
        chain: u64,
    },
    /// Steward for a parent benchmark (started by `waiting` and `recovery`).
    #[command(hide = true)]
    Serve(child::ServeArgs),
}

/// What the runs started by intake do while intake is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Background {
    /// The tenants' ServiceNow never answers: each run's actor waits on its first read, so
    /// runs write nothing more and intake is measured alone.
    Parked,
    /// Each delivery names an incident ServiceNow does not have: the run reads it (404, not
    /// retried) and ends `failed`; one read and one commit per run.
    FailFast,
    /// Each delivery names a seeded incident: the run is fetched, triaged, decided and its
    /// approval request posted, as in production.
    Full,
}

impl Background {
    fn describe(self) -> &'static str {
        match self {
            Background::Parked => {
                "the tenants' ServiceNow never answers, so each run parks at its first read \
                 (its actor stays alive, nothing more is written; past the cap on live run \
                 actors, later runs wait for a slot): intake is measured alone"
            }
            Background::FailFast => {
                "each run names an incident the ServiceNow stand-in lacks, so it ends `failed` \
                 after one read (404, not retried): one GET and one more commit per run compete \
                 with intake"
            }
            Background::Full => {
                "each run goes the whole way to its Slack approval request (fetch, triage, \
                 policy, post: three HTTP calls and four more commits per run compete with \
                 intake)"
            }
        }
    }
}

/// A rate per second: a finite number above 0 and at most a million.
fn rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if rate.is_finite() && rate > 0.0 && rate <= 1e6 {
        Ok(rate)
    } else {
        Err(format!(
            "a rate must be above 0 and at most 1000000 per second, not {s}"
        ))
    }
}

fn main() -> ExitCode {
    // As the `steward` binary does, so that Steward's figures here are those it has there.
    let _ = steward_runtime::memory::without_huge_pages();
    let started = Instant::now();
    let cli = Cli::parse();
    if let Some(max) = cli.max_live_actors {
        tenants::set_max_live_actors(max);
    }
    let result = match cli.command {
        Command::Serve(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(child::serve(args, started))),
        command => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.load_threads.max(1))
            .thread_name("bench-load")
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(scenario(command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steward-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn scenario(command: Command) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let threads = |t: Option<usize>| t.unwrap_or(machine.cores());
    let secs = Duration::from_secs;
    match command {
        Command::Intake {
            tenants,
            rates,
            seconds,
            connections,
            saturation,
            background,
            synchronous_normal,
            server_threads,
            postgres,
        } => {
            let args = intake::IntakeArgs {
                tenants,
                rates,
                window: secs(seconds),
                connections,
                saturation,
                background,
                synchronous_full: !synchronous_normal,
                server_threads: threads(server_threads),
                postgres,
            };
            intake::run(&args, &machine).await
        }
        Command::Flagship {
            tenants,
            rates,
            seconds,
            drain_seconds,
            connections,
            server_threads,
        } => {
            let args = flagship::FlagshipArgs {
                tenants,
                rates,
                window: secs(seconds),
                drain: secs(drain_seconds),
                connections,
                server_threads: threads(server_threads),
            };
            flagship::run(&args, &machine).await
        }
        Command::Waiting {
            tenants,
            runs,
            live,
            connections,
            synchronous_full,
        } => {
            let args = waiting::WaitingArgs {
                tenants,
                runs,
                live,
                connections,
                synchronous_full,
            };
            waiting::run(&args, &machine).await
        }
        Command::Recovery {
            tenants,
            waiting,
            moving,
            connections,
        } => {
            let args = recovery::RecoveryArgs {
                tenants,
                waiting,
                moving,
                connections,
            };
            recovery::run(&args, &machine).await
        }
        Command::Audit {
            tenants,
            seconds,
            concurrency,
            chain,
        } => {
            let args = audit::AuditArgs {
                tenants,
                window: secs(seconds),
                concurrency,
                chain,
            };
            audit::run(&args, &machine).await
        }
        Command::Serve(_) => anyhow::bail!("`serve` runs on its own runtime"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_must_be_positive_finite_numbers() {
        assert_eq!(rate("500"), Ok(500.0));
        assert_eq!(rate(" 0.5 "), Ok(0.5));
        for bad in ["0", "-3", "NaN", "inf", "1e9", "", "fast", &"9".repeat(400)] {
            assert!(rate(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_command_line_parses_scenarios_and_refuses_bad_rates() {
        assert!(Cli::try_parse_from(["steward-bench", "intake", "--rates", "100,200"]).is_ok());
        assert!(Cli::try_parse_from(["steward-bench", "flagship", "--rates", "0"]).is_err());
        assert!(Cli::try_parse_from(["steward-bench", "recovery", "--moving", "x"]).is_err());
        assert!(Cli::try_parse_from(["steward-bench", "nothing"]).is_err());
    }
}
