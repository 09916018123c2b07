//! Stage two of the `[metrics]` table: where the daemon's metrics snapshot is
//! exported (zenoh `<node>/metrics`, an optional Prometheus endpoint) and
//! whether histograms are recorded on the hot path.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ConfigError, RawMetrics, invalid};

/// Default key prefix: `reflexd/metrics`, `reflexd/alive`.
pub const DEFAULT_NODE: &str = "reflexd";
/// Default period of the zenoh metrics publication.
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest publication period accepted (a snapshot walks every histogram).
pub const MIN_PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, PartialEq)]
pub struct MetricsConfig {
    /// Key prefix of this daemon's metrics (`<node>/metrics`) and liveliness
    /// token (`<node>/alive`).
    pub node: String,
    /// Prometheus text endpoint (`GET /metrics`); `None` = off.
    pub prometheus: Option<SocketAddr>,
    /// Period of the zenoh publication; `None` = only the queryable answers.
    pub publish_interval: Option<Duration>,
    pub histograms: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            node: DEFAULT_NODE.to_string(),
            prometheus: None,
            publish_interval: Some(DEFAULT_PUBLISH_INTERVAL),
            histograms: true,
        }
    }
}

impl MetricsConfig {
    pub fn metrics_key(&self) -> String {
        format!("{}/metrics", self.node)
    }
    pub fn alive_key(&self) -> String {
        format!("{}/alive", self.node)
    }
}

pub fn metrics_config(r: &RawMetrics) -> Result<MetricsConfig, ConfigError> {
    let d = MetricsConfig::default();
    let node = r.node.clone().unwrap_or(d.node);
    if node.is_empty()
        || node.starts_with('/')
        || node.ends_with('/')
        || node.contains(['*', '$', '?', '#', ' '])
        || zenoh::key_expr::OwnedKeyExpr::autocanonize(node.clone()).is_err()
    {
        return Err(invalid(format!(
            "metrics.node = {node:?}: must be a zenoh key without wildcards or surrounding '/' (e.g. \"robot1/reflexd\")"
        )));
    }
    let prometheus = match &r.prometheus {
        None => None,
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
            invalid(format!(
                "metrics.prometheus = {s:?}: {e}; expected an IP address and port such as \"127.0.0.1:9464\""
            ))
        })?),
    };
    let publish_interval = match r.publish_interval_ms {
        None => d.publish_interval,
        Some(0) => None,
        Some(ms) if Duration::from_millis(ms) < MIN_PUBLISH_INTERVAL => {
            return Err(invalid(format!(
                "metrics.publish_interval_ms = {ms}: must be 0 (off) or at least {}",
                MIN_PUBLISH_INTERVAL.as_millis()
            )));
        }
        Some(ms) => Some(Duration::from_millis(ms)),
    };
    Ok(MetricsConfig {
        node,
        prometheus,
        publish_interval,
        histograms: r.histograms.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(node: Option<&str>, prom: Option<&str>, ms: Option<u64>) -> RawMetrics {
        RawMetrics {
            node: node.map(str::to_string),
            prometheus: prom.map(str::to_string),
            publish_interval_ms: ms,
            histograms: None,
        }
    }

    #[test]
    fn defaults_are_zenoh_only_with_histograms() {
        let m = metrics_config(&RawMetrics::default()).unwrap();
        assert_eq!(m, MetricsConfig::default());
        assert_eq!(m.metrics_key(), "reflexd/metrics");
        assert_eq!(m.prometheus, None);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (r, key) in [
            (raw(Some("a/*"), None, None), "metrics.node"),
            (raw(Some(""), None, None), "metrics.node"),
            (raw(None, Some("localhost"), None), "metrics.prometheus"),
            (raw(None, None, Some(5)), "metrics.publish_interval_ms"),
        ] {
            let e = metrics_config(&r).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let ok = metrics_config(&raw(
            Some("robot1/reflexd"),
            Some("127.0.0.1:9464"),
            Some(0),
        ));
        let ok = ok.unwrap();
        assert_eq!(ok.publish_interval, None);
        assert_eq!(ok.prometheus, Some("127.0.0.1:9464".parse().unwrap()));
    }
}
