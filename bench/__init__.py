"""The benchmark: how much chat a server delivers, how fast, and at what cost.

Not part of the chat program: a tool that measures it. `make bench` (or
`python -m bench` from the repository's top level) runs it. In reading order:

- `bench.py`: the command line and the measurements (a burst of joins, a
  load or a sweep of loads), run against each server in turn;
- `servers.py`: the servers under test, started as child processes, and a
  private Redis;
- `load.py`: the clients, many per process on grpc.aio;
- `report.py`: latency histograms, the progress line and the final table;
- `peers/`: the baselines server.py is measured against in the same run.
"""
