"""Smaller defects of exposure: metrics on IPv6, a mismatched TLS key, typing floods."""

import subprocess
import sys
import time
import urllib.request

import pytest
from certs import self_signed
from clients import CLIENT_ENV
from conftest import ROOT, ServerProcess, free_port, wait_until
from prometheus_client import REGISTRY
from wire import join

import chat_pb2 as pb
from reader import TYPING_EVENTS_PER_S

pytestmark = pytest.mark.timeout(60)


def metrics_answer(host: str, port: int) -> bool:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as answer:
        return answer.status == 200 and b"chat_" in answer.read()


def test_metrics_listen_on_an_ipv6_host():
    """When the server listens on [::1], /metrics is served on [::1] too."""
    port = free_port()
    server = ServerProcess("--host", "[::1]", "--metrics-port", str(port))
    try:
        assert f"metrics at http://[::1]:{port}/metrics" in server.banner
        assert metrics_answer("[::1]", port)
    finally:
        server.stop()


def test_metrics_on_every_interface_answer_ipv4_and_ipv6():
    """When the server listens on [::], /metrics answers on 127.0.0.1 and on [::1]."""
    port = free_port()
    server = ServerProcess("--host", "[::]", "--metrics-port", str(port))
    try:
        assert metrics_answer("127.0.0.1", port) and metrics_answer("[::1]", port)
    finally:
        server.stop()


def test_tls_key_of_another_certificate_is_reported_as_such(tmp_path):
    """When --tls-key does not match --tls-cert, the one error line says so, not the port."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", "0",
         "--tls-cert", str(cert), "--tls-key", str(other_key)],
        capture_output=True, text=True, timeout=30, env=CLIENT_ENV, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "does not match the certificate" in result.stderr
    assert "bind" not in result.stderr and "Traceback" not in result.stderr


def typing_dropped() -> float:
    return REGISTRY.get_sample_value("chat_refusals_total", {"reason": "typing"}) or 0.0


def test_typing_flood_is_dropped_by_the_reader_before_the_hub(server):
    """When a client sends 5,000 typing events at once, its reader drops all but a few a
    second, counted in chat_refusals_total{reason="typing"}; its message still arrives."""
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    before = typing_dropped()
    started = time.monotonic()
    for n in range(5000):
        alice.typing(pb.TYPING_START if n % 2 == 0 else pb.TYPING_STOP)
    alice.say("after the flood")
    assert bob.next_event("chat_message").chat_message.message == "after the flood"
    passed_at_most = TYPING_EVENTS_PER_S * (time.monotonic() - started + 2)
    alice.close()
    assert wait_until(lambda: typing_dropped() - before >= 5000 - passed_at_most)
    bob.close()
