//! Command-line interface: `serve`, `send`, `sign`, the operator commands
//! (`events`, `deliveries`, `dead-letters`, `replay`, `plugins`, `kv`) and the
//! plugin authors' tools (`plugin check`, `plugin test`).

mod config_check;
mod folder;
mod kv;
mod operate;
mod out;
mod plugin;
mod remote;
mod replay;

use crate::config::Config;
use crate::store;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use out::outln;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "hookhost",
    version,
    about = "Webhook receiver for WhatsApp gateway events with WebAssembly plugins"
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "HOOKHOST_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the receiver.
    Serve(ServeArgs),
    /// Compile a component from standard input into the compile cache (run
    /// by `serve` for large plugins).
    #[command(hide = true)]
    CompileWorker {
        #[arg(long)]
        cache_dir: PathBuf,
        #[arg(long, action = clap::ArgAction::Set)]
        pooling: bool,
        #[arg(long)]
        max_memory_mb: u64,
        #[arg(long, action = clap::ArgAction::Set)]
        parallel: bool,
    },
    /// Sign and POST a sample event (or a JSON file) to a receiver.
    Send(SendArgs),
    /// Print the X-Whapi-Signature of a body.
    Sign {
        #[arg(long, env = "WHAPI_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// File to sign; `-` or nothing reads standard input.
        file: Option<PathBuf>,
    },
    /// Stored events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// The delivery ledger.
    Deliveries(DeliveriesArgs),
    /// Dead letters: list them, retry or discard one.
    DeadLetters {
        #[command(subcommand)]
        command: Option<DeadLettersCommand>,
        #[command(flatten)]
        target: Target,
        /// One JSON object a line (the listing).
        #[arg(long, global = true)]
        json: bool,
    },
    /// Run an event (SEQ) or a range (--from) through its plugins again.
    ///
    /// Through a running server (--url) a range reaches every plugin that
    /// now runs for the events' tenant: a plugin added later gets the
    /// history it missed.
    Replay {
        /// The event's sequence number (see `events list`).
        #[arg(required_unless_present = "from")]
        seq: Option<i64>,
        /// A range instead: from this event…
        #[arg(long, value_name = "SEQ", conflicts_with = "seq")]
        from: Option<i64>,
        /// …to this one (the newest when not given).
        #[arg(long, value_name = "SEQ", requires = "from")]
        to: Option<i64>,
        /// Only this tenant's events of the range.
        #[arg(long, requires = "from")]
        tenant: Option<String>,
        /// Only this plugin.
        #[arg(long)]
        plugin: Option<String>,
        /// Send messages again even if this event already sent them.
        #[arg(long)]
        resend: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Copy the store and the plugins' databases into a new folder.
    ///
    /// Each file is a consistent snapshot, taken also while the server
    /// runs. The folder is a data directory: `serve --data-dir` it to
    /// restore.
    Backup {
        /// A folder that does not exist yet (or is empty).
        #[arg(long)]
        to: PathBuf,
        #[arg(long, env = "HOOKHOST_DATA_DIR", default_value = "hookhost-data")]
        data_dir: PathBuf,
    },
    /// Make a running server read its configuration file again.
    ///
    /// Tenants (secrets, plugins, grants, limits, settings, gateway
    /// accounts, rate limits) and the default limits change at once, as on
    /// SIGHUP; the answer names what changed and what needs a restart. An
    /// invalid file changes nothing.
    Reload {
        /// The server, e.g. http://127.0.0.1:3000 (its admin API).
        #[arg(long, env = "HOOKHOST_URL", default_value = "http://127.0.0.1:3000")]
        url: String,
        /// The admin token of that server.
        #[arg(long, env = "HOOKHOST_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Plugins: status from a running server, or the files of a folder.
    Plugins {
        #[command(flatten)]
        target: Target,
        /// Without --url: the plugins folder to list.
        #[arg(long, env = "HOOKHOST_PLUGINS_DIR", default_value = "hookhost-plugins")]
        plugins_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The plugins' key-value data: usage, keys, values, deletes.
    Kv {
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Plugin authors' tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, short, env = "HOOKHOST_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "HOOKHOST_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "HOOKHOST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "HOOKHOST_PLUGINS_DIR")]
    pub plugins_dir: Option<PathBuf>,
}

impl ServeArgs {
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(l) = self.listen {
            c.server.listen = l;
        }
        if let Some(d) = &self.data_dir {
            c.server.data_dir = d.clone();
        }
        if let Some(d) = &self.plugins_dir {
            c.server.plugins_dir = d.clone();
        }
        c.runtime.compiler_exe = std::env::current_exe().ok();
        Ok(c)
    }
}

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// Sample event name (message_received, message_sent, ack_update,
    /// message_reaction, test_webhook) or `all`.
    #[arg(default_value = "message_received")]
    pub event: String,
    /// Send this JSON file instead of a sample.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Where to POST: a webhook URL, or a server address (its `/webhook`);
    /// `http://` when no scheme is given.
    #[arg(long, default_value = "http://127.0.0.1:3000/webhook")]
    pub url: String,
    /// Signing secret; no signature header when empty.
    #[arg(
        long,
        env = "WHAPI_WEBHOOK_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub secret: String,
    /// Replace the sample's message id (and timestamp) so it is not a duplicate.
    #[arg(long)]
    pub id: Option<String>,
    /// Replace the sample's text body.
    #[arg(long)]
    pub body: Option<String>,
}

/// Where the operator commands act: a running server's admin API
/// (`--url`, `--token`) or the data directory directly.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Data directory (used without --url).
    #[arg(
        long,
        env = "HOOKHOST_DATA_DIR",
        default_value = "hookhost-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// A running server, e.g. http://127.0.0.1:3000 (its admin API).
    #[arg(long, env = "HOOKHOST_URL", global = true)]
    pub url: Option<String>,
    /// The admin token of that server.
    #[arg(
        long,
        env = "HOOKHOST_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// List stored events, oldest first (times in UTC).
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        tenant: Option<String>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
        /// Events after this sequence number (to page on).
        #[arg(long, value_name = "SEQ")]
        after: Option<i64>,
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        /// Only the newest N events.
        #[arg(long, value_name = "N", conflicts_with_all = ["after", "limit"], value_parser = clap::value_parser!(i64).range(1..))]
        last: Option<i64>,
        /// With --last: the newest N before this sequence number (to page back).
        #[arg(long, value_name = "SEQ", requires = "last", conflicts_with = "follow")]
        before: Option<i64>,
        /// Then keep printing events as they are stored, until interrupted
        /// (starting with the newest 10 unless --after or --last says).
        #[arg(long, short)]
        follow: bool,
    },
    /// One event with its body and deliveries.
    Show {
        seq: i64,
        #[command(flatten)]
        target: Target,
    },
    /// Delete the events older than AGE that every plugin is done with (as
    /// `[store] retention` does while the server runs).
    Prune {
        /// e.g. 30d, 12h, 90m.
        #[arg(long, value_name = "AGE", value_parser = crate::config::Age::parse_positive)]
        older_than: std::time::Duration,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Args, Debug)]
pub struct DeliveriesArgs {
    #[command(flatten)]
    pub target: Target,
    /// Only this state.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::store::DELIVERY_STATES))]
    pub state: Option<String>,
    /// Only this event (its sequence number).
    #[arg(long)]
    pub event: Option<i64>,
    /// Only this tenant's.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this plugin's.
    #[arg(long)]
    pub plugin: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// Deliveries of events after this sequence number (to page on).
    #[arg(long, value_name = "SEQ")]
    pub after: Option<i64>,
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: i64,
    /// Only the newest N.
    #[arg(long, value_name = "N", conflicts_with_all = ["after", "limit"], value_parser = clap::value_parser!(i64).range(1..))]
    pub last: Option<i64>,
    /// With --last: deliveries of the newest events before this sequence
    /// number (to page back).
    #[arg(long, value_name = "SEQ", requires = "last")]
    pub before: Option<i64>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum DeadLettersCommand {
    /// List dead letters (the default), of --tenant and --plugin when given.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        plugin: Option<String>,
    },
    /// Put a dead letter (SEQ PLUGIN) back in the queue, attempts reset;
    /// or all of them (--all, narrowed by --tenant and --plugin).
    Retry(Settle),
    /// Give a dead letter (SEQ PLUGIN) up, or all of them (--all): kept in
    /// the ledger as `discarded`, it no longer keeps its event from
    /// retention.
    Discard(Settle),
}

/// One dead letter, or `--all` of them.
#[derive(clap::Args, Debug, Clone)]
pub struct Settle {
    /// The event's sequence number.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub seq: Option<i64>,
    /// The plugin whose delivery of it died.
    #[arg(value_name = "PLUGIN", required_unless_present = "all")]
    pub plugin_name: Option<String>,
    /// Every dead letter (of --tenant, of --plugin when given).
    #[arg(long)]
    pub all: bool,
    /// With --all: only this tenant's.
    #[arg(long, requires = "all")]
    pub tenant: Option<String>,
    /// With --all: only this plugin's.
    #[arg(long = "plugin", value_name = "PLUGIN", requires = "all")]
    pub only_plugin: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Keys and bytes each (tenant, plugin) holds, as the `kv_keys` and
    /// `kv_bytes` quotas count them.
    Usage {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// A plugin's keys, in order, with the size of each value.
    List {
        tenant: String,
        plugin: String,
        /// Only the keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Write one value to standard output, as stored (exit code 1 when
    /// there is no such key).
    Get {
        tenant: String,
        plugin: String,
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete one key, or every key that starts with --prefix (`--prefix
    /// ""`: all of the plugin's keys for the tenant).
    Delete {
        tenant: String,
        plugin: String,
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        key: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Read a configuration file as `serve` and a reload would, and print
    /// what each tenant gets and what looks unintended (exit code 1 when
    /// the file would be refused).
    Check {
        #[arg(long, short, env = "HOOKHOST_CONFIG", default_value = "hookhost.toml")]
        config: PathBuf,
        /// Where the plugins are (default: the file's `plugins_dir`), to
        /// check the names the file gives.
        #[arg(long, env = "HOOKHOST_PLUGINS_DIR")]
        plugins_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Validate a component against the hookhost:plugin world.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run a plugin once against an event with in-memory capabilities and
    /// print what it did.
    Test(Box<plugin::TestArgs>),
}

pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HOOKHOST_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,cranelift=warn,wasmtime=warn"));
    // Colours for a terminal only: not into a file, a pipe or journald
    // (and never with NO_COLOR set).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => b.try_init(),
        LogFormat::Json => b.json().flatten_event(true).try_init(),
    };
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.load()?;
            // A reload reads the file again, with the same overrides.
            let source: Option<crate::live::Source> = args
                .config
                .is_some()
                .then(|| Box::new(move || args.load()) as crate::live::Source);
            let rt = crate::server::main_runtime()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.server.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.server.listen))?;
                crate::server::serve(config, source, listener, shutdown_signal()).await
            })?;
            Ok(0)
        }
        Command::CompileWorker {
            cache_dir,
            pooling,
            max_memory_mb,
            parallel,
        } => Ok(crate::runtime::cache::compile_worker(
            cache_dir,
            crate::runtime::engine::EngineSettings {
                pooling,
                max_memory_mb,
                parallel,
            },
        )),
        Command::Send(args) => send(args),
        Command::Sign { secret, file } => {
            let body = read_input(file.as_ref())?;
            outln!("{}", crate::signature::sign(secret.as_bytes(), &body));
            Ok(0)
        }
        Command::Events { command } => match command {
            EventsCommand::List {
                target,
                tenant,
                json,
                after,
                limit,
                last,
                before,
                follow,
            } => {
                let page = match (last, after) {
                    (Some(n), _) => match before {
                        Some(seq) => operate::Page::Before(seq, n),
                        None => operate::Page::Last(n),
                    },
                    (None, None) if follow => operate::Page::Last(10),
                    (None, after) => operate::Page::After(after.unwrap_or(0), limit),
                };
                operate::events_list(&target, tenant.as_deref(), json, page, follow)
            }
            EventsCommand::Show { seq, target } => operate::event_show(&target, seq),
            EventsCommand::Prune { older_than, target } => {
                operate::events_prune(&target, older_than)
            }
        },
        Command::Deliveries(a) => {
            let page = match (a.last, a.before) {
                (Some(n), Some(seq)) => operate::Page::Before(seq, n),
                (Some(n), None) => operate::Page::Last(n),
                (None, _) => operate::Page::After(a.after.unwrap_or(0), a.limit),
            };
            let filter = store::DeliveryFilter {
                event: a.event,
                state: a.state,
                tenant: a.tenant,
                plugin: a.plugin,
                after: None,
                before: None,
            };
            operate::deliveries(&a.target, filter, a.json, page)
        }
        Command::DeadLetters {
            command,
            target,
            json,
        } => match command.unwrap_or(DeadLettersCommand::List {
            tenant: None,
            plugin: None,
        }) {
            DeadLettersCommand::List { tenant, plugin } => {
                let all = operate::Page::After(0, 10_000);
                let dead = store::DeliveryFilter {
                    state: Some("dead".into()),
                    tenant,
                    plugin,
                    ..Default::default()
                };
                operate::deliveries(&target, dead, json, all)
            }
            DeadLettersCommand::Retry(which) => {
                operate::settle(&target, which, store::DeadLetter::Retry)
            }
            DeadLettersCommand::Discard(which) => {
                operate::settle(&target, which, store::DeadLetter::Discard)
            }
        },
        Command::Replay {
            seq,
            from,
            to,
            tenant,
            plugin,
            resend,
            target,
        } => match (seq, from) {
            (Some(seq), _) => replay::replay(&target, seq, plugin, resend),
            (None, Some(from)) => {
                let range = replay::Range {
                    from,
                    to,
                    tenant,
                    plugin,
                };
                replay::replay_range(&target, &range, resend)
            }
            (None, None) => unreachable!("clap requires SEQ or --from"),
        },
        Command::Backup { to, data_dir } => operate::backup(&data_dir, &to),
        Command::Reload { url, token, json } => operate::reload(
            &Target {
                data_dir: PathBuf::new(),
                url: Some(url),
                token,
            },
            json,
        ),
        Command::Plugins {
            target,
            plugins_dir,
            json,
        } => folder::plugins(&target, &plugins_dir, json),
        Command::Config {
            command:
                ConfigCommand::Check {
                    config,
                    plugins_dir,
                },
        } => config_check::check(&config, plugins_dir.as_deref()),
        Command::Kv { command } => match command {
            KvCommand::Usage {
                tenant,
                json,
                target,
            } => kv::usage(&target, tenant.as_deref(), json),
            KvCommand::List {
                tenant,
                plugin,
                prefix,
                limit,
                json,
                target,
            } => kv::list(&target, &tenant, &plugin, &prefix, limit, json),
            KvCommand::Get {
                tenant,
                plugin,
                key,
                target,
            } => kv::get(&target, &tenant, &plugin, &key),
            KvCommand::Delete {
                tenant,
                plugin,
                key,
                prefix,
                target,
            } => {
                let which = match (key, prefix) {
                    (Some(k), _) => store::KvSelection::Key(k),
                    (None, Some(p)) => store::KvSelection::Prefix(p),
                    (None, None) => unreachable!("clap requires KEY or --prefix"),
                };
                kv::delete(&target, &tenant, &plugin, which)
            }
        },
        Command::Plugin {
            command: PluginCommand::Check { file, json },
        } => plugin::check(&file, json),
        Command::Plugin {
            command: PluginCommand::Test(args),
        } => plugin::test(*args),
    }
}

/// `host:port` without a scheme is spoken to over plain HTTP.
pub(crate) fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// A server's address without a path (`http://host:port`, or `host:port`)
/// means its default tenant's `/webhook`.
fn webhook_url(url: &str) -> String {
    let url = &with_scheme(url);
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) if url[after_scheme + i..] != *"/" => url.to_string(),
        _ => format!("{}/webhook", url.trim_end_matches('/')),
    }
}

/// Milliseconds since the epoch as RFC 3339 in UTC, to the millisecond.
pub(crate) fn fmt_ms(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let s = ms_of_day / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms_of_day % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn read_input(file: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    match file {
        Some(p) if p.as_os_str() != "-" => {
            body = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
        }
        _ => {
            std::io::stdin().read_to_end(&mut body)?;
        }
    }
    Ok(body)
}

fn send(a: SendArgs) -> anyhow::Result<i32> {
    let bodies: Vec<(String, Vec<u8>)> = if let Some(f) = &a.file {
        vec![(f.display().to_string(), read_input(Some(f))?)]
    } else {
        let names: Vec<&str> = if a.event == "all" {
            crate::samples::NAMES.to_vec()
        } else {
            vec![a.event.as_str()]
        };
        let mut out = Vec::new();
        for n in names {
            let Some(s) = crate::samples::get(n) else {
                bail!(
                    "unknown sample `{n}`; known: {} or all",
                    crate::samples::NAMES.join(", ")
                );
            };
            let mut v: serde_json::Value = serde_json::from_str(s)?;
            crate::samples::vary(&mut v, a.id.as_deref(), a.body.as_deref());
            out.push((n.to_string(), serde_json::to_vec(&v)?));
        }
        out
    };
    let agent = remote::agent();
    let url = webhook_url(&a.url);
    let mut failed = false;
    for (name, body) in bodies {
        let mut req = agent.post(&url).header("Content-Type", "application/json");
        if !a.secret.is_empty() {
            req = req.header(
                "X-Whapi-Signature",
                crate::signature::sign(a.secret.as_bytes(), &body),
            );
        }
        let mut resp = req.send(&body[..]).with_context(|| format!("POST {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        outln!("{name}: {status} {text}");
        failed |= !(200..300).contains(&status);
    }
    Ok(if failed { 1 } else { 0 })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::{fmt_ms, webhook_url};

    #[test]
    fn a_bare_server_address_means_its_webhook() {
        for (given, posted) in [
            ("http://127.0.0.1:3000", "http://127.0.0.1:3000/webhook"),
            ("http://127.0.0.1:3000/", "http://127.0.0.1:3000/webhook"),
            ("http://h/webhook/acme", "http://h/webhook/acme"),
            ("https://h/hooks/in?x=1", "https://h/hooks/in?x=1"),
            ("127.0.0.1:3000", "http://127.0.0.1:3000/webhook"),
            (
                "localhost:3000/webhook/acme",
                "http://localhost:3000/webhook/acme",
            ),
        ] {
            assert_eq!(webhook_url(given), posted);
        }
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(fmt_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(fmt_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(fmt_ms(1_795_970_761_149), "2026-11-29T16:46:01.149Z");
        assert_eq!(fmt_ms(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(fmt_ms(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }
}
