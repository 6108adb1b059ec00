//! The result table: one row per measure, daemon | baseline | ceiling, the two ratios, the
//! target and whether the daemon met it (reported, never asserted).

use std::time::Duration;

/// A cell: a number shown with `decimals` places, or a text, or nothing to compare.
#[derive(Clone)]
pub enum Cell {
    Num(f64, usize),
    Text(String),
    None,
}

impl Cell {
    fn show(&self) -> String {
        match self {
            Cell::Num(value, decimals) => format!("{value:.decimals$}"),
            Cell::Text(text) => text.clone(),
            Cell::None => "—".into(),
        }
    }

    fn value(&self) -> Option<f64> {
        match self {
            Cell::Num(value, _) => Some(*value),
            _ => None,
        }
    }
}

pub struct Row {
    pub measure: String,
    pub daemon: Cell,
    pub baseline: Cell,
    pub ceiling: Cell,
    pub target: String,
    /// `None` for a row without a target.
    pub pass: Option<bool>,
}

impl Row {
    pub fn info(measure: impl Into<String>, daemon: Cell, baseline: Cell, ceiling: Cell) -> Row {
        Row {
            measure: measure.into(),
            daemon,
            baseline,
            ceiling,
            target: String::new(),
            pass: None,
        }
    }

    pub fn target(mut self, target: impl Into<String>, pass: bool) -> Row {
        self.target = target.into();
        self.pass = Some(pass);
        self
    }
}

fn ratio(daemon: &Cell, other: &Cell) -> String {
    match (daemon.value(), other.value()) {
        (Some(daemon), Some(other)) if other != 0.0 => format!("{:.2}", daemon / other),
        _ => "—".into(),
    }
}

/// The table as Markdown (readable in a terminal too).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| measure | daemon | baseline | ceiling | daemon/baseline | daemon/ceiling | target | |\n\
         |---|---:|---:|---:|---:|---:|---|---|\n",
    );
    for row in rows {
        let verdict = match row.pass {
            Some(true) => "pass",
            Some(false) => "**miss**",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.measure,
            row.daemon.show(),
            row.baseline.show(),
            row.ceiling.show(),
            ratio(&row.daemon, &row.baseline),
            ratio(&row.daemon, &row.ceiling),
            row.target,
            verdict
        ));
    }
    out
}

/// The nearest-rank percentile (`p` in 0..=100) of the samples, in milliseconds.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
