"""A local fake Binance: captures and synthetic markets served over real sockets.

See docs/fake-exchange.md.  Tests, benchmarks and the offline demo run the
gateway against it instead of the real exchange.
"""
