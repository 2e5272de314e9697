# The agent's image for k8s/: the release binary on a distroless base with the glibc of
# Debian 12, the system it is built on. Build the binary first (`cargo xtask setup`
# installs the eBPF toolchain, then `cargo build --release`), then
#   docker build -t ghcr.io/mcp-observe/mcp-observe:0.1.0 .
# Not built on this machine: no container engine runs here.
FROM gcr.io/distroless/cc-debian12
COPY target/release/mcp-observe /usr/local/bin/mcp-observe
ENTRYPOINT ["/usr/local/bin/mcp-observe"]
CMD ["agent", "--listen", "0.0.0.0:9464"]
