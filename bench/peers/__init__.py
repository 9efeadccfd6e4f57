"""The baselines of the benchmark: two bare chat servers to measure server.py against.

`threaded.py` is server.py's design with none of its features; `aio.py` is
the same chat on grpc.aio. Both speak chat.proto (join, messages, typing,
leave, HealthCheck), so the benchmark's clients drive them as they drive
server.py, and every figure it reports is a ratio within one run.
"""
