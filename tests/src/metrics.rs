//! Scrapes a node's `/metrics` and parses it with a strict OpenMetrics parser.

use std::net::SocketAddr;

use http::{Method, StatusCode};
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};

/// One parsed scrape.
#[derive(Debug)]
pub struct Metrics {
    exposition: MetricsExposition<OpenMetricsType, OpenMetricsValue>,
    /// The raw text, for failure messages.
    pub text: String,
}

impl Metrics {
    /// `GET /metrics` on `address`; panics unless it answers 200 with valid OpenMetrics text.
    pub async fn scrape(address: SocketAddr) -> Metrics {
        let response = crate::http::request(address, Method::GET, "/metrics", &[], "").await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        let content_type = response
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "content type {content_type}"
        );
        let text = response.text();
        let exposition =
            openmetrics_parser::openmetrics::parse_openmetrics(&text).unwrap_or_else(|error| {
                panic!("/metrics is not valid OpenMetrics ({error:?}):\n{text}")
            });
        Metrics { exposition, text }
    }

    /// Every metric family's name (counters without their `_total` suffix).
    pub fn families(&self) -> Vec<String> {
        let mut names: Vec<String> = self.exposition.families.keys().cloned().collect();
        names.sort();
        names
    }

    /// The value of the counter, gauge or unknown-type sample of `family` with exactly these
    /// labels; panics when there is none.
    pub fn value(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        self.try_value(family, labels)
            .unwrap_or_else(|| panic!("no sample {family}{labels:?} in /metrics:\n{}", self.text))
    }

    /// [`Metrics::value`], or `None` when the sample is absent (a labelled counter not yet moved).
    pub fn try_value(&self, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = self.exposition.families.get(family)?;
        let names = family.get_label_names();
        if names.len() != labels.len() {
            return None;
        }
        let values: Option<Vec<String>> = names
            .iter()
            .map(|name| {
                labels
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.to_string())
            })
            .collect();
        let sample = family.get_sample_by_label_values(&values?)?;
        match &sample.value {
            OpenMetricsValue::Counter(counter) => Some(counter.value.as_f64()),
            OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => Some(n.as_f64()),
            _ => None,
        }
    }

    /// The number of observations of histogram `family` (no labels).
    pub fn histogram_count(&self, family: &str) -> u64 {
        let sample = self
            .exposition
            .families
            .get(family)
            .and_then(|f| f.get_sample_by_label_values(&[]))
            .unwrap_or_else(|| panic!("no histogram {family} in /metrics:\n{}", self.text));
        match &sample.value {
            OpenMetricsValue::Histogram(histogram) => histogram.count.unwrap_or(0),
            other => panic!("{family} is not a histogram: {other:?}"),
        }
    }
}
