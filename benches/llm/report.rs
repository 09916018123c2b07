//! What `cargo bench --bench llm` measures per run and how it is summarised:
//! one [`Run`] per generation of any contender, series of runs by
//! contender, medians / p90 / p99 and paired ratios, the CPU time other
//! processes took meanwhile (this machine is shared: a disturbed run must be
//! visible as one), and Markdown tables printed for BENCHMARKS.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One measured generation.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub ttft_ms: f64,
    pub tpot_ms: f64,
    pub ids: Vec<u32>,
    /// reflexd's own figures from the final message.
    pub cpu_ms_per_token: Option<f64>,
    pub acceptance: Option<f64>,
    pub tokens_per_verify: Option<f64>,
    pub tpot_gain: Option<f64>,
    pub cached_prompt_tokens: Option<f64>,
}

impl Run {
    /// TTFT and TPOT from the start instant and each token's arrival.
    pub fn from_times(t0: Instant, times: &[Instant], ids: Vec<u32>) -> Run {
        let ttft_ms = times.first().map_or(f64::NAN, |t| ms(*t - t0));
        let tpot_ms = match times {
            [first, .., last] => ms(*last - *first) / (times.len() - 1) as f64,
            _ => f64::NAN,
        };
        Run {
            ttft_ms,
            tpot_ms,
            ids,
            ..Run::default()
        }
    }
}

/// Nearest-rank quantile of the finite values.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// Runs of every contender, by key, in insertion order of first use.
#[derive(Default)]
pub struct Results {
    pub order: Vec<String>,
    pub runs: BTreeMap<String, Vec<Run>>,
}

impl Results {
    pub fn push(&mut self, key: &str, r: Run) {
        if !self.runs.contains_key(key) {
            self.order.push(key.to_string());
        }
        self.runs.entry(key.to_string()).or_default().push(r);
    }

    pub fn get(&self, key: &str) -> &[Run] {
        self.runs.get(key).map_or(&[], |v| v.as_slice())
    }

    pub fn col(&self, key: &str, f: impl Fn(&Run) -> f64) -> Vec<f64> {
        self.get(key).iter().map(f).collect()
    }

    pub fn med(&self, key: &str, f: impl Fn(&Run) -> f64) -> f64 {
        median(&self.col(key, f))
    }

    /// Median over rounds of `f(a_i) / f(b_i)`: runs of the same round
    /// share the machine's state, so its drift cancels.
    pub fn paired(&self, a: &str, b: &str, f: impl Fn(&Run) -> f64) -> f64 {
        let v: Vec<f64> = self
            .get(a)
            .iter()
            .zip(self.get(b))
            .map(|(x, y)| f(x) / f(y))
            .collect();
        median(&v)
    }
}

fn opt(v: Vec<f64>) -> String {
    let m = median(&v);
    if m.is_finite() {
        format!("{m:.2}")
    } else {
        "-".into()
    }
}

/// The table of every contender: TTFT and TPOT medians/p90/p99, tokens,
/// and reflexd's own cost and speculation figures.
pub fn table(res: &Results, labels: &BTreeMap<String, String>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| contender | runs | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p90 ms | TPOT p99 ms | tokens | CPU ms/token | acceptance | tokens/verify | TPOT gain (own estimate) | cached prompt tokens |"
    );
    let _ = writeln!(
        o,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for key in &res.order {
        let runs = res.get(key);
        let ttft = res.col(key, |r| r.ttft_ms);
        let tpot = res.col(key, |r| r.tpot_ms);
        let tokens = res.col(key, |r| r.ids.len() as f64);
        let o_ = |f: fn(&Run) -> Option<f64>| opt(runs.iter().filter_map(f).collect());
        let _ = writeln!(
            o,
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {} | {} |",
            labels.get(key).map_or(key.as_str(), |s| s.as_str()),
            runs.len(),
            median(&ttft),
            quantile(&ttft, 0.99),
            median(&tpot),
            quantile(&tpot, 0.9),
            quantile(&tpot, 0.99),
            median(&tokens),
            o_(|r| r.cpu_ms_per_token),
            o_(|r| r.acceptance),
            o_(|r| r.tokens_per_verify),
            o_(|r| r.tpot_gain),
            o_(|r| r.cached_prompt_tokens),
        );
    }
    o
}

/// A verdict against a target ratio.
pub fn verdict(ratio: f64, limit: f64) -> &'static str {
    if !ratio.is_finite() {
        "not measured"
    } else if ratio <= limit {
        "met"
    } else {
        "NOT met"
    }
}

/// Tokens two id sequences share from the start.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// CPU seconds of the whole machine, of this process and of the peers.
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    pub all: f64,
    pub ours: f64,
    at: Option<Instant>,
}

fn ticks_to_s(t: f64) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    t / hz
}

fn proc_cpu(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime, stime, cutime, cstime: fields 14..=17 (11..=14 after the name).
            Some(
                f.get(11..15)?
                    .iter()
                    .filter_map(|x| x.parse::<f64>().ok())
                    .sum(),
            )
        })
        .map_or(0.0, ticks_to_s)
}

impl Cpu {
    /// Now: busy CPU of the machine and of this process tree's children.
    pub fn now(peers: &[u32]) -> Cpu {
        let all = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let l = s.lines().next()?.to_string();
                let v: Vec<f64> = l
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system (idle iowait skipped) irq softirq steal
                Some(
                    v.iter()
                        .enumerate()
                        .filter(|(i, _)| ![3, 4].contains(i))
                        .map(|(_, x)| x)
                        .sum(),
                )
            })
            .map_or(0.0, ticks_to_s);
        let ours = proc_cpu("self") + peers.iter().map(|p| proc_cpu(&p.to_string())).sum::<f64>();
        Cpu {
            all,
            ours,
            at: Some(Instant::now()),
        }
    }

    /// Cores others used on average between `self` and `later`.
    pub fn others_since(&self, later: &Cpu) -> f64 {
        let secs = match (self.at, later.at) {
            (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-3),
            _ => return f64::NAN,
        };
        ((later.all - self.all) - (later.ours - self.ours)).max(0.0) / secs
    }
}
