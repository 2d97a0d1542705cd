"""A tiny MCP server (official SDK) for the executor's MCP tests: stdio or streamable HTTP.

Run: python -m tests.executor.mcp_server [stdio | http PORT]
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("demo")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


@server.tool()
def retire_shout() -> str:
    """Stop offering `shout` (to test that a removed tool leaves the registry)."""
    server.remove_tool("shout")
    return "retired"


@server.tool()
def crash() -> str:
    """Kill this server process (to test restarts)."""
    os._exit(3)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
