//! What every other process on the node pays while the node-wide agent runs: its kernel
//! hooks see every exec (discovery) and every TCP read, and return early for processes
//! that are not targets. Windows with and without `mcp-observe agent` alternate; this
//! process, which calls no probe, is not a target.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Instant,
};

use anyhow::Context as _;
use mcp_observe_benchmarks::stats::median;

use crate::{
    Bench,
    process::{self},
    report::{Figure, duration},
};

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let (rounds, execs, round_trips) = bench.pick((6, 400, 20_000), (1, 50, 2_000));
    let (mut exec, mut tcp) = (Vec::new(), Vec::new());
    for index in 0..rounds {
        let mut round = [[0.0; 2]; 2];
        // Every other round measures with the agent first: drift within a round cancels out.
        let order = if index % 2 == 0 { [false, true] } else { [true, false] };
        for observed in order {
            let agent = observed.then(|| process::observer(&bench.observer, &["agent"])).transpose()?;
            round[0][observed as usize] = exec_ns(execs)?;
            round[1][observed as usize] = round_trip_ns(round_trips)?;
            if let Some(agent) = agent {
                agent.stop()?;
            }
        }
        exec.push(round[0]);
        tcp.push(round[1]);
    }
    for (name, windows) in
        [("fork + exec + wait of /bin/true", exec), ("TCP round trip over loopback, 1 byte", tcp)]
    {
        let on = median(&mut windows.iter().map(|w| w[1]).collect::<Vec<_>>());
        let off = median(&mut windows.iter().map(|w| w[0]).collect::<Vec<_>>());
        let ratio = median(&mut windows.iter().map(|w| w[1] / w[0]).collect::<Vec<_>>());
        bench.record(
            Figure::new(format!("{name}, another process, agent running"), duration(on))
                .against(format!("agent stopped {}", duration(off)), ratio),
        );
    }
    Ok(())
}

/// Mean ns of one fork + exec + wait.
fn exec_ns(count: u32) -> anyhow::Result<f64> {
    let start = Instant::now();
    for _ in 0..count {
        Command::new("/bin/true").status().context("running /bin/true")?;
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(count))
}

/// Mean ns of one ping-pong over a loopback TCP connection.
fn round_trip_ns(count: u32) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut byte = [0u8];
        while server.read(&mut byte)? == 1 {
            server.write_all(&byte)?;
        }
        Ok(())
    });
    let mut byte = [7u8];
    let start = Instant::now();
    for _ in 0..count {
        client.write_all(&byte)?;
        client.read_exact(&mut byte)?;
    }
    let elapsed = start.elapsed();
    drop(client);
    echo.join().expect("echo thread")?;
    Ok(elapsed.as_nanos() as f64 / f64::from(count))
}
