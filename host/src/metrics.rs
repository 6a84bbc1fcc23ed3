//! Counters, gauges and histograms in Prometheus text format. Small on
//! purpose: labelled series in a map, rendered on scrape.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    /// `hookhost_webhook_seconds`: observed at every webhook request.
    pub webhook_seconds: Fixed,
    /// `hookhost_events_received_total`, counted on every request: keyed
    /// by "tenant\0event_type\0outcome" so a known series is counted with a
    /// shared lock and no allocation.
    received: RwLock<HashMap<Box<str>, AtomicU64>>,
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    gauges: Mutex<BTreeMap<(&'static str, Labels), f64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
    /// When the dispatcher last went through its loop (Unix ms; 0: not
    /// yet). Its age is worked out at each scrape, by the request thread
    /// that answers it: the dispatcher may run at idle priority, and its
    /// own gauges stop moving when it gets no CPU.
    dispatcher_pass_ms: AtomicI64,
    /// The dispatcher thread's id (Linux), for the watchdog; 0: not known.
    dispatcher_tid: AtomicI64,
    /// The watchdog's last reading of the dispatcher's wait for a core
    /// (`f64` bits; NaN: none yet). Kept apart from the gauges behind a
    /// lock, which idle-priority threads take.
    dispatcher_cpu_wait: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            webhook_seconds: Fixed::new(
                "hookhost_webhook_seconds",
                "Time to answer a webhook request: reading its body, signature, parse and the durable commit.",
                LATENCY_BUCKETS,
                1e9,
            ),
            received: Default::default(),
            counters: Default::default(),
            gauges: Default::default(),
            histograms: Default::default(),
            dispatcher_pass_ms: AtomicI64::new(0),
            dispatcher_tid: AtomicI64::new(0),
            dispatcher_cpu_wait: AtomicU64::new(f64::NAN.to_bits()),
        }
    }
}

/// Appends an unlabelled gauge worked out at the scrape.
fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// Buckets for request and commit times, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram without labels, observed without a lock (one atomic add per
/// observation and one for the sum; buckets are summed up when rendered),
/// for what is observed on every request or commit.
pub struct Fixed {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    /// One per bound, then the observations above the last.
    counts: Box<[AtomicU64]>,
    /// The sum, in units of `1 / scale`.
    sum: AtomicU64,
    scale: f64,
}

impl Fixed {
    /// `scale`: the sum is kept as an integer of `v * scale` (1e9 for
    /// seconds: nanoseconds; 1 for counts).
    pub fn new(name: &'static str, help: &'static str, bounds: &'static [f64], scale: f64) -> Self {
        Fixed {
            name,
            help,
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum
            .fetch_add((v.max(0.0) * self.scale).round() as u64, Ordering::Relaxed);
    }

    /// Appends the histogram in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", self.help);
        let mut total = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            total += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {total}");
        }
        total += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

const BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
const FUEL_BUCKETS: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

const HELP: &[(&str, &str, &str)] = &[
    (
        "hookhost_events_received_total",
        "counter",
        "Webhook requests by tenant, event type and outcome.",
    ),
    (
        "hookhost_deliveries_total",
        "counter",
        "Plugin deliveries by tenant, plugin and outcome.",
    ),
    (
        "hookhost_plugin_log_lines_dropped_total",
        "counter",
        "Plugin log lines over the per-delivery limit, dropped.",
    ),
    (
        "hookhost_capability_denied_total",
        "counter",
        "Deliveries refused a capability they were not granted (the first one each).",
    ),
    (
        "hookhost_dead_letters_total",
        "counter",
        "Deliveries that became dead letters.",
    ),
    (
        "hookhost_events_pruned_total",
        "counter",
        "Events deleted by retention once every plugin was done with them.",
    ),
    (
        "hookhost_dispatcher_restarts_total",
        "counter",
        "Times the dispatcher failed (a bug: see the log) and started again; deliveries pause meanwhile.",
    ),
    (
        "hookhost_config_reloads_total",
        "counter",
        "Configuration reloads: applied, or refused (the file did not parse; nothing changed).",
    ),
    (
        "hookhost_delivery_seconds",
        "histogram",
        "Time of one delivery, instantiation included.",
    ),
    (
        "hookhost_instantiate_seconds",
        "histogram",
        "Time to instantiate a plugin.",
    ),
    (
        "hookhost_fuel_used",
        "histogram",
        "Fuel used by one delivery.",
    ),
    (
        "hookhost_plugins_loaded",
        "gauge",
        "Loaded plugins by name and content hash.",
    ),
    (
        "hookhost_plugin_file_failed",
        "gauge",
        "1 for each plugin whose newest file failed to load (an older version may still run).",
    ),
    (
        "hookhost_inbox_lag",
        "gauge",
        "Events stored but not yet fanned out to plugins.",
    ),
    (
        "hookhost_store_bytes",
        "gauge",
        "Size of the store's database file (its WAL not counted).",
    ),
    (
        "hookhost_store_free_bytes",
        "gauge",
        "Part of the store's database free for reuse.",
    ),
    (
        "hookhost_deliveries_open",
        "gauge",
        "Deliveries pending, running or waiting for a retry.",
    ),
    (
        "hookhost_dispatch_slots",
        "gauge",
        "Deliveries that may run at once now: dispatch.busy_workers while webhook events queue for the store, else dispatch.workers.",
    ),
    (
        "hookhost_kv_keys",
        "gauge",
        "Key-value keys a plugin holds for a tenant.",
    ),
    (
        "hookhost_kv_bytes",
        "gauge",
        "Key-value bytes (keys and values) a plugin holds for a tenant.",
    ),
    (
        "hookhost_kv_quota_used_ratio",
        "gauge",
        "The larger of keys / kv_keys and bytes / kv_bytes: 1 is a full quota.",
    ),
    (
        "hookhost_dead_letters",
        "gauge",
        "Dead letters waiting for a retry or a discard.",
    ),
];

impl Metrics {
    pub fn received(&self, tenant: &str, event_type: &str, outcome: &str) {
        thread_local! {
            static KEY: RefCell<String> = const { RefCell::new(String::new()) };
        }
        if [tenant, event_type, outcome]
            .iter()
            .any(|p| p.contains('\0'))
        {
            // The separator itself (an event type can hold any character):
            // counted the slow way, labels intact.
            return self.inc(
                "hookhost_events_received_total",
                vec![
                    ("tenant", tenant.into()),
                    ("event_type", event_type.into()),
                    ("outcome", outcome.into()),
                ],
            );
        }
        KEY.with_borrow_mut(|key| {
            key.clear();
            for (i, part) in [tenant, event_type, outcome].iter().enumerate() {
                if i > 0 {
                    key.push('\0');
                }
                key.push_str(part);
            }
            if let Some(n) = self.received.read().unwrap().get(key.as_str()) {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.received
                .write()
                .unwrap()
                .entry(key.as_str().into())
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        });
    }

    pub fn inc(&self, name: &'static str, labels: Labels) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: Labels, n: u64) {
        *self
            .counters
            .lock()
            .unwrap()
            .entry((name, labels))
            .or_default() += n;
    }

    pub fn set(&self, name: &'static str, labels: Labels, v: f64) {
        self.gauges.lock().unwrap().insert((name, labels), v);
    }

    pub fn remove_gauges(&self, name: &'static str, keep: impl Fn(&Labels) -> bool) {
        self.gauges
            .lock()
            .unwrap()
            .retain(|(n, l), _| *n != name || keep(l));
    }

    pub fn observe(&self, name: &'static str, labels: Labels, v: f64) {
        let bounds = if name == "hookhost_fuel_used" {
            FUEL_BUCKETS
        } else {
            BUCKETS
        };
        let mut h = self.histograms.lock().unwrap();
        let e = h.entry((name, labels)).or_insert_with(|| Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        });
        for (i, b) in e.bounds.iter().enumerate() {
            if v <= *b {
                e.counts[i] += 1;
            }
        }
        e.sum += v;
        e.count += 1;
    }

    /// The dispatcher went through its loop just now.
    pub fn dispatcher_passed(&self) {
        self.dispatcher_pass_ms
            .store(crate::store::now_ms(), Ordering::Relaxed);
    }

    /// The dispatcher runs on the thread `tid`.
    pub fn dispatcher_started(&self, tid: i64) {
        self.dispatcher_tid.store(tid, Ordering::Relaxed);
    }

    pub fn dispatcher_tid(&self) -> Option<i64> {
        match self.dispatcher_tid.load(Ordering::Relaxed) {
            0 => None,
            tid => Some(tid),
        }
    }

    /// The share of the last interval the dispatcher's thread waited for a
    /// core.
    pub fn set_dispatcher_cpu_wait(&self, ratio: f64) {
        self.dispatcher_cpu_wait
            .store(ratio.to_bits(), Ordering::Relaxed);
    }

    /// Time since the dispatcher last went through its loop; `None` before
    /// its first pass.
    pub fn dispatcher_pass_age(&self) -> Option<std::time::Duration> {
        match self.dispatcher_pass_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(std::time::Duration::from_millis(
                (crate::store::now_ms() - at).max(0) as u64,
            )),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.webhook_seconds.render(&mut out);
        if let Some(age) = self.dispatcher_pass_age() {
            gauge(
                &mut out,
                "hookhost_dispatcher_pass_age_seconds",
                "Time since the dispatcher last went through its loop (at most 0.5 s when it gets the CPU it needs).",
                age.as_secs_f64(),
            );
        }
        let wait = f64::from_bits(self.dispatcher_cpu_wait.load(Ordering::Relaxed));
        if !wait.is_nan() {
            gauge(
                &mut out,
                "hookhost_dispatcher_cpu_wait_ratio",
                "Share of the last 5 s the dispatcher's thread was ready to run but waited for a core.",
                wait,
            );
        }
        let mut counters = self.counters.lock().unwrap().clone();
        for (key, n) in self.received.read().unwrap().iter() {
            let mut parts = key.split('\0').map(String::from);
            let labels = ["tenant", "event_type", "outcome"]
                .into_iter()
                .map(|l| (l, parts.next().unwrap_or_default()))
                .collect();
            *counters
                .entry(("hookhost_events_received_total", labels))
                .or_default() += n.load(Ordering::Relaxed);
        }
        let gauges = self.gauges.lock().unwrap();
        let hists = self.histograms.lock().unwrap();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, l), v) in counters.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{} {v}", fmt_labels(l, None));
            }
            for ((n, l), v) in gauges.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{} {v}", fmt_labels(l, None));
            }
            for ((n, l), h) in hists.iter().filter(|((n, _), _)| n == name) {
                for (i, b) in h.bounds.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{n}_bucket{} {}",
                        fmt_labels(l, Some(&b.to_string())),
                        h.counts[i]
                    );
                }
                let _ = writeln!(out, "{n}_bucket{} {}", fmt_labels(l, Some("+Inf")), h.count);
                let _ = writeln!(out, "{n}_sum{} {}", fmt_labels(l, None), h.sum);
                let _ = writeln!(out, "{n}_count{} {}", fmt_labels(l, None), h.count);
            }
        }
        out
    }
}

fn fmt_labels(l: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::{Fixed, Metrics};

    #[test]
    fn a_fixed_histogram_renders_cumulative_buckets_count_and_sum() {
        let h = Fixed::new("t_seconds", "Test.", &[0.001, 0.01], 1e9);
        for v in [0.0005, 0.001, 0.002, 0.5] {
            h.observe(v);
        }
        let mut text = String::new();
        h.render(&mut text);
        assert_eq!(
            text,
            "# HELP t_seconds Test.\n# TYPE t_seconds histogram\n\
             t_seconds_bucket{le=\"0.001\"} 2\n\
             t_seconds_bucket{le=\"0.01\"} 3\n\
             t_seconds_bucket{le=\"+Inf\"} 4\n\
             t_seconds_sum 0.5035\n\
             t_seconds_count 4\n"
        );
    }

    #[test]
    fn received_counts_each_series_and_keeps_odd_labels_whole() {
        let m = Metrics::default();
        m.received("acme", "message_received", "stored");
        m.received("acme", "message_received", "stored");
        m.received("acme", "odd\0type", "stored");
        let text = m.render();
        assert!(text.contains(
            "hookhost_events_received_total{tenant=\"acme\",event_type=\"message_received\",outcome=\"stored\"} 2"
        ), "{text}");
        assert!(text.contains(
            "hookhost_events_received_total{tenant=\"acme\",event_type=\"odd\0type\",outcome=\"stored\"} 1"
        ), "{text}");
    }

    #[test]
    fn the_dispatchers_pass_age_is_worked_out_at_each_scrape() {
        let m = Metrics::default();
        assert!(!m.render().contains("hookhost_dispatcher_pass_age_seconds"));
        m.dispatcher_passed();
        let age = m.dispatcher_pass_age().unwrap();
        assert!(age < std::time::Duration::from_secs(5), "{age:?}");
        // A dispatcher that has not run since: the age grows with no one
        // setting it.
        m.dispatcher_pass_ms.store(
            crate::store::now_ms() - 42_000,
            std::sync::atomic::Ordering::Relaxed,
        );
        let text = m.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("hookhost_dispatcher_pass_age_seconds "))
            .unwrap();
        let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((42.0..47.0).contains(&secs), "{line}");
        // The watchdog's reading of its wait for a core, once it has one.
        assert!(!text.contains("hookhost_dispatcher_cpu_wait_ratio"));
        m.set_dispatcher_cpu_wait(0.25);
        assert!(m
            .render()
            .contains("\nhookhost_dispatcher_cpu_wait_ratio 0.25\n"));
    }
}
