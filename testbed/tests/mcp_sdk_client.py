"""Talks to the testbed proxy with the reference MCP Python SDK (Streamable HTTP).

Usage: mcp_sdk_client.py URL TOKEN. Prints one JSON object with what the SDK saw.
"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client


async def main(url: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with streamablehttp_client(url, headers=headers) as (read, write, session_id):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            tools = await session.list_tools()
            echo = await session.call_tool("alpha__echo", {"text": "hello sdk"})
            error = await session.call_tool("beta__error", {})
            try:
                await session.call_tool("alpha__fail", {})
                fail = None
            except Exception as e:  # the SDK raises McpError on a JSON-RPC error
                fail = getattr(getattr(e, "error", None), "code", str(e))
            print(json.dumps({
                "server": init.serverInfo.name,
                "session": session_id() is not None,
                "tools": sorted(t.name for t in tools.tools),
                "echo": [c.text for c in echo.content],
                "echo_is_error": echo.isError,
                "error_is_error": error.isError,
                "fail_code": fail,
            }))


asyncio.run(main(sys.argv[1], sys.argv[2]))
