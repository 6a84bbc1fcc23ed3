//! Wires the pieces together: store, plugin runtime, dispatcher and HTTP,
//! and shuts them down in order (stop accepting, finish requests, let the
//! writer commit what it holds).

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::http::{router, AppContext, AppState};
use crate::live::{Live, ReloadError, Reloaded, Source};
use crate::metrics::Metrics;
use crate::request_threads::RequestThreads;
use crate::runtime::Registry;
use crate::store::{Store, StoreOptions};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The runtime `hookhost serve` starts on: its accept loop, signals,
/// retention and shutdown. Requests run on the request threads
/// (`request_threads`), which `serve` starts.
pub fn main_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .thread_name("hookhost-main")
        .enable_all()
        .build()
}

/// Runs the server until `shutdown` completes. `source` reads the
/// configuration again for a reload (`SIGHUP`, `POST /admin/reload`);
/// without one there is nothing to reload.
pub async fn serve(
    config: Config,
    source: Option<Source>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // First: a server that cannot start them has started nothing else.
    let threads = RequestThreads::start(config.server.pin_request_threads)?;
    let p = Pipeline::start(&config, source)?;

    let pruner = tokio::spawn(prune_loop(
        p.store.clone(),
        p.live.clone(),
        p.metrics.clone(),
    ));
    let hangups = tokio::spawn(reload_on_hangup(
        p.live.clone(),
        p.registry.clone(),
        p.metrics.clone(),
    ));
    let watchdog = tokio::spawn(crate::watchdog::run(p.metrics.clone()));
    let state = AppState::from(AppContext {
        live: p.live.clone(),
        store: p.store.clone(),
        registry: p.registry.clone(),
        rate: Default::default(),
        inflight: Arc::new(tokio::sync::Semaphore::new(
            config.server.max_inflight.max(1),
        )),
        max_body_bytes: config.server.max_body_bytes,
        request_timeout: Duration::from_millis(config.server.request_timeout_ms.max(1)),
        metrics: p.metrics.clone(),
        wake: p.wake.clone(),
        not_committed: crate::repeated::Repeated::new("committing webhook events (answered 503)"),
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.server.data_dir.display(), plugins_dir = %config.server.plugins_dir.display(), "hookhost listening");
    let limits = ConnLimits {
        max_connections: config.server.max_connections.max(1),
        header_timeout: Duration::from_millis(config.server.header_timeout_ms.max(1)),
    };
    serve_http(listener, router(state), &threads, shutdown, limits).await;
    tokio::task::spawn_blocking(move || threads.stop()).await?;
    pruner.abort();
    hangups.abort();
    watchdog.abort();
    tracing::info!("HTTP stopped; finishing deliveries");
    p.dispatcher.stop(Duration::from_secs(10)).await;
    p.registry.stop();
    let s = p.store.clone();
    tokio::task::spawn_blocking(move || s.close()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// What runs behind the HTTP surface, started in order: the configuration
/// in force, the store, the plugin registry and the dispatcher.
pub(crate) struct Pipeline {
    pub live: Arc<Live>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Woken for each stored event and each change of the runnable plugins.
    pub wake: Arc<crate::wake::Wake>,
    pub registry: Arc<Registry>,
    pub dispatcher: Dispatcher,
    /// This server's hold on its data directory, let go when it stops.
    _lock: Option<crate::store::serve_lock::ServeLock>,
}

impl Pipeline {
    pub(crate) fn start(config: &Config, source: Option<Source>) -> anyhow::Result<Pipeline> {
        let live = Live::new(config, source)?;
        // Before the store is opened: opening it takes interrupted
        // deliveries back, which would be another server's running ones.
        let lock = match crate::store::serve_lock::acquire(&config.server.data_dir) {
            Ok(lock) => Some(lock),
            Err(e @ crate::store::serve_lock::LockError::InUse { .. }) => return Err(e.into()),
            // The store says what is wrong with the directory (and the
            // server answers 503 until it is fixed).
            Err(e) => {
                tracing::warn!(error = %e, "running without the data directory's lock");
                None
            }
        };
        crate::store::check_not_newer(&config.server.data_dir)?;
        let store = Store::open(&config.server.data_dir, StoreOptions::from(&config.store));
        let metrics = Arc::new(Metrics::default());
        let wake = Arc::new(
            crate::wake::Wake::new().context("creating the dispatcher's wake-up descriptor")?,
        );
        let registry = Registry::start(
            config,
            live.clone(),
            store.clone(),
            metrics.clone(),
            wake.clone(),
        )
        .context("starting the plugin runtime")?;
        let dispatcher = Dispatcher::start(
            live.clone(),
            store.clone(),
            registry.clone(),
            metrics.clone(),
            wake.clone(),
        );
        Ok(Pipeline {
            live,
            store,
            metrics,
            wake,
            registry,
            dispatcher,
            _lock: lock,
        })
    }
}

/// Reads the configuration again and puts in force what may change while
/// running (see [`crate::live`]), saying in the log what changed.
pub fn reload(
    live: &Live,
    registry: &Registry,
    metrics: &Metrics,
) -> Result<Reloaded, ReloadError> {
    let r = live.reload();
    let outcome = if r.is_ok() { "applied" } else { "refused" };
    metrics.inc(
        "hookhost_config_reloads_total",
        vec![("outcome", outcome.into())],
    );
    match &r {
        Ok(r) => {
            tracing::info!(
                added = ?r.added,
                removed = ?r.removed,
                changed = ?r.changed,
                limits_changed = r.limits_changed,
                dispatch_changed = r.dispatch_changed,
                retention_changed = r.retention_changed,
                admin_token_changed = r.admin_token_changed,
                "configuration reloaded"
            );
            for what in &r.restart_needed {
                tracing::warn!(%what, "changed in the configuration file; takes effect at the next restart");
            }
            if r.anything() {
                registry.reconfigured();
            }
        }
        Err(e) => tracing::error!(error = %e, "configuration not reloaded"),
    }
    r
}

/// `SIGHUP` reloads the configuration (Unix).
async fn reload_on_hangup(live: Arc<Live>, registry: Arc<Registry>, metrics: Arc<Metrics>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let (l, r, m) = (live.clone(), registry.clone(), metrics.clone());
            let _ = tokio::task::spawn_blocking(move || reload(&l, &r, &m)).await;
        }
    }
    #[cfg(not(unix))]
    let _ = (live, registry, metrics);
}

/// Retention: events older than `[store] retention` go once nothing needs
/// them, looked for every quarter of that age (at least every second, at
/// most every hour). A reload that changes it takes effect at once.
async fn prune_loop(store: Store, live: Arc<Live>, metrics: Arc<Metrics>) {
    let trouble = crate::repeated::Repeated::new("pruning old events");
    loop {
        let every = live
            .get()
            .retention
            .0
            .map_or(Duration::from_secs(3600), |age| {
                (age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
            });
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = live.reloaded() => continue,
        }
        let Some(age) = live.get().retention.0 else {
            continue;
        };
        match store.prune(age).await {
            Ok(n) => {
                trouble.succeeded();
                if n > 0 {
                    tracing::info!(events = n, older_than = ?age, "pruned events");
                    metrics.add("hookhost_events_pruned_total", vec![], n as u64);
                }
            }
            Err(e) => trouble.failed(&e),
        }
    }
}

struct ConnLimits {
    max_connections: usize,
    header_timeout: Duration,
}

/// The accept loop: HTTP/1.1 with keep-alive, a deadline for request headers
/// (slow senders and idle connections are closed), a cap on connections, and
/// graceful shutdown that lets requests in flight finish. Each connection
/// is served on one of the request `threads`, in turn.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    threads: &RequestThreads,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ConnLimits,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Request headers larger than this are refused (431).
        .max_header_size(64 * 1024)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let accept_trouble = crate::repeated::Repeated::new("accepting connections");
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => {
                    accept_trouble.succeeded();
                    s
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause, do not
                    // spin, and say so once rather than twenty times a second.
                    accept_trouble.failed(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Out of this runtime's reactor, into the request thread's.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let http = http.clone();
        let watcher = graceful.watcher();
        threads.spawn(async move {
            if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let _ = watcher.watch(conn).await;
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 30 s; closing them");
    }
}

/// A server running on its own threads, for tests and embedding.
pub struct ServerHandle {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl ServerHandle {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Graceful stop; returns the server's result.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Starts a server on `config.server.listen` (port 0 picks a free port).
pub fn spawn(config: Config) -> anyhow::Result<ServerHandle> {
    spawn_with(config, None)
}

/// [`spawn`], with a way to read the configuration again for reloads.
pub fn spawn_with(config: Config, source: Option<Source>) -> anyhow::Result<ServerHandle> {
    let std_listener = std::net::TcpListener::bind(config.server.listen)
        .with_context(|| format!("binding {}", config.server.listen))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("hookhost-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener)?;
                serve(config, source, listener, async move {
                    let _ = rx.await;
                })
                .await
            })
        })?;
    Ok(ServerHandle {
        addr,
        stop: Some(tx),
        thread: Some(thread),
    })
}
