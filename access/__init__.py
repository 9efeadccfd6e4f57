"""Access control: who may talk to the server, and how much. Skip it on a first reading.

Off by default (a sandbox to learn in), one flag away from safe to expose
(README, "Exposing it"). Read in this order:

1. `caps.py`: caps on calls, before any handler runs (streams per client
   network, an IPv4 /24 or an IPv6 /64; streams not yet joined; idle tool
   streams), as gRPC server interceptors.
2. `auth.py`: the credentials a call must carry (`--token` or `--users`),
   checked by an interceptor before any handler runs, with failed
   attempts limited per client network. `Anyone` is the open default, a
   null object, so the open path has no "is auth on?" branches.
3. `credentials.py`: the `authorization` header as RFC 7617 and 6750 read
   it; headers found right remembered (an HMAC, never the password);
   password hashes at once capped.
4. `users.py`: the users file of `--users` (scrypt hashes) and
   `python server.py add-user NAME`.
5. `undecodable.py`: requests gRPC cannot decode, refused without a
   traceback in the log, a few lines a second at most.
6. `tls.py`: the server's certificate and key (`--tls-cert`, `--tls-key`),
   checked before gRPC sees them.

Where it plugs into the core: server.py (`create_server`) puts the
interceptors in front of the servicer, and the session (session.py) asks
the same `auth` object one question at join time: may this caller take
this name? Nothing here imports the session, the hub or the cluster:
with Redis, launch.py hands the guard a counter of failed sign-ins that
lives there (cluster/guesses.py, `Guard.count_guesses_in`).
"""
