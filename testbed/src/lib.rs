//! What the `mcp-testbed` binary shares with benchmarks and tests.

pub mod in_process;
