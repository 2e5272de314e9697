//! The saturation client: one MCP session, `--concurrency` closed loops of the cheapest
//! successful `tools/call` (an `echo`), a warm-up that is not counted, then a counted
//! window. Prints `{"requests", "errors", "seconds", "per_second", "handled"}` on stdout;
//! `requests` are the successful replies completed inside the window, `errors` every failed
//! request (warm-up included), `handled` every request the proxy answered from the session's
//! start to its end (what its CPU time over the whole run paid for). Fails if the proxy cannot be reached or if any request failed.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::client::{Endpoint, initialize_params};

const TOKEN: &str = "alice-token";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    proxy: Endpoint,
    /// Length of the counted window, in seconds.
    #[arg(long)]
    seconds: f64,
    /// Closed loops (requests in flight at once).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Warm-up before the counted window, in milliseconds.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// The proxy's tool to call, `<server>__<tool>`, with arguments {"text": "hi"}.
    #[arg(long, default_value = "alpha__echo")]
    tool: String,
}

/// What one loop saw.
#[derive(Default)]
struct Counts {
    warmup: u64,
    counted: u64,
    late: u64,
    errors: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let window = Duration::try_from_secs_f64(args.seconds)
        .ok()
        .filter(|w| !w.is_zero())
        .with_context(|| format!("--seconds {} is not a positive number", args.seconds))?;
    let client = args.proxy.client();
    let (reply, session) =
        client.request(Some(TOKEN), None, "initialize", &initialize_params("mcp-testbed-saturate")).await?;
    if reply.http != 200 || reply.body.get("result").is_none() {
        bail!("initialize: HTTP {}: {}", reply.http, reply.body);
    }
    let session = session.context("the proxy sent no Mcp-Session-Id on initialize")?;
    client.initialized(TOKEN, &session).await?;

    let params = json!({"name": args.tool, "arguments": {"text": "hi"}});
    let start = Instant::now() + Duration::from_millis(args.warmup_ms);
    let end = start + window;
    let mut loops = Vec::new();
    for _ in 0..args.concurrency {
        let (client, session, params) = (client.clone(), session.clone(), params.clone());
        loops.push(tokio::spawn(async move {
            let mut counts = Counts::default();
            while Instant::now() < end {
                let reply = client.request(Some(TOKEN), Some(&session), "tools/call", &params).await;
                let done = Instant::now();
                let ok = reply.is_ok_and(|(reply, _)| {
                    reply.http == 200
                        && reply
                            .body
                            .get("result")
                            .is_some_and(|r| r.get("isError") != Some(&Value::Bool(true)))
                });
                let count = match (ok, done) {
                    (false, _) => &mut counts.errors,
                    (true, done) if done < start => &mut counts.warmup,
                    (true, done) if done <= end => &mut counts.counted,
                    (true, _) => &mut counts.late,
                };
                *count += 1;
            }
            counts
        }));
    }
    let mut total = Counts::default();
    for handle in loops {
        let counts = handle.await.context("a saturation loop panicked")?;
        total.warmup += counts.warmup;
        total.counted += counts.counted;
        total.late += counts.late;
        total.errors += counts.errors;
    }
    client.delete_session(TOKEN, &session).await?;

    let seconds = window.as_secs_f64();
    // On stderr, so that stdout stays one JSON line: every request the proxy handled.
    eprintln!(
        "mcp-testbed saturate: {} warm-up + {} counted + {} late successful replies, {} errors",
        total.warmup, total.counted, total.late, total.errors
    );
    // initialize, initialized and the session's deletion, beside the calls.
    let handled = total.warmup + total.counted + total.late + total.errors + 3;
    // Keys in this order (a `json!` object would sort them).
    println!(
        r#"{{"requests": {}, "errors": {}, "seconds": {}, "per_second": {}, "handled": {handled}}}"#,
        total.counted,
        total.errors,
        json!(seconds),
        json!(total.counted as f64 / seconds),
    );
    if total.errors > 0 {
        bail!("{} of the requests failed", total.errors);
    }
    Ok(())
}
