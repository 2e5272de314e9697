//! The eBPF object is linked by `bpf-linker`, a binary cargo does not know about:
//! rebuild when it changes.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found on PATH; install it with `cargo xtask setup`"),
    }
}
