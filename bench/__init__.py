"""The benchmark: how much chat a server delivers, how fast, and at what cost.

Not part of the chat program: a tool that measures it. `make bench` (or
`python -m bench` from the repository's top level) runs it. In reading order:

- `cli.py`: the command line: which servers and scenarios, in turn, and
  the table at the end;
- `bench.py`: the measurements (a burst of joins, a load or a sweep of
  loads), run against one server;
- `servers.py`: the servers under test, started as child processes, a
  private Redis (with a replica for `project+replicas`), nginx in front
  (`project+nginx`), and a git worktree of an older commit;
- `generator.py`: the load generator's parent side: who sends, in which
  room, and the workers' figures merged;
- `load.py`: the clients, many per worker process on grpc.aio;
- `report.py`: latency histograms, the progress line and the final table;
- `peers/`: the baselines server.py is measured against in the same run;
- `redis_layout.py`: apart from the rest, `python -m bench.redis_layout`
  measures the Redis layouts rooms could use (the README's "Why this
  layout");
- `failover.py`: apart too, `python -m bench.failover` kills the Redis
  master under a steady chat and counts messages echoed, then lost (the
  README's "Performance": the loss window); `lag.py` puts the replica a
  chosen delay away from the master for it.
"""
