//! Board power from INA3221 rail monitors (NVIDIA Jetson) under sysfs, for
//! energy per generated token. Reading a rail is an I²C transaction behind a
//! file read, so workers never do it: one sampler thread reads the rails
//! every [`PERIOD`] and integrates power into energy; a worker only loads
//! two atomics and extrapolates to "now" ([`PowerMeter::energy_uj`]).
//! Two sysfs layouts exist: hwmon (JetPack 5.1+/6, `class/hwmon/hwmonN`
//! with `name` = `ina3221`, `inK_label`, `inK_input` mV, `currK_input` mA)
//! and iio (JetPack 4.x, `bus/i2c/drivers/ina3221x/*/iio:deviceN` with
//! `rail_name_K`, `in_powerK_input` mW). The board's input rail
//! (`VDD_IN`, `POM_5V_IN`) is the board's total; without one, every rail is
//! summed. [`discover`] takes the sysfs root, so tests read a fixture tree.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often the sampler reads the rails.
pub const PERIOD: Duration = Duration::from_millis(20);

/// Labels of rails that measure the whole board's input.
const INPUT_RAILS: [&str; 3] = ["VDD_IN", "POM_5V_IN", "VIN_SYS_5V0"];

/// One power rail and how to read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rail {
    pub label: String,
    read: Read,
}

#[derive(Clone, Debug, PartialEq)]
enum Read {
    /// mV and mA files (hwmon).
    VoltCurrent(PathBuf, PathBuf),
    /// A mW file (iio).
    Power(PathBuf),
}

fn read_f64(p: &Path) -> Result<f64, String> {
    let s = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    s.trim()
        .parse()
        .map_err(|_| format!("{}: not a number: {:?}", p.display(), s.trim()))
}

impl Rail {
    /// Power now, mW.
    pub fn power_mw(&self) -> Result<f64, String> {
        match &self.read {
            Read::VoltCurrent(v, c) => Ok(read_f64(v)? * read_f64(c)? / 1000.0),
            Read::Power(p) => read_f64(p),
        }
    }
}

fn sorted_dir(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn label(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty() && !s.eq_ignore_ascii_case("NC")).then(|| s.to_string())
}

/// hwmon: `class/hwmon/*` whose `name` is `ina3221`, channels 1..=3.
fn hwmon_rails(root: &Path, out: &mut Vec<Rail>) {
    for dir in sorted_dir(&root.join("class/hwmon")) {
        if label(&dir.join("name")).as_deref() != Some("ina3221") {
            continue;
        }
        for k in 1..=3 {
            let (v, c) = (
                dir.join(format!("in{k}_input")),
                dir.join(format!("curr{k}_input")),
            );
            if let Some(l) = label(&dir.join(format!("in{k}_label")))
                && v.is_file()
                && c.is_file()
            {
                out.push(Rail {
                    label: l,
                    read: Read::VoltCurrent(v, c),
                });
            }
        }
    }
}

/// iio: `bus/i2c/drivers/ina3221x/*/iio:device*`, channels 0..=2.
fn iio_rails(root: &Path, out: &mut Vec<Rail>) {
    for dev in sorted_dir(&root.join("bus/i2c/drivers/ina3221x")) {
        for iio in sorted_dir(&dev) {
            let is_iio = iio
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("iio:device"));
            if !is_iio {
                continue;
            }
            for k in 0..=2 {
                let p = iio.join(format!("in_power{k}_input"));
                if let Some(l) = label(&iio.join(format!("rail_name_{k}")))
                    && p.is_file()
                {
                    out.push(Rail {
                        label: l,
                        read: Read::Power(p),
                    });
                }
            }
        }
    }
}

/// The rails to sum for board power under sysfs root `root` (`/sys`):
/// the input rail if there is one, else every rail; empty without an
/// INA3221.
pub fn discover(root: &Path) -> Vec<Rail> {
    let mut all = Vec::new();
    hwmon_rails(root, &mut all);
    iio_rails(root, &mut all);
    match all
        .iter()
        .find(|r| INPUT_RAILS.iter().any(|l| r.label.eq_ignore_ascii_case(l)))
    {
        Some(input) => vec![input.clone()],
        None => all,
    }
}

/// Sum of the rails' power, mW.
pub fn board_mw(rails: &[Rail]) -> Result<f64, String> {
    rails.iter().map(Rail::power_mw).sum()
}

/// Energy integrated by the sampler thread, read lock-free by workers.
pub struct PowerMeter {
    start: Instant,
    /// Energy up to `at_ns` (µJ, f64 bits), power then (mW, f64 bits).
    energy_uj: AtomicU64,
    power_mw: AtomicU64,
    at_ns: AtomicU64,
    pub rails: Vec<String>,
}

impl PowerMeter {
    fn new(rails: &[Rail]) -> PowerMeter {
        PowerMeter {
            start: Instant::now(),
            energy_uj: AtomicU64::new(0f64.to_bits()),
            power_mw: AtomicU64::new(0f64.to_bits()),
            at_ns: AtomicU64::new(0),
            rails: rails.iter().map(|r| r.label.clone()).collect(),
        }
    }

    /// Board energy since start at `now` (µJ): the last integrated value
    /// plus the last power times the time since.
    pub fn energy_uj(&self, now: Instant) -> f64 {
        let at = self.at_ns.load(Relaxed);
        let e = f64::from_bits(self.energy_uj.load(Relaxed));
        let p = f64::from_bits(self.power_mw.load(Relaxed));
        let now_ns = now.saturating_duration_since(self.start).as_nanos() as u64;
        // mW × ns = 1e-12 J = 1e-6 µJ.
        e + p * now_ns.saturating_sub(at) as f64 * 1e-6
    }

    /// Latest board power, mW.
    pub fn power_mw(&self) -> f64 {
        f64::from_bits(self.power_mw.load(Relaxed))
    }

    /// Integrates one reading (trapezoid) taken at `now`.
    fn sample(&self, mw: f64, now: Instant) {
        let now_ns = now.saturating_duration_since(self.start).as_nanos() as u64;
        let at = self.at_ns.load(Relaxed);
        let p0 = f64::from_bits(self.power_mw.load(Relaxed));
        let e0 = f64::from_bits(self.energy_uj.load(Relaxed));
        let dt = now_ns.saturating_sub(at) as f64;
        let e = if at == 0 {
            0.0
        } else {
            e0 + (p0 + mw) / 2.0 * dt * 1e-6
        };
        self.energy_uj.store(e.to_bits(), Relaxed);
        self.power_mw.store(mw.to_bits(), Relaxed);
        self.at_ns.store(now_ns.max(1), Relaxed);
    }
}

/// The process's power meter: started on first use if `/sys` has INA3221
/// rails that read; `None` on every other machine.
pub fn meter() -> Option<&'static PowerMeter> {
    static METER: OnceLock<Option<&'static PowerMeter>> = OnceLock::new();
    *METER.get_or_init(|| start(Path::new("/sys")))
}

fn start(root: &Path) -> Option<&'static PowerMeter> {
    let rails = discover(root);
    let first = board_mw(&rails).ok().filter(|_| !rails.is_empty())?;
    let m: &'static PowerMeter = Box::leak(Box::new(PowerMeter::new(&rails)));
    m.sample(first, Instant::now());
    let spawned = std::thread::Builder::new()
        .name("reflexd-power".into())
        .spawn(move || {
            loop {
                std::thread::sleep(PERIOD);
                if let Ok(mw) = board_mw(&rails) {
                    m.sample(mw, Instant::now());
                }
            }
        });
    match spawned {
        Ok(_) => {
            tracing::info!(rails = ?m.rails, "power rails found: energy per token is measured");
            Some(m)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the power sampler");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/sysfs")
            .join(name)
    }

    #[test]
    fn orin_hwmon_layout_reads_the_input_rail() {
        let rails = discover(&fixture("orin"));
        assert_eq!(rails.len(), 1, "{rails:?}");
        assert_eq!(rails[0].label, "VDD_IN");
        // 5072 mV × 1384 mA.
        assert!((board_mw(&rails).unwrap() - 7019.648).abs() < 1e-6);
    }

    #[test]
    fn xavier_iio_layout_reads_the_input_rail() {
        let rails = discover(&fixture("xavier"));
        assert_eq!(rails.len(), 1, "{rails:?}");
        assert_eq!(rails[0].label, "POM_5V_IN");
        assert_eq!(board_mw(&rails).unwrap(), 4312.0);
    }

    #[test]
    fn without_an_input_rail_every_rail_is_summed_and_elsewhere_none() {
        let rails = discover(&fixture("no-input-rail"));
        let labels: Vec<&str> = rails.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(
            labels,
            ["VDD_CPU_GPU_CV", "VDD_SOC"],
            "NC channels are skipped"
        );
        assert!((board_mw(&rails).unwrap() - (5000.0 * 0.4 + 5000.0 * 0.2)).abs() < 1e-6);
        assert!(discover(&fixture("none")).is_empty());
        assert!(start(&fixture("none")).is_none());
    }

    #[test]
    fn a_broken_reading_is_an_error_not_a_panic() {
        let rails = discover(&fixture("broken"));
        assert_eq!(rails.len(), 1);
        assert!(board_mw(&rails).unwrap_err().contains("not a number"));
    }

    #[test]
    fn energy_integrates_power_over_time() {
        let m = PowerMeter::new(&[]);
        let t0 = m.start + Duration::from_millis(10);
        m.sample(2000.0, t0);
        m.sample(4000.0, t0 + Duration::from_millis(100));
        // Trapezoid: 3 W × 0.1 s = 0.3 J = 300 000 µJ.
        let e = m.energy_uj(t0 + Duration::from_millis(100));
        assert!((e - 300_000.0).abs() < 1e-3, "{e}");
        // Extrapolated at the latest power: + 4 W × 0.05 s.
        let e = m.energy_uj(t0 + Duration::from_millis(150));
        assert!((e - 500_000.0).abs() < 1e-3, "{e}");
    }
}
