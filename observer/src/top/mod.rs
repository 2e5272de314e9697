//! `mcp-observe top`: a live table of an agent's `/metrics`, like `top`. It reads the
//! exposition text over HTTP (its own agent's on a loopback port with `--pid`, or a running
//! agent's with `--url`), so it shows exactly what Prometheus would scrape.

mod scrape;
mod window;

use std::time::{Duration, Instant, SystemTime};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Style, Stylize as _},
    text::Line,
    widgets::{Cell, Paragraph, Row as TableRow, Table},
};

use self::{
    scrape::Scrape,
    window::{Row, Window},
};
use crate::error::ObserveError;

/// Shows `url` every `interval` until `q`, Esc or Ctrl-C, or until `stopped()` says the
/// source is gone. The first read must succeed: a wrong URL is an error, not an empty table.
pub fn run(
    url: &str,
    span: Duration,
    interval: Duration,
    stopped: impl Fn() -> bool,
) -> Result<(), ObserveError> {
    let timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(5));
    let mut window = Window::new(span);
    window.push(read(url, timeout)?);
    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(error) => {
            // It may have switched to raw mode before failing.
            ratatui::restore();
            return Err(ObserveError::Terminal(error));
        }
    };
    let mut failed: Option<ObserveError> = None;
    let mut next = Instant::now() + interval;
    let shown = loop {
        if let Err(error) = terminal.draw(|frame| draw(frame, url, span, &window, failed.as_ref())) {
            break Err(ObserveError::Terminal(error));
        }
        match event::poll(next.saturating_duration_since(Instant::now())) {
            Ok(true) => match event::read() {
                Ok(Event::Key(key)) if key.kind == KeyEventKind::Press && quits(key.code, key.modifiers) => {
                    break Ok(());
                }
                Ok(_) => continue,
                Err(error) => break Err(ObserveError::Terminal(error)),
            },
            Ok(false) => {}
            Err(error) => break Err(ObserveError::Terminal(error)),
        }
        if stopped() {
            break Ok(());
        }
        next = Instant::now() + interval;
        match read(url, timeout) {
            Ok(scrape) => {
                window.push(scrape);
                failed = None;
            }
            // Shown on the next frame; the last figures stay, as top keeps its last sample.
            Err(error) => failed = Some(error),
        }
    };
    let restored = ratatui::try_restore().map_err(ObserveError::Terminal);
    shown.and(restored)
}

fn quits(code: KeyCode, modifiers: KeyModifiers) -> bool {
    matches!(code, KeyCode::Char('q') | KeyCode::Esc)
        || (code == KeyCode::Char('c') && modifiers.contains(KeyModifiers::CONTROL))
}

/// One scrape of `url`; a read that takes longer than `timeout` fails, so that a stalled
/// agent cannot freeze the table.
fn read(url: &str, timeout: Duration) -> Result<Scrape, ObserveError> {
    let failed = |reason: String| ObserveError::Scrape { url: url.to_string(), reason };
    let at = Instant::now();
    let request = ureq::get(url).config().timeout_global(Some(timeout)).build();
    let mut response = request.call().map_err(|e| failed(e.to_string()))?;
    let text = response.body_mut().read_to_string().map_err(|e| failed(e.to_string()))?;
    Scrape::parse(&text, at).map_err(failed)
}

const COLUMNS: [&str; 8] = ["PROXY", "BACKEND", "TOOL", "REQ/S", "P50", "P99", "ERR%", "TOTAL"];

fn draw(frame: &mut Frame, url: &str, span: Duration, window: &Window, failed: Option<&ObserveError>) {
    let Some(latest) = window.latest() else { return };
    let mut header = vec![
        Line::from(format!(
            "mcp-observe top · {url} · rates, percentiles and errors over {} s · {}",
            span.as_secs(),
            clock()
        ))
        .bold(),
    ];
    for (proxy, p) in &latest.proxies {
        header.push(Line::from(format!(
            "{proxy}: {} in flight (oldest {:.1} s) · {} sessions · backends {} connected / {} configured",
            p.in_flight, p.oldest_in_flight, p.sessions, p.backends_connected, p.backends_configured
        )));
    }
    header.push(Line::from(format!("events lost: {}", latest.events_lost)));
    if let Some(error) = failed {
        header.push(Line::from(format!("last read failed: {error}")).red());
    }
    let [top, table, bottom] = Layout::vertical([
        Constraint::Length(header.len() as u16 + 1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header), top);

    let rows: Vec<[String; 8]> = window.rows().iter().map(cells).collect();
    // Each column as wide as its longest cell: Kubernetes names are long.
    let widths = std::array::from_fn::<_, 8, _>(|i| {
        let widest = rows.iter().map(|row| row[i].chars().count()).chain([COLUMNS[i].len()]).max();
        Constraint::Length(widest.unwrap_or(0) as u16)
    });
    let rows = rows.into_iter().map(TableRow::new);
    let columns = TableRow::new(COLUMNS.map(Cell::from)).style(Style::new().reversed());
    frame.render_widget(Table::new(rows, widths).header(columns), table);
    frame.render_widget(Paragraph::new("q: quit"), bottom);
}

fn cells(row: &Row) -> [String; 8] {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    [
        row.key.proxy.clone(),
        if row.key.server.is_empty() { "-".to_string() } else { row.key.server.clone() },
        row.key.tool.clone(),
        or_dash(row.rate.map(|r| format!("{r:.1}"))),
        or_dash(row.p50.map(seconds)),
        or_dash(row.p99.map(seconds)),
        or_dash(row.error_ratio.map(|e| format!("{:.1}", e * 100.0))),
        format!("{}", row.total),
    ]
}

/// A latency, in ms below a second.
fn seconds(s: f64) -> String {
    if s < 1.0 { format!("{:.1}ms", s * 1e3) } else { format!("{s:.2}s") }
}

/// The wall-clock time, UTC (the standard library has no time zones).
fn clock() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02} UTC", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}
