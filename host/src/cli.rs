//! Command-line interface: `serve`, `send`, `sign`, `events`, `deliveries`,
//! `plugin check`.

use crate::config::Config;
use crate::store;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
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
    /// Plugin tools.
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

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// List stored events, oldest first.
    List {
        #[arg(long, env = "HOOKHOST_DATA_DIR", default_value = "hookhost-data")]
        data_dir: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
}

#[derive(clap::Args, Debug)]
pub struct DeliveriesArgs {
    #[arg(long, env = "HOOKHOST_DATA_DIR", default_value = "hookhost-data")]
    pub data_dir: PathBuf,
    /// Only this state (pending, running, done, failed, dead).
    #[arg(long)]
    pub state: Option<String>,
    /// Only this event (its sequence number).
    #[arg(long)]
    pub event: Option<i64>,
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Validate a component against the hookhost:plugin world.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HOOKHOST_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,cranelift=warn,wasmtime=warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.server.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.server.listen))?;
                crate::server::serve(config, listener, shutdown_signal()).await
            })?;
            Ok(0)
        }
        Command::Send(args) => send(args),
        Command::Sign { secret, file } => {
            let body = read_input(file.as_ref())?;
            println!("{}", crate::signature::sign(secret.as_bytes(), &body));
            Ok(0)
        }
        Command::Events {
            command:
                EventsCommand::List {
                    data_dir,
                    tenant,
                    json,
                    limit,
                },
        } => {
            let c = store::open_read_only(&data_dir)?;
            let rows = store::list_events(&c, tenant.as_deref(), 0, limit)?;
            for r in rows {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{:>6}  {}  {:<10}  {:<18}  {}",
                        r.seq,
                        fmt_ms(r.received_at),
                        r.tenant,
                        r.event_type,
                        r.key
                    );
                }
            }
            Ok(0)
        }
        Command::Deliveries(a) => {
            let c = store::open_read_only(&a.data_dir)?;
            let rows = store::list_deliveries(&c, a.event, a.state.as_deref(), a.limit)?;
            for r in rows {
                if a.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{:>6}  {:<14}  {:<10}  {:<8} attempts={}  {}",
                        r.event_seq,
                        r.plugin,
                        r.tenant,
                        r.state,
                        r.attempts,
                        r.last_error.unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Plugin {
            command: PluginCommand::Check { file, json },
        } => plugin_check(&file, json),
    }
}

fn fmt_ms(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
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
            if let Some(id) = &a.id {
                for k in ["id", "message_id"] {
                    if v.get(k).is_some() {
                        v[k] = id.clone().into();
                    }
                }
                if v.get("timestamp").is_some() {
                    v["timestamp"] = (store::now_ms() / 1000).into();
                }
            }
            if let (Some(b), Some(_)) = (&a.body, v.get("body")) {
                v["body"] = b.clone().into();
            }
            out.push((n.to_string(), serde_json::to_vec(&v)?));
        }
        out
    };
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .new_agent();
    let mut failed = false;
    for (name, body) in bodies {
        let mut req = agent
            .post(&a.url)
            .header("Content-Type", "application/json");
        if !a.secret.is_empty() {
            req = req.header(
                "X-Whapi-Signature",
                crate::signature::sign(a.secret.as_bytes(), &body),
            );
        }
        let mut resp = req
            .send(&body[..])
            .with_context(|| format!("POST {}", a.url))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        println!("{name}: {status} {text}");
        failed |= !(200..300).contains(&status);
    }
    Ok(if failed { 1 } else { 0 })
}

fn plugin_check(file: &PathBuf, json: bool) -> anyhow::Result<i32> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let rt = crate::runtime::engine::Runtime::new(false, 4096)?;
    let tmp = tempdir_cache();
    let cache = crate::runtime::cache::CompileCache::new(tmp.clone());
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let loaded = crate::runtime::plugin::load(&rt, &cache, name, &bytes).map_err(|e| e.to_string());
    let (imports, exports) = match &loaded {
        Ok(p) => crate::runtime::plugin::interface_names(&rt.engine, &p.component),
        // Not linkable: still list what it asks for when it is a component.
        Err(_) => match wasmtime::component::Component::new(&rt.engine, &bytes) {
            Ok(c) => crate::runtime::plugin::interface_names(&rt.engine, &c),
            Err(_) => (vec![], vec![]),
        },
    };
    let result = loaded.and_then(|mut p| {
        let caps = offline_caps(name);
        let limits = crate::config::Limits::default();
        p.subscriptions = crate::runtime::sandbox::subscriptions(&p, caps, &limits)
            .map_err(|e| format!("subscriptions() failed: {e}"))?;
        Ok(p)
    });
    let _ = std::fs::remove_dir_all(&tmp);
    rt.stop();
    let subs: Option<Vec<&str>> = result.as_ref().ok().map(|p| match &p.subscriptions {
        None => vec!["*"],
        Some(k) => k
            .iter()
            .map(|k| crate::runtime::convert::kind_name(*k))
            .collect(),
    });
    if json {
        println!(
            "{}",
            serde_json::json!({
                "file": file.display().to_string(),
                "ok": result.is_ok(),
                "error": result.as_ref().err(),
                "sha256": crate::runtime::plugin::hash(&bytes),
                "size": bytes.len(),
                "imports": imports,
                "exports": exports,
                "subscriptions": subs,
            })
        );
    } else {
        println!(
            "{}: {} bytes, sha256 {}",
            file.display(),
            bytes.len(),
            crate::runtime::plugin::hash(&bytes)
        );
        println!("imports:");
        for i in &imports {
            println!("  {i}");
        }
        println!("exports:");
        for e in &exports {
            println!("  {e}");
        }
        match &result {
            Ok(_) => println!("subscriptions: {}", subs.unwrap_or_default().join(", ")),
            Err(e) => println!("error: {e}"),
        }
    }
    Ok(if result.is_ok() { 0 } else { 1 })
}

fn tempdir_cache() -> PathBuf {
    std::env::temp_dir().join(format!("hookhost-check-{}", std::process::id()))
}

/// Capabilities with nothing granted, for calls outside a delivery.
fn offline_caps(plugin: &str) -> crate::capabilities::Capabilities {
    let dir = tempdir_cache();
    crate::capabilities::Capabilities {
        tenant: "-".into(),
        plugin: plugin.into(),
        event_seq: -1,
        grants: Default::default(),
        limits: crate::config::Limits::default(),
        store: store::Store::open(
            &dir.join("store"),
            store::StoreOptions::from(&crate::config::StoreConfig::default()),
        ),
        settings: std::sync::Arc::new(serde_json::json!({})),
        sql: crate::capabilities::SqlDb::new(dir.join("sql.sqlite")),
        messenger: None,
        resend: false,
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(5),
        sends: 0,
        log_lines: 0,
        log_dropped: 0,
        journal: None,
    }
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
