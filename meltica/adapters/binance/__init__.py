"""The Binance adapter: WebSocket connections (picows), REST (aiohttp), instruments."""
