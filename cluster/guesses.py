"""Failed sign-ins counted in Redis, for every process and every server on it.

access/auth.py limits failed sign-ins per client network with a token
bucket: FAILURE_BURST at once, then a few a minute. Counted in one process,
`--processes 4` would allow four times the guesses, and so would four
servers behind a load balancer. `SharedGuesses` keeps each network's bucket
in Redis instead (`chat:guesses:<network>`, a hash that expires once the
bucket would be full again), changed by one Lua script, so every process
and server takes from the same bucket. launch.py hands it to the guard
(`Guard.count_guesses_in`); access/ never imports this module.

Time is Redis's own (`TIME`), so servers whose clocks differ agree. While
Redis does not answer, this process counts alone (its own `Buckets`), and
the sign-in is not held up longer than a quick call's timeout.
"""

import logging

import redis

from cluster.keys import GUESSES_PREFIX, RedisLink
from ratelimit import Buckets

log = logging.getLogger(__name__)

# KEYS[1] = the network's bucket. ARGV: rate per s, burst, 1 to take a token or -1 to
# give one back. Returns the seconds to wait as a string (Lua numbers lose fractions).
BUCKET = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local kept = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(kept[1]) or burst, tonumber(kept[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if ARGV[3] == '1' then
  if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
else
  tokens = math.min(burst, tokens + 1)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""


class SharedGuesses:
    """Token buckets by network in Redis (`try_take`, `give_back`), as access.auth expects."""

    def __init__(self, link: RedisLink, rate: float, burst: int):
        self._link = link
        self._rate, self._burst = rate, burst
        self._script = link.quick.register_script(BUCKET)
        self._alone = Buckets(rate, burst)  # while Redis does not answer

    def try_take(self, network: str) -> float:
        """Take a token from `network`'s bucket: 0.0 if allowed, else the seconds to wait."""
        wait = self._run(network, 1)
        return self._alone.try_take(network) if wait is None else wait

    def give_back(self, network: str) -> None:
        if self._run(network, -1) is None:
            self._alone.give_back(network)

    def _run(self, network: str, change: int) -> float | None:
        try:
            args = [self._rate, self._burst, change]
            return float(self._script(keys=[GUESSES_PREFIX + network], args=args))
        except redis.RedisError as error:
            log.debug("failed sign-ins counted here only: %s", error)
            return None
