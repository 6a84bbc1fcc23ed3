//! The performance targets, judged from the run's own figures: the report
//! opens with them, so a change that loses one is seen at the top of the
//! next `make bench` rather than read out of the tables below.

/// One target and what this run measured for it.
struct Verdict {
    target: String,
    figure: String,
    met: bool,
}

/// The verdicts of the suites that ran (`BENCH_ONLY` runs fewer).
#[derive(Default)]
pub struct Targets(Vec<Verdict>);

/// Durable ingest without plugins, as a share of the bare ceiling.
pub const INGEST_SHARE_MIN: f64 = 70.0;
/// How much fewer requests a second the three sample plugins may cost.
pub const PLUGINS_COST_MAX: f64 = 15.0;
/// Fresh instance + `handle` of a small Rust plugin, p50.
pub const SMALL_RUST_P50_MAX_US: f64 = 50.0;
/// Fresh instance + `handle` of the JavaScript and Python plugins, p50.
pub const SCRIPT_P50_MAX_US: f64 = 1000.0;
/// Restart with 10 cached plugins to ready.
pub const RESTART_MAX_MS: f64 = 250.0;
/// Ingest p99 while a large plugin compiles, against steady state.
pub const COMPILE_P99_MAX_RATIO: f64 = 2.0;
/// Peak RSS with 3 tenants × 5 plugins under 256 connections, in bytes
/// (200 MB).
pub const PEAK_RSS_MAX_BYTES: f64 = 200e6;

impl Targets {
    pub fn judge(&mut self, target: String, figure: String, met: bool) {
        self.0.push(Verdict {
            target,
            figure,
            met,
        });
    }

    /// How many of the judged targets were missed.
    pub fn missed(&self) -> usize {
        self.0.iter().filter(|v| !v.met).count()
    }

    /// The section the report opens with; empty when nothing was judged.
    pub fn render(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let mut out =
            String::from("## Against the targets\n\n| target | this run | |\n|---|---|---|\n");
        for v in &self.0 {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                v.target,
                v.figure,
                if v.met { "met" } else { "**missed**" }
            ));
        }
        out.push_str(&match self.missed() {
            0 => format!("\nAll {} targets judged in this run are met.\n\n", self.0.len()),
            n => format!(
                "\n{n} of the {} targets judged in this run missed; the sections below have the figures.\n\n",
                self.0.len()
            ),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_target_is_marked_and_counted() {
        let mut t = Targets::default();
        assert_eq!(t.render(), "");
        t.judge("a ≤ 1".into(), "**0.5**".into(), true);
        t.judge("b ≥ 70 %".into(), "**57 %**".into(), false);
        let text = t.render();
        assert_eq!(t.missed(), 1);
        assert!(text.starts_with("## Against the targets\n"), "{text}");
        assert!(text.contains("| a ≤ 1 | **0.5** | met |\n"), "{text}");
        assert!(
            text.contains("| b ≥ 70 % | **57 %** | **missed** |\n"),
            "{text}"
        );
        assert!(text.contains("1 of the 2 targets"), "{text}");
    }
}
