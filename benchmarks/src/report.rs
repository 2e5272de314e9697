//! The figures of a run, printed as a table: each beside the baseline measured in the
//! same run, the ratio between them, and the goal.

use std::fmt::Write as _;

pub struct Figure {
    pub name: String,
    /// What was measured, with its unit.
    pub measured: String,
    /// What it is compared with, measured in the same run.
    pub baseline: String,
    /// measured / baseline, where a ratio means something.
    pub ratio: Option<f64>,
    pub goal: String,
    /// Whether the goal is met; None where there is nothing to judge.
    pub met: Option<bool>,
}

impl Figure {
    pub fn new(name: impl Into<String>, measured: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            measured: measured.into(),
            baseline: String::new(),
            ratio: None,
            goal: String::new(),
            met: None,
        }
    }

    pub fn against(mut self, baseline: impl Into<String>, ratio: f64) -> Self {
        self.baseline = baseline.into();
        self.ratio = Some(ratio);
        self
    }

    pub fn baseline(mut self, baseline: impl Into<String>) -> Self {
        self.baseline = baseline.into();
        self
    }

    pub fn goal(mut self, goal: impl Into<String>, met: bool) -> Self {
        self.goal = goal.into();
        self.met = Some(met);
        self
    }

    /// A goal this run cannot judge (its noise is larger than the margin).
    pub fn undecided(mut self, goal: impl Into<String>) -> Self {
        self.goal = goal.into();
        self.met = None;
        self
    }

    /// Prints it at once, so that a long run shows its figures as they come.
    pub fn print(&self) {
        let ratio = self.ratio.map(|r| format!("{r:.3}")).unwrap_or_default();
        let met = match self.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "  {}: {}  | same run: {}  | ratio {}  | goal {} {}",
            self.name, self.measured, self.baseline, ratio, self.goal, met
        );
    }
}

/// The figures as a Markdown table.
pub fn markdown(figures: &[Figure]) -> String {
    let mut out = String::from(
        "| figure | measured | baseline, same run | ratio | goal | |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for f in figures {
        let ratio = f.ratio.map(|r| format!("{r:.3}")).unwrap_or_default();
        let met = match f.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            f.name, f.measured, f.baseline, ratio, f.goal, met
        );
    }
    out
}

/// `ns` in the unit that reads best.
pub fn duration(ns: f64) -> String {
    match ns {
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.2} µs", ns / 1e3),
        ns => format!("{ns:.1} ns"),
    }
}
