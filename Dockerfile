# The agent's image: a static (musl) mcp-observe and nothing else; nothing is pulled.
# `cargo xtask image` builds the binary and then this file:
#   podman build --pull=never --file Dockerfile --tag ghcr.io/mcp-observe/mcp-observe:0.1.0 target/image/agent
# (k8s/base/daemonset.yaml's image; docker build works the same way.)
FROM scratch
COPY mcp-observe /usr/local/bin/mcp-observe
ENTRYPOINT ["/usr/local/bin/mcp-observe"]
CMD ["agent", "--listen", "0.0.0.0:9464"]
