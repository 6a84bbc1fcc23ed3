//! Slots and runs: which due deliveries start together.
//!
//! A slot is one place under the global and per-tenant caps (one blocking
//! thread). It runs a plugin's deliveries one after another, each of a
//! different chat and each in a fresh instance, for as long as the
//! plugin's recent pace says fits in `dispatch.run_ms`: the ledger's
//! `running` mark and the outcomes are one commit each for the whole run
//! instead of two for every delivery. A plugin not yet timed, or one that
//! waits long (a gateway), runs one delivery per slot.

use super::{Lane, Running};
use crate::store::DueDelivery;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The most deliveries one run takes, however fast its plugin.
pub(super) const MAX_RUN: usize = 16;

/// Each plugin's recent time per delivery (moving average), from the
/// deliveries it ran: what a run of it may hold.
#[derive(Default)]
pub(super) struct Pace(Mutex<HashMap<String, Duration>>);

impl Pace {
    pub fn record(&self, plugin: &str, took: Duration) {
        let mut m = self.0.lock().unwrap();
        match m.get_mut(plugin) {
            Some(avg) => *avg = (*avg + took) / 2,
            None => {
                m.insert(plugin.to_string(), took);
            }
        }
    }

    /// Deliveries of `plugin` one run may hold within `budget`.
    pub fn run_length(&self, plugin: &str, budget: Duration) -> usize {
        let Some(avg) = self.0.lock().unwrap().get(plugin).copied() else {
            return 1;
        };
        let fits = budget.as_nanos() / avg.as_nanos().max(1);
        (fits as usize).clamp(1, MAX_RUN)
    }
}

/// Limits a pass plans within.
pub(super) struct Caps<'a> {
    /// Slots in the whole process (`dispatch.workers`).
    pub workers: usize,
    /// Slots of one tenant.
    pub tenant: &'a dyn Fn(&str) -> usize,
    /// Slots of one of a tenant's plugins (its share of the tenant's).
    pub share: &'a dyn Fn(&str) -> usize,
    /// Deliveries one run of a lane may hold.
    pub run_length: &'a dyn Fn(&Lane) -> usize,
}

/// Groups `due` (oldest first) into runs, each taking a slot, and records
/// them in `r`. A delivery joins the last run opened in this pass for its
/// lane while that run has room; otherwise it opens one if the caps leave
/// a slot. A delivery already running, or whose chat has one running, is
/// skipped; an interrupted one ([`DueDelivery::interrupted`]) runs alone.
pub(super) fn plan(due: Vec<DueDelivery>, r: &mut Running, caps: &Caps) -> Vec<Vec<DueDelivery>> {
    let mut runs: Vec<Vec<DueDelivery>> = Vec::new();
    // The run of each lane still taking deliveries.
    let mut open: HashMap<Lane, usize> = HashMap::new();
    for d in due {
        let lane = (d.tenant.clone(), d.plugin.clone());
        let chain = (d.tenant.clone(), d.plugin.clone(), d.ordering_key.clone());
        if r.deliveries.contains(&(d.event_seq, d.plugin.clone())) || r.chains.contains(&chain) {
            continue;
        }
        let joins = match open.get(&lane) {
            Some(&i) if !d.interrupted() && runs[i].len() < (caps.run_length)(&lane) => Some(i),
            _ => None,
        };
        let opens = joins.is_none()
            && r.total < caps.workers
            && r.per_tenant.get(&d.tenant).copied().unwrap_or(0) < (caps.tenant)(&d.tenant)
            && r.per_lane.get(&lane).copied().unwrap_or(0) < (caps.share)(&d.tenant);
        if joins.is_none() && !opens {
            continue;
        }
        r.deliveries.insert((d.event_seq, d.plugin.clone()));
        r.chains.insert(chain);
        if let Some(i) = joins {
            runs[i].push(d);
            continue;
        }
        *r.per_tenant.entry(d.tenant.clone()).or_default() += 1;
        *r.per_lane.entry(lane.clone()).or_default() += 1;
        r.total += 1;
        let alone = d.interrupted();
        runs.push(vec![d]);
        if !alone {
            open.insert(lane, runs.len() - 1);
        }
    }
    runs
}

/// Forgets a run that ended (or never started) in `r`: its deliveries,
/// their chats and its slot.
pub(super) fn release(r: &mut Running, run: &[DueDelivery]) {
    for d in run {
        r.deliveries.remove(&(d.event_seq, d.plugin.clone()));
        r.chains
            .remove(&(d.tenant.clone(), d.plugin.clone(), d.ordering_key.clone()));
    }
    let Some(first) = run.first() else { return };
    if let Some(n) = r.per_tenant.get_mut(&first.tenant) {
        *n = n.saturating_sub(1);
    }
    let lane = (first.tenant.clone(), first.plugin.clone());
    if let Some(n) = r.per_lane.get_mut(&lane) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            r.per_lane.remove(&lane);
        }
    }
    r.total = r.total.saturating_sub(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(seq: i64, plugin: &str, chat: &str) -> DueDelivery {
        DueDelivery {
            event_seq: seq,
            plugin: plugin.into(),
            tenant: "t".into(),
            ordering_key: chat.into(),
            attempts: 0,
            resend: false,
            queued: true,
        }
    }

    fn seqs(runs: &[Vec<DueDelivery>]) -> Vec<Vec<i64>> {
        runs.iter()
            .map(|run| run.iter().map(|d| d.event_seq).collect())
            .collect()
    }

    fn caps<'a>(
        workers: usize,
        tenant: &'a dyn Fn(&str) -> usize,
        share: &'a dyn Fn(&str) -> usize,
        run_length: &'a dyn Fn(&Lane) -> usize,
    ) -> Caps<'a> {
        Caps {
            workers,
            tenant,
            share,
            run_length,
        }
    }

    #[test]
    fn a_lane_fills_its_run_before_it_opens_another_and_stops_at_its_share() {
        let mut r = Running::default();
        let rows = (1..=9).map(|i| due(i, "p", &format!("c{i}"))).collect();
        let runs = plan(rows, &mut r, &caps(16, &|_| 4, &|_| 2, &|_| 3));
        // Two slots (the lane's share) of three: 7, 8 and 9 wait.
        assert_eq!(seqs(&runs), vec![vec![1, 2, 3], vec![4, 5, 6]]);
        assert_eq!(r.total, 2);
        assert_eq!(r.per_lane[&("t".to_string(), "p".to_string())], 2);
        assert_eq!(r.deliveries.len(), 6);
        // Ended, the runs give back their slots, deliveries and chats.
        runs.iter().for_each(|run| release(&mut r, run));
        assert_eq!(r.total, 0);
        assert!(r.deliveries.is_empty() && r.chains.is_empty() && r.per_lane.is_empty());
        assert_eq!(r.per_tenant[&"t".to_string()], 0);
    }

    #[test]
    fn runs_of_one_are_one_delivery_per_slot() {
        let mut r = Running::default();
        let rows = (1..=5).map(|i| due(i, "p", &format!("c{i}"))).collect();
        let runs = plan(rows, &mut r, &caps(16, &|_| 4, &|_| 4, &|_| 1));
        assert_eq!(seqs(&runs), vec![vec![1], vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn a_chat_or_delivery_already_running_is_left_and_plugins_get_runs_of_their_own() {
        let mut r = Running::default();
        r.chains.insert(("t".into(), "p".into(), "busy".into()));
        r.deliveries.insert((2, "p".into()));
        let rows = vec![
            due(1, "p", "busy"),
            due(2, "p", "c2"),
            due(3, "q", "c3"),
            due(4, "p", "c4"),
            due(5, "q", "c5"),
            due(6, "p", "c6"),
        ];
        let runs = plan(rows, &mut r, &caps(16, &|_| 4, &|_| 2, &|_| 8));
        assert_eq!(seqs(&runs), vec![vec![3, 5], vec![4, 6]]);
    }

    #[test]
    fn an_interrupted_delivery_runs_alone_and_the_global_cap_holds() {
        let mut r = Running::default();
        let mut interrupted = due(2, "p", "c2");
        interrupted.attempts = 1;
        let rows = vec![
            due(1, "p", "c1"),
            interrupted,
            due(3, "p", "c3"),
            due(4, "p", "c4"),
            due(5, "q", "c5"),
        ];
        let runs = plan(rows, &mut r, &caps(3, &|_| 8, &|_| 8, &|_| 8));
        assert_eq!(seqs(&runs), vec![vec![1, 3, 4], vec![2], vec![5]]);
        // No slot left for a fourth run; nothing joins the interrupted one.
        let mut r = Running::default();
        let mut interrupted = due(1, "p", "c1");
        interrupted.attempts = 2;
        let rows = vec![interrupted, due(2, "p", "c2"), due(3, "q", "c3")];
        let runs = plan(rows, &mut r, &caps(2, &|_| 8, &|_| 8, &|_| 8));
        assert_eq!(seqs(&runs), vec![vec![1], vec![2]]);
        assert_eq!(r.total, 2);
    }

    #[test]
    fn a_run_holds_what_its_plugins_pace_fits_in_the_budget() {
        let pace = Pace::default();
        let budget = Duration::from_millis(5);
        assert_eq!(pace.run_length("p", budget), 1, "not timed yet");
        pace.record("p", Duration::from_millis(1));
        assert_eq!(pace.run_length("p", budget), 5);
        pace.record("fast", Duration::from_micros(20));
        assert_eq!(pace.run_length("fast", budget), MAX_RUN);
        pace.record("slow", Duration::from_millis(200));
        assert_eq!(pace.run_length("slow", budget), 1);
        assert_eq!(pace.run_length("fast", Duration::ZERO), 1);
        // A plugin that slows down gets shorter runs.
        for _ in 0..20 {
            pace.record("fast", Duration::from_millis(2));
        }
        assert_eq!(pace.run_length("fast", budget), 2);
    }
}
