//! The figures `top` shows, from the scrapes of the last few seconds: rates, latency
//! percentiles and error shares over the window, totals since the agent started.

use std::{collections::VecDeque, time::Duration};

use super::scrape::{Requests, RowKey, Scrape};

pub struct Window {
    span: Duration,
    /// Oldest first; the first is the window's base: the latest scrape at least `span`
    /// before the last (early on, the first scrape).
    scrapes: VecDeque<Scrape>,
}

#[derive(Debug, PartialEq)]
pub struct Row {
    pub key: RowKey,
    /// Requests per second over the window (None until there are two scrapes).
    pub rate: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Share of the window's requests that were not `ok` (None: no request in it).
    pub error_ratio: Option<f64>,
    /// Requests since the agent started.
    pub total: f64,
}

impl Window {
    pub fn new(span: Duration) -> Self {
        Self { span, scrapes: VecDeque::new() }
    }

    pub fn push(&mut self, scrape: Scrape) {
        self.scrapes.push_back(scrape);
        let newest = self.scrapes.back().expect("just pushed").at;
        while self.scrapes.len() > 2 && newest.duration_since(self.scrapes[1].at) >= self.span {
            self.scrapes.pop_front();
        }
    }

    pub fn latest(&self) -> Option<&Scrape> {
        self.scrapes.back()
    }

    /// Every row of the latest scrape, busiest first.
    pub fn rows(&self) -> Vec<Row> {
        let (Some(base), Some(latest)) = (self.scrapes.front(), self.scrapes.back()) else {
            return Vec::new();
        };
        let seconds = latest.at.duration_since(base.at).as_secs_f64();
        let empty = Requests::default();
        let mut rows: Vec<Row> = latest
            .rows
            .iter()
            .map(|(key, now)| {
                // A row missing from the base had no request yet: the agent never removes
                // a live proxy's series. One that went down is a restarted agent's: all new.
                let then = base.rows.get(key).filter(|then| then.total <= now.total).unwrap_or(&empty);
                let requests = now.total - then.total;
                let buckets = delta(&now.buckets, &then.buckets);
                Row {
                    key: key.clone(),
                    rate: (seconds > 0.0).then(|| requests / seconds),
                    p50: quantile(0.5, &buckets),
                    p99: quantile(0.99, &buckets),
                    error_ratio: (requests > 0.0).then(|| (now.errors - then.errors) / requests),
                    total: now.total,
                }
            })
            .collect();
        rows.sort_by(|a, b| b.rate.unwrap_or(0.0).total_cmp(&a.rate.unwrap_or(0.0)).then(a.key.cmp(&b.key)));
        rows
    }
}

fn delta(now: &[(f64, f64)], then: &[(f64, f64)]) -> Vec<(f64, f64)> {
    now.iter()
        .map(|&(le, n)| (le, n - then.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, m)| *m)))
        .collect()
}

/// The `q` quantile of cumulative `buckets`, interpolated linearly inside its bucket as
/// Prometheus's `histogram_quantile` does; in the +Inf bucket, the highest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let &(_, count) = buckets.last()?;
    if count <= 0.0 {
        return None;
    }
    let rank = q * count;
    let mut below = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return Some(below.0);
            }
            let share = if n > below.1 { (rank - below.1) / (n - below.1) } else { 1.0 };
            return Some(below.0 + (le - below.0) * share);
        }
        below = (le, n);
    }
    Some(below.0)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::top::scrape::tests::TEXT;

    #[test]
    fn rates_percentiles_and_errors_cover_the_window_and_totals_everything() {
        let start = Instant::now();
        let mut window = Window::new(Duration::from_secs(10));
        let before = TEXT.replace("} 8\n", "} 4\n").replace("} 2\n", "} 0\n");
        window.push(Scrape::parse(&before, start).unwrap());
        window.push(Scrape::parse(TEXT, start + Duration::from_secs(2)).unwrap());
        let rows = window.rows();
        let echo = &rows[0];
        assert_eq!(echo.key.tool, "echo");
        // 6 more requests in 2 s: 4 ok under 0.1 s, 2 errors between 0.1 and 0.5 s.
        assert_eq!(echo.rate, Some(3.0));
        assert_eq!(echo.error_ratio, Some(2.0 / 6.0));
        assert_eq!(echo.total, 10.0);
        let near = |got: Option<f64>, want: f64| got.is_some_and(|got| (got - want).abs() < 1e-12);
        assert!(near(echo.p50, 0.1 * 3.0 / 4.0), "{:?}", echo.p50);
        assert!(near(echo.p99, 0.1 + 0.4 * (0.99 * 6.0 - 4.0) / 2.0), "{:?}", echo.p99);
        assert_eq!(rows[1].rate, Some(0.0), "initialize: no request in the window");
        assert_eq!(rows[1].error_ratio, None);

        // The agent behind --url restarted: its counters start again, nothing goes negative.
        let mut restarted = Window::new(Duration::from_secs(10));
        restarted.push(Scrape::parse(TEXT, start).unwrap());
        restarted.push(Scrape::parse(&before, start + Duration::from_secs(2)).unwrap());
        let echo = &restarted.rows()[0];
        assert_eq!((echo.rate, echo.error_ratio, echo.total), (Some(2.0), Some(0.0), 4.0));

        // Past the window, the old base is dropped: nothing new, no rate of old requests.
        window.push(Scrape::parse(TEXT, start + Duration::from_secs(13)).unwrap());
        window.push(Scrape::parse(TEXT, start + Duration::from_secs(14)).unwrap());
        assert_eq!(window.rows()[0].rate, Some(0.0));
        assert_eq!(window.rows()[0].p99, None);
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket_as_prometheus_does() {
        let buckets = [(0.25, 0.0), (0.5, 10.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.5, &buckets), Some(0.375));
        assert_eq!(quantile(0.99, &[(1.0, 0.0), (f64::INFINITY, 4.0)]), Some(1.0), "above the last bound");
        assert_eq!(quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
    }
}
