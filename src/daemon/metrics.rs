//! The daemon's Prometheus metrics (text exposition on `:<metricsPort>/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub verb: String,
    /// The CNI error code, or "0" for success.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DelegateLabels {
    pub plugin: String,
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// The HTTP method.
    pub verb: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Multus's one metric, kept so existing dashboards work.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MultusLabels {
    pub handler: String,
    pub code: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HotplugLabels {
    /// "attach" or "detach".
    pub op: String,
    /// "ok", "failed", "refused".
    pub result: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<ResultLabels, Counter>,
    pub request_seconds: Family<VerbLabels, Histogram>,
    pub delegate_seconds: Family<DelegateLabels, Histogram>,
    pub api_requests: Family<ApiLabels, Counter>,
    pub cache_objects: Family<KindLabels, Gauge>,
    pub in_flight: Gauge,
    pub multus_requests: Family<MultusLabels, Counter>,
    pub hotplug: Family<HotplugLabels, Counter>,
    /// Set when scraped, from the reconciler.
    pub hotplug_tracked: Gauge,
}

fn seconds() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(seconds),
            delegate_seconds: Family::new_with_constructor(seconds),
            api_requests: Family::default(),
            cache_objects: Family::default(),
            in_flight: Gauge::default(),
            multus_requests: Family::default(),
            hotplug: Family::default(),
            hotplug_tracked: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().expect("not poisoned");
            r.register(
                "plexus_cni_requests",
                "CNI calls served, by verb and result (the CNI error code, 0 for success)",
                m.requests.clone(),
            );
            r.register(
                "plexus_cni_request_duration_seconds",
                "Time to serve a CNI call, by verb",
                m.request_seconds.clone(),
            );
            r.register(
                "plexus_delegate_duration_seconds",
                "Time a delegate plugin ran, by plugin type and verb",
                m.delegate_seconds.clone(),
            );
            r.register(
                "plexus_api_requests",
                "Kubernetes API requests, by HTTP method and status code",
                m.api_requests.clone(),
            );
            r.register(
                "plexus_watch_cache_objects",
                "Objects in the watch cache, by kind",
                m.cache_objects.clone(),
            );
            r.register(
                "plexus_cni_requests_in_flight",
                "CNI calls being served now",
                m.in_flight.clone(),
            );
            r.register(
                "multus_server_request",
                "Counter of HTTP requests (Multus's metric, by handler, code and method)",
                m.multus_requests.clone(),
            );
            r.register(
                "plexus_hotplug_operations",
                "Hot-plug attaches and detaches, by result",
                m.hotplug.clone(),
            );
            r.register(
                "plexus_hotplug_pods_tracked",
                "Pods hot-plug holds state for (what it last reconciled of each); pods deleted from the API are dropped",
                m.hotplug_tracked.clone(),
            );
        }
        m
    }

    pub fn observe_request(&self, verb: &str, code: u32, took: Duration) {
        self.requests
            .get_or_create(&ResultLabels {
                verb: verb.into(),
                code: code.to_string(),
            })
            .inc();
        self.request_seconds
            .get_or_create(&VerbLabels { verb: verb.into() })
            .observe(took.as_secs_f64());
    }

    pub fn observe_delegate(&self, plugin: &str, verb: &str, took: Duration) {
        self.delegate_seconds
            .get_or_create(&DelegateLabels {
                plugin: plugin.into(),
                verb: verb.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn observe_api(&self, method: &str, code: u16) {
        self.api_requests
            .get_or_create(&ApiLabels {
                verb: method.into(),
                code: code.to_string(),
            })
            .inc();
    }

    pub fn set_cache_size(&self, kind: &str, n: usize) {
        self.cache_objects
            .get_or_create(&KindLabels { kind: kind.into() })
            .set(n as i64);
    }

    pub fn observe_http(&self, handler: &str, code: u16, method: &str) {
        self.multus_requests
            .get_or_create(&MultusLabels {
                handler: handler.into(),
                code: code.to_string(),
                method: method.to_ascii_lowercase(),
            })
            .inc();
    }

    pub fn observe_hotplug(&self, op: &str, result: &str) {
        self.hotplug
            .get_or_create(&HotplugLabels {
                op: op.into(),
                result: result.into(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().expect("not poisoned");
        prometheus_client::encoding::text::encode(&mut out, &r).expect("writes to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_observed() {
        let m = Metrics::new();
        m.observe_request("ADD", 0, Duration::from_millis(12));
        m.observe_request("ADD", 7, Duration::from_millis(2));
        m.observe_delegate("bridge", "ADD", Duration::from_millis(8));
        m.observe_api("PATCH", 200);
        m.set_cache_size("pods", 3);
        m.in_flight.set(1);
        let text = m.render();
        for line in [
            r#"plexus_cni_requests_total{verb="ADD",code="0"} 1"#,
            r#"plexus_cni_requests_total{verb="ADD",code="7"} 1"#,
            r#"plexus_cni_request_duration_seconds_count{verb="ADD"} 2"#,
            r#"plexus_delegate_duration_seconds_count{plugin="bridge",verb="ADD"} 1"#,
            r#"plexus_api_requests_total{verb="PATCH",code="200"} 1"#,
            r#"plexus_watch_cache_objects{kind="pods"} 3"#,
            "plexus_cni_requests_in_flight 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
