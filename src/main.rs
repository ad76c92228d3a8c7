//! The `cohort` command line: parse arguments, set up tracing and the tokio
//! runtime, and hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// mimalloc: the request path allocates small, short-lived buffers on one
/// thread and frees them on another; glibc malloc spent ~6% of a request's
/// CPU there (perf, BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cohort",
    version,
    about = "A sticky traffic-splitting reverse proxy for A/B tests of ML models"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Run the proxy on this config file (hot-reloaded on change and SIGHUP).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override `listen` from the config.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file and list every error (exit 1 if invalid).
    Check { path: PathBuf },
    /// Dry run: what applying NEW would do to every experiment's epoch and
    /// stored units. Exit 0 no change, 1 invalid or rejected, 2 changes.
    /// Compares with the running proxy (admin API) unless told otherwise.
    Plan {
        new: PathBuf,
        /// Compare with this config file instead (offline, no stored units).
        #[arg(long, conflicts_with_all = ["store", "admin"])]
        against: Option<PathBuf>,
        /// Compare with this store directory (offline; the proxy may run).
        #[arg(long, conflicts_with = "admin")]
        store: Option<PathBuf>,
        /// The admin API address (default: `admin.listen` of NEW).
        #[arg(long)]
        admin: Option<String>,
        /// File holding the admin token (default: NEW's token, or the env COHORT_ADMIN_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Every config applied to a store, with its plan summary; or, with
    /// --experiment and --unit, what that unit was assigned, when, under which rule.
    History {
        /// The store directory (default: `store.path` of --config).
        #[arg(long, required_unless_present = "config")]
        store: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, requires = "unit")]
        experiment: Option<String>,
        #[arg(long, requires = "experiment")]
        unit: Option<String>,
    },
    /// Run two demo model backends (127.0.0.1:9001, :9002) and the proxy in
    /// front of them on the embedded example config.
    Demo {
        /// Where the proxy listens (default: the config's `listen`, 127.0.0.1:8080 embedded).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Where the demo keeps its assignments (embedded config only).
        #[arg(long, default_value = "./cohort-demo-data")]
        data: PathBuf,
        /// Run on this config file instead of the embedded one, hot-reloaded
        /// as you edit it; demo backends answer on its upstreams' addresses.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COHORT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { path }) => check(&path),
        Some(Command::Plan {
            new,
            against,
            store,
            admin,
            token_file,
        }) => plan(new, against, store, admin, token_file),
        Some(Command::History {
            store,
            config,
            experiment,
            unit,
        }) => {
            let store = match (store, config) {
                (Some(s), _) => s,
                (None, Some(c)) => match cohort::config::load_file(&c) {
                    Ok(cfg) => cfg.store_path,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(1);
                    }
                },
                (None, None) => unreachable!("clap requires one"),
            };
            let unit = experiment.as_deref().zip(unit.as_deref());
            emit(cohort::commands::history_command(&store, unit))
        }
        Some(Command::Demo {
            listen,
            data,
            config: None,
        }) => {
            let cfg = cohort::demo::demo_config(data);
            run(cfg, None, listen, true)
        }
        Some(Command::Demo {
            listen,
            config: Some(path),
            ..
        }) => match cohort::config::load_file(&path) {
            Ok(cfg) => run(cfg, Some(path), listen, true),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        None => {
            let Some(path) = cli.config else {
                eprintln!("cohort: give --config PATH, or try `cohort demo` (see --help)");
                return ExitCode::from(64);
            };
            let cfg = match cohort::config::load_file(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            run(cfg, Some(path), cli.listen, false)
        }
    }
}

fn emit(o: cohort::commands::Outcome) -> ExitCode {
    print!("{}", o.stdout);
    eprint!("{}", o.stderr);
    ExitCode::from(o.code)
}

fn plan(
    new: PathBuf,
    against: Option<PathBuf>,
    store: Option<PathBuf>,
    admin: Option<String>,
    token_file: Option<PathBuf>,
) -> ExitCode {
    use cohort::commands::PlanAgainst;
    if let Err(e) = cohort::config::load_file(&new) {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    let source = match (against, store) {
        (Some(f), _) => PlanAgainst::File(f),
        (None, Some(s)) => PlanAgainst::Store(s),
        (None, None) => {
            let from_new = cohort::config::load_file(&new)
                .ok()
                .as_ref()
                .and_then(cohort::commands::admin_of);
            let token = match token_file {
                Some(f) => match std::fs::read_to_string(&f) {
                    Ok(t) => Some(t.trim_end().to_string()),
                    Err(e) => {
                        eprintln!("cannot read {}: {e}", f.display());
                        return ExitCode::from(1);
                    }
                },
                None => from_new
                    .as_ref()
                    .map(|a| a.1.clone())
                    .or_else(|| std::env::var("COHORT_ADMIN_TOKEN").ok()),
            };
            let url = admin.or_else(|| from_new.map(|a| a.0));
            match (url, token) {
                (Some(url), Some(token)) => PlanAgainst::Admin { url, token },
                _ => {
                    eprintln!("cohort plan: no admin API to ask (give --admin and --token-file, or --against OLD.yaml, or --store DIR)");
                    return ExitCode::from(1);
                }
            }
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    emit(rt.block_on(cohort::commands::plan_command(&new, source)))
}

fn check(path: &std::path::Path) -> ExitCode {
    match cohort::config::load_file(path) {
        Ok(c) => {
            println!(
                "{}: ok (config version {}, {} experiment(s), {} upstream(s))",
                path.display(),
                c.version(),
                c.experiments.len(),
                c.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run(
    cfg: cohort::config::Config,
    path: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    demo: bool,
) -> ExitCode {
    // One worker runs on the current-thread scheduler, on this thread:
    // work stealing has nobody to steal for.
    let workers = cfg.runtime.workers();
    let mut rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let rt = match rt
        .enable_all()
        .build()
        .context("building the tokio runtime")
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cohort: {e:#}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        if demo {
            let backends = cohort::demo::start_backends(&cfg).await.context("starting the demo backends")?;
            let at = listen.unwrap_or(cfg.listen);
            tracing::info!(?backends, "demo backends up; try:\n  curl -i -H 'x-user-id: alice' -d '{{}}' http://{at}/predict");
        }
        cohort::run(cfg, path, listen).await.map_err(anyhow::Error::from)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cohort: {e:#}");
            // A config the ledger rejects (e.g. it would orphan units) is exit 2.
            let rejected = matches!(
                e.downcast_ref::<cohort::RunError>(),
                Some(cohort::RunError::Start(
                    cohort::reload::StartError::Rejected(_)
                ))
            );
            ExitCode::from(if rejected { 2 } else { 1 })
        }
    }
}
