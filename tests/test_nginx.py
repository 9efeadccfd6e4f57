"""nginx in front (deploy/nginx/): one address, several servers, long quiet streams.

Real nginx with the deploy configuration (only its ports changed by
tests/deployed.py), real servers on one real Redis, clients over loopback.
Which backend a stream landed on is read from the servers' logs.
"""

import re
import signal
import time

import grpc
import pytest
from certs import self_signed
from conftest import wait_until
from deployed import NGINX_DIR, nginx  # noqa: F401 - a fixture
from wire import Conn, join, join_event

import chat_pb2 as pb

pytestmark = pytest.mark.timeout(60)

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per client
REJOIN_WITHIN_S = 15.0  # a client of a stopped backend is chatting again by then
# A killed backend's names stay claimed until Redis reaps them (~12 s): the client's
# rejoin is refused ALREADY_EXISTS until then, and retried with backoff (up to 5 s).
KILLED_REJOIN_WITHIN_S = 25.0
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ALREADY_EXISTS)
SHORT_S = 2  # the silence timeouts of the "nginx defaults, scaled down" config
SILENCE = ("client_body_timeout", "grpc_read_timeout", "grpc_send_timeout")


@pytest.fixture
def backends(server_process, redis_proc):
    """Two servers on one Redis, their logs collected: (servers, "host:port" of each)."""
    servers = []
    for _ in range(2):
        server = server_process("--redis-url", redis_proc.url, "--rate", "100")
        server.watch_log()
        servers.append(server)
    return servers


def server_of(servers, name: str):
    """The server whose log says `name` joined (None until one does)."""
    joined = re.compile(rf"INFO {re.escape(name)} joined")
    found = [s for s in servers if any(joined.search(line) for line in list(s.log_lines))]
    return found[0] if found else None


def join_on_each(address: str, servers, prefix: str) -> dict:
    """Join through nginx until each backend serves one of ours: server -> (name, conn)."""
    placed = {}
    for n in range(20):
        name = f"{prefix}{n}"
        channel = grpc.insecure_channel(address, options=OWN_CONNECTION)
        conn = Conn(address, join_event(name), channel=channel)
        conn.next_event("user_event", where=lambda e, name=name: e.username == name)
        assert wait_until(lambda name=name: server_of(servers, name) is not None)
        server = server_of(servers, name)
        if server in placed:
            conn.close()
            continue
        placed[server] = (name, conn)
        if len(placed) == len(servers):
            return placed
    raise AssertionError("nginx never sent a new client to every backend")


def texts(messages) -> list[str]:
    return [m.message for m in messages]


def test_clients_through_nginx_chat_across_both_backends(backends, nginx):  # noqa: F811
    """When clients reach two servers through one nginx address, they chat as one."""
    proxy = nginx([s.address for s in backends])
    (_, first), (_, second) = join_on_each(proxy.address, backends, "user").values()
    first.say("over nginx, from one backend")
    assert texts(second.messages(1)) == ["over nginx, from one backend"]
    second.say("and from the other")
    assert texts(first.messages(2))[-1] == "and from the other"
    for conn in (first, second):
        conn.close()


def test_deploy_config_keeps_quiet_streams_for_hours():
    """When nobody speaks, every nginx timeout that counts silence on a stream is hours."""
    stream = (NGINX_DIR / "stream.conf").read_text()
    for setting in SILENCE:
        value = re.search(rf"\b{setting} (\d+)h;", stream)
        assert value and int(value[1]) >= 1, f"{setting} is not set in hours"


def test_quiet_stream_is_cut_by_short_timeouts_and_kept_by_the_deploy_config(
    server_process,
    nginx,  # noqa: F811
):
    """When a stream is silent longer than nginx's silence timeouts (set to 2 s here, under
    the servers' 10 s keepalive pings) it is cut; with the deploy config's it stays up."""
    server = server_process("--rate", "100")
    short = nginx([server.address], overrides=dict.fromkeys(SILENCE, f"{SHORT_S}s"))
    kept = nginx([server.address])
    cut_conn, kept_conn = join(short.address, "quiet1"), join(kept.address, "quiet2")
    time.sleep(SHORT_S * 2 + 1)  # the silence itself is what is tested
    assert cut_conn.wait_end(timeout=5) != grpc.StatusCode.OK, "short timeouts did not cut it"
    assert not kept_conn.ended.is_set()
    kept_conn.say("still here")
    assert texts(kept_conn.messages(1)) == ["still here"]
    kept_conn.close()


def rejoin(address: str, name: str, last_seen_id: str) -> tuple[Conn, list]:
    """Join again through nginx as a client does after a drop: retry while refused.

    Returns the stream and the messages it replayed before announcing the join.
    """
    deadline = time.monotonic() + REJOIN_WITHIN_S
    while True:
        channel = grpc.insecure_channel(address, options=OWN_CONNECTION)
        conn = Conn(address, join_event(name, last_seen_id), channel=channel)
        try:
            replayed = []
            while (event := conn.next_event()).WhichOneof("event") != "user_event":
                if event.WhichOneof("event") == "chat_message":
                    replayed.append(event)
            return conn, replayed
        except AssertionError:
            code = conn.wait_end(timeout=1) if conn.ended.wait(1) else None
            conn.close()
            if code not in RETRY_CODES or time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def test_backend_stopped_its_clients_continue_through_nginx_on_the_other(
    backends,
    nginx,  # noqa: F811
):
    """When one backend is stopped (SIGTERM), its clients rejoin through nginx, land on
    the other, and get exactly what they missed: nothing lost, nothing twice."""
    proxy = nginx([s.address for s in backends])
    placed = join_on_each(proxy.address, backends, "user")
    (stopped, (name, leaver)), (_, (_, stayer)) = placed.items()
    stayer.say("before")
    seen = leaver.messages(1)
    stopped.signal(signal.SIGTERM)
    leaver.next_event("system_event", where=lambda e: e.code == pb.SHUTTING_DOWN)
    assert leaver.wait_end(timeout=10) == grpc.StatusCode.OK
    for n in range(3):  # said while the leaver is away
        stayer.say(f"missed {n}")
    back, replayed = rejoin(proxy.address, name, seen[-1].id)
    assert wait_until(lambda: stopped.proc.poll() is not None, timeout=10)
    missed = [e.chat_message for e in replayed]
    back.say("back")
    assert texts(stayer.messages(5))[-1] == "back"
    everything = [*seen, *missed, *back.messages(1)]
    assert texts(everything) == ["before", "missed 0", "missed 1", "missed 2", "back"]
    ids = [tuple(map(int, m.id.split("-"))) for m in everything]
    assert ids == sorted(set(ids)), f"ids not increasing once each: {ids}"
    assert not [e for e in back.drain() if e.WhichOneof("event") == "chat_message"]
    for conn in (back, stayer):
        conn.close()


def test_tls_terminating_nginx_carries_the_chat(server_process, nginx, tmp_path):  # noqa: F811
    """When nginx terminates TLS (chat-tls.conf), TLS clients chat with a plaintext backend."""
    server = server_process("--rate", "100")
    cert, key = self_signed(tmp_path)
    proxy = nginx([server.address], "chat-tls.conf", files={"cert.pem": cert, "key.pem": key})
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    channel = grpc.secure_channel(proxy.address, credentials)
    alice = Conn(proxy.address, join_event("alice"), channel=channel)
    alice.next_event("user_event", where=lambda e: e.username == "alice")
    alice.say("over TLS, then plaintext")
    assert texts(alice.messages(1)) == ["over TLS, then plaintext"]
    alice.close()


def test_real_client_through_nginx_moves_to_the_other_backend_on_sigterm(
    backends,
    nginx,  # noqa: F811
    pipe_client,
):
    """When the backend of a real client (client.py) behind nginx is stopped, the client
    rejoins through the same address, lands on the other backend, shows what it missed
    once, and its next line reaches everyone."""
    proxy = nginx([s.address for s in backends])
    alice = pipe_client(proxy.address, "alice")
    alice.expect("alice joined")
    assert wait_until(lambda: server_of(backends, "alice") is not None)
    stopped = server_of(backends, "alice")
    other = next(s for s in backends if s is not stopped)
    bob = None
    for n in range(20):  # a wire-level watcher on the other backend
        channel = grpc.insecure_channel(proxy.address, options=OWN_CONNECTION)
        conn = Conn(proxy.address, join_event(f"bob{n}"), channel=channel)
        conn.next_event("user_event", where=lambda e, n=n: e.username == f"bob{n}")
        assert wait_until(lambda n=n: server_of(backends, f"bob{n}") is not None)
        if server_of(backends, f"bob{n}") is other:
            bob = conn
            break
        conn.close()
    assert bob is not None, "nginx never sent a client to the other backend"
    stopped.signal(signal.SIGTERM)
    assert wait_until(lambda: stopped.proc.poll() is not None, timeout=15)
    bob.say("said while alice moved")
    alice.expect("said while alice moved", timeout=REJOIN_WITHIN_S)
    alice.send("alice is back")
    assert texts(bob.messages(2))[-1] == "alice is back"
    assert alice.finish() == 0
    assert sum("said while alice moved" in line for line in alice.seen) == 1
    assert server_of([other], "alice") is other  # rejoined there, through nginx
    bob.close()


def test_real_client_through_nginx_survives_its_backend_killed(
    backends,
    nginx,  # noqa: F811
    pipe_client,
):
    """When the backend of a real client behind nginx is killed (SIGKILL), the client
    rejoins through nginx on the other backend once its name is freed, and nothing is
    lost: what was said meanwhile is shown once, and its own next line arrives."""
    proxy = nginx([s.address for s in backends])
    alice = pipe_client(proxy.address, "alice")
    alice.expect("alice joined")
    assert wait_until(lambda: server_of(backends, "alice") is not None)
    killed = server_of(backends, "alice")
    other = next(s for s in backends if s is not killed)
    bob = Conn(other.address, join_event("bob"))  # directly on the survivor
    bob.next_event("user_event", where=lambda e: e.username == "bob")
    killed.signal(signal.SIGKILL)
    bob.say("said while alice was cut off")
    alice.expect("said while alice was cut off", timeout=KILLED_REJOIN_WITHIN_S)
    alice.send("alice again")
    assert "alice again" in texts(bob.messages(2))
    assert alice.finish() == 0
    assert sum("said while alice was cut off" in line for line in alice.seen) == 1
    assert server_of([other], "alice") is other
    bob.close()
