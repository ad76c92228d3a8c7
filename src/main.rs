//! The `cohort` command line: parse arguments, set up tracing and the tokio
//! runtime, and hand over to the library ([`cohort::run`] for the proxy,
//! [`cohort::commands`] for the one-shot commands). Exit codes and the
//! wording of start-up errors live here (docs/operations.md lists them).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// mimalloc: the request path allocates small, short-lived buffers on one
/// thread and frees them on another; glibc malloc spent ~6% of a request's
/// CPU there (perf, BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{CommandFactory, Parser, Subcommand};

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
    /// Give the store with --store DIR, or --config FILE for its `store.path`.
    History {
        /// The store directory.
        #[arg(long)]
        store: Option<PathBuf>,
        /// A config file: its `store.path` is the store.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, requires = "unit")]
        experiment: Option<String>,
        #[arg(long, requires = "experiment")]
        unit: Option<String>,
    },
    /// Operations on the assignment store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Record a vendor's existing assignments (GrowthBook sticky-bucket
    /// documents, or a CSV of unit,variant) as the experiment's epoch-1
    /// assignments in the config's store, so migrating moves nobody. Run it
    /// before cohort serves the experiment (the proxy must be stopped).
    Import {
        /// The config file: its experiment and its `store.path`.
        #[arg(long, short)]
        config: PathBuf,
        /// The experiment (its `name` in the config).
        #[arg(long)]
        experiment: String,
        /// GrowthBook sticky-bucket documents (a JSON array, an object of
        /// documents, or one document per line).
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "csv",
            required_unless_present = "csv"
        )]
        growthbook: Option<PathBuf>,
        /// GrowthBook's experiment key in the documents (default: the experiment name).
        #[arg(long, requires = "growthbook")]
        experiment_key: Option<String>,
        /// Only documents of this GrowthBook attribute (e.g. `id`).
        #[arg(long, requires = "growthbook")]
        attribute: Option<String>,
        /// A CSV of `unit,variant` (variant: a name of the config or an index).
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
    },
    /// Read access logs (plain or gzip) and print per experiment, epoch and
    /// variant the units, first exposures, requests, error rate and latency;
    /// each epoch's sample-ratio test; and the cohort-integrity audit.
    /// Exit 0 clean, 3 when the audit or an SRM test fails, 1 on a usage or
    /// read error.
    Report {
        /// Access log files, in order (rotated ones first).
        #[arg(required = true, value_name = "LOG")]
        logs: Vec<PathBuf>,
        /// table, json or html (one self-contained page).
        #[arg(long, default_value = "table")]
        format: cohort::commands::report::Format,
        /// An SRM p-value below this fails the report.
        #[arg(long, default_value_t = cohort::commands::report::DEFAULT_ALPHA)]
        alpha: f64,
        /// No progress bar (it is only ever drawn on a terminal).
        #[arg(long)]
        no_progress: bool,
        /// A store directory: the weights of epochs whose lines predate the
        /// log's `share` field come from its ledger.
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Run two demo model backends (127.0.0.1:9001, :9002) and the proxy in
    /// front of them on the embedded example config.
    Demo {
        /// Where the proxy listens (default: the config's `listen`; 127.0.0.1:8080
        /// in the embedded config, the file's `listen` with --config).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Where the demo keeps its assignments (embedded config only).
        #[arg(long, default_value = "./cohort-demo-data", conflicts_with = "config")]
        data: PathBuf,
        /// Ports of the demo backends old-model and new-model, in that order
        /// (embedded config only; default 9001,9002; 0 = any free port).
        #[arg(
            long,
            value_delimiter = ',',
            conflicts_with = "config",
            value_name = "OLD,NEW"
        )]
        backend_ports: Option<Vec<u16>>,
        /// Run on this config file instead of the embedded one, hot-reloaded
        /// as you edit it; demo backends answer on its upstreams' addresses.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy an embedded store (ledger and assignments) into Redis, keeping
    /// every unit's variant and epoch. Idempotent: run it again after
    /// stopping the proxy to catch units first seen meanwhile.
    Migrate {
        /// The embedded store directory (`store.path`).
        #[arg(long)]
        from: PathBuf,
        /// The Redis URL (`redis://[user:pass@]host:port/db`, `rediss://`);
        /// repeat for cluster seed nodes.
        #[arg(long, required = true)]
        to: Vec<String>,
        /// The `store.key_prefix` the replicas will use.
        #[arg(long, default_value = "cohort")]
        key_prefix: String,
        /// Redis Cluster (implied by several --to).
        #[arg(long)]
        cluster: bool,
        /// A file holding the Redis password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// A PEM CA bundle for rediss://.
        #[arg(long)]
        tls_ca_file: Option<PathBuf>,
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match cli.command {
        Some(Command::Check { path }) => emit(cohort::commands::check_command(&path)),
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
                    Ok(cfg) if cfg.redis.is_some() => {
                        let unit = experiment.as_deref().zip(unit.as_deref());
                        let opts =
                            cohort::reload::redis_options(cfg.redis.as_ref().expect("checked"));
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("a tokio runtime");
                        return emit(rt.block_on(cohort::commands::history_redis(opts, unit)));
                    }
                    Ok(cfg) => cfg.store_path,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(1);
                    }
                },
                (None, None) => {
                    let mut cli = Cli::command().bin_name("cohort");
                    cli.build();
                    cli.find_subcommand_mut("history")
                        .expect("history is a subcommand")
                        .error(
                            clap::error::ErrorKind::MissingRequiredArgument,
                            "no store given: use --store DIR (the store directory) or --config FILE (its store.path)",
                        )
                        .exit()
                }
            };
            let unit = experiment.as_deref().zip(unit.as_deref());
            emit(cohort::commands::history_command(&store, unit))
        }
        Some(Command::Store(StoreCommand::Migrate {
            from,
            to,
            key_prefix,
            cluster,
            password_file,
            tls_ca_file,
        })) => {
            let read = |p: Option<PathBuf>| -> Result<Option<Vec<u8>>, String> {
                p.map(|p| std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display())))
                    .transpose()
            };
            let (password, tls_ca) = match (read(password_file), read(tls_ca_file)) {
                (Ok(p), Ok(c)) => (p, c),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("cohort store migrate: {e}");
                    return ExitCode::from(1);
                }
            };
            let to = cohort::commands::MigrateTo {
                cluster: cluster || to.len() > 1,
                urls: to,
                key_prefix,
                password: password.map(|p| String::from_utf8_lossy(&p).trim().to_string()),
                tls_ca,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            emit(rt.block_on(cohort::commands::migrate_command(&from, to)))
        }
        Some(Command::Import {
            config,
            experiment,
            growthbook,
            experiment_key,
            attribute,
            csv,
        }) => {
            let cfg = match cohort::config::load_file(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            let (format, input) = match (growthbook, csv) {
                (Some(g), _) => (
                    cohort::commands::ImportFormat::GrowthbookSticky {
                        experiment_key: experiment_key.unwrap_or_else(|| experiment.clone()),
                        attribute,
                    },
                    g,
                ),
                (None, Some(c)) => (cohort::commands::ImportFormat::Csv, c),
                (None, None) => unreachable!("clap requires --growthbook or --csv"),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            emit(rt.block_on(cohort::commands::import_command(
                cfg,
                &experiment,
                &format,
                &input,
            )))
        }
        Some(Command::Report {
            logs,
            format,
            alpha,
            no_progress,
            store,
        }) => emit(cohort::commands::report::report_command(
            &cohort::commands::report::ReportOptions {
                logs,
                format,
                alpha,
                progress: !no_progress,
                store,
            },
        )),
        Some(Command::Demo {
            listen,
            data,
            backend_ports,
            config: None,
        }) => {
            let mut cfg = cohort::demo::demo_config(data);
            if let Some(ports) = backend_ports {
                if let Err(e) = cohort::demo::set_backend_ports(&mut cfg, &ports) {
                    eprintln!("cohort demo: {e}");
                    return ExitCode::from(64);
                }
            }
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

/// A command line clap refuses: its message, and exit 2 (clap's usage
/// code), except for `cohort report`, whose scripted callers tell "the
/// experiment failed" (3) from "the report could not run" (1) and so get 1
/// for every usage or read error. `--help` and `--version` exit 0.
fn usage_error(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        return ExitCode::SUCCESS;
    }
    let report = std::env::args_os().nth(1).is_some_and(|a| a == "report");
    ExitCode::from(if report { 1 } else { 2 })
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
    if let Err(e) = cohort::config::load_file(&new) {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    let source = match cohort::commands::plan::plan_source(&new, against, store, admin, token_file)
    {
        Ok(s) => s,
        Err(o) => return emit(o),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    emit(rt.block_on(cohort::commands::plan_command(&new, source)))
}

fn run(
    mut cfg: cohort::config::Config,
    path: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    demo: bool,
) -> ExitCode {
    // The control plane runs on this thread's current-thread runtime, and
    // so does the data path with one worker; more workers each get a
    // thread and a current-thread runtime of their own (thread-per-core,
    // no work stealing: cohort::run).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cohort: {}", report(&e));
            return ExitCode::from(1);
        }
    };
    let proxy_listen = listen.unwrap_or(cfg.listen);
    let result = rt.block_on(async move {
        if demo {
            cohort::demo::start_backends(&mut cfg, path.as_deref()).await?;
            let backends: Vec<String> = cfg
                .upstreams
                .iter()
                .map(|(name, u)| format!("{name} on {}", u.authority))
                .collect();
            tracing::info!("demo backends up: {}", backends.join(", "));
            // On a line of its own, with nothing after it, so it can be
            // copied as it is.
            let at = if proxy_listen.port() == 0 {
                "ADDRESS".to_string()
            } else {
                proxy_listen.to_string()
            };
            tracing::info!("try: curl -i -H 'x-user-id: alice' -d '{{}}' http://{at}/predict");
            if proxy_listen.port() == 0 {
                tracing::info!("(ADDRESS: see the `listening on` line below)");
            }
        }
        cohort::run(cfg, path, listen)
            .await
            .map_err(anyhow::Error::from)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = match e.downcast_ref::<cohort::RunError>() {
                Some(cohort::RunError::Bind { addr, .. }) if *addr == proxy_listen => {
                    " (hint: stop what is using it, or choose another address with --listen, e.g. --listen 127.0.0.1:0 for any free port)"
                }
                Some(cohort::RunError::Bind { .. }) => {
                    " (hint: stop what is using it, or change admin.listen in the config)"
                }
                _ => "",
            };
            eprintln!("cohort: {}{hint}", report(&e));
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

/// `e` and its causes, each said once. Errors that put their cause in their
/// own message (`"store {path}: {source}"`) would otherwise print the OS
/// error twice with anyhow's `{:#}`.
fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}
