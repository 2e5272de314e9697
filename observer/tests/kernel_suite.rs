//! Names the kernel suite where `cargo test` would otherwise pass over it in silence: it
//! is built only with the `kernel-tests` feature, as it loads eBPF and needs root.

#[cfg(not(feature = "kernel-tests"))]
#[test]
#[ignore = "the kernel suite (tests/kernel) loads eBPF programs and needs root: run `cargo xtask test` as root (or `cargo test --release --features observer/kernel-tests`)"]
fn kernel_suite() {}
