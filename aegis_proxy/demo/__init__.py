"""`aegis demo`: the proxy, a scripted LLM and a real MCP server on this machine, and a scripted agent walking through
allowed, denied and held calls. Also the local upstreams the end-to-end tests and the benchmark use."""
