"""A real MCP server for the benchmark's real-child phase: the official
Python SDK's FastMCP with one `echo` tool (the call benches/proxy.rs makes).
Run with the python of benches/.peers/venv, where mcp-proxy brings the SDK.
Warnings only on stderr: the SDK logs a line per request at INFO, and every
proxy would then spend its time relaying log lines instead of messages."""

from mcp.server.fastmcp import FastMCP

server = FastMCP("sdk-echo", log_level="WARNING")


@server.tool()
def echo(text: str) -> str:
    """Returns its text."""
    return text


server.run()
