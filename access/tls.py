"""TLS for the server: its certificate and key, checked before gRPC sees them.

server.py calls `tls_credentials` when `--tls-cert` and `--tls-key` are
given; the server then listens with TLS only. A client that disagrees
about TLS fails its handshake, which gRPC reports to it as UNAVAILABLE.
"""

import ssl
from pathlib import Path

import grpc


class TLSFilesError(Exception):
    """The certificate or key cannot serve TLS; the message says which and why."""


def tls_credentials(cert_path: Path, key_path: Path) -> grpc.ServerCredentials:
    """The server's certificate chain and private key, from PEM files (`make cert`).

    Checked here with the standard library's ssl first: gRPC takes any bytes
    and fails later, at bind time, blaming the port ("Failed to bind").
    """
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as error:
        if "KEY_VALUES_MISMATCH" in str(error):
            raise TLSFilesError(
                f"the TLS key {key_path} does not match the certificate {cert_path}"
            ) from None
        raise TLSFilesError(
            f"cannot use {cert_path} and {key_path} for TLS: not a PEM certificate and its key"
        ) from None
    return grpc.ssl_server_credentials([(key_path.read_bytes(), cert_path.read_bytes())])
