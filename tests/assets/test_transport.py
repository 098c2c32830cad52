"""The readinto transport behind httpx: same answers as httpx's own transport, over HTTP and HTTPS."""

from __future__ import annotations

import datetime
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flowmas.assets.transport import ReadintoTransport
from tests.servers.http_files import drop_after

BODY = bytes(range(256)) * 4096


def test_body_headers_and_keep_alive_match_httpx(http_server):
    http_server.add("/f.bin", BODY)
    with httpx.Client(transport=ReadintoTransport()) as ours, httpx.Client() as theirs:
        a = ours.get(http_server.url_for("/f.bin"), headers={"X-Probe": "1"})
        b = theirs.get(http_server.url_for("/f.bin"))
        ours.get(http_server.url_for("/f.bin"))
    assert a.status_code == b.status_code == 200
    assert a.content == b.content == BODY
    assert a.headers["etag"] == b.headers["etag"] and a.http_version == "HTTP/1.1"
    assert http_server.requests_for("/f.bin")[0].headers["x-probe"] == "1"


def test_readinto_fills_caller_buffers(http_server):
    http_server.add("/f.bin", BODY)
    buffer = bytearray(100_000)
    transport = ReadintoTransport()
    with httpx.Client() as client:  # builds the request; the transport answers it directly
        response = transport.handle_request(client.build_request("GET", http_server.url_for("/f.bin")))
        got = bytearray()
        while n := response.stream.readinto(memoryview(buffer)):
            got += buffer[:n]
        response.close()
    assert bytes(got) == BODY


def test_truncated_body_is_a_short_read_and_the_connection_is_not_reused(http_server):
    http_server.add("/f.bin", BODY)
    http_server.script("/f.bin", drop_after(1000))
    with httpx.Client(transport=ReadintoTransport()) as client:
        with client.stream("GET", http_server.url_for("/f.bin")) as response:
            got = b"".join(response.iter_raw())
        assert len(got) == 1000  # the caller compares with Content-Length
        assert client.get(http_server.url_for("/f.bin")).content == BODY


def test_server_closing_an_idle_connection_is_retried_transparently(http_server):
    http_server.add("/f.bin", BODY)
    transport = ReadintoTransport()
    with httpx.Client(transport=transport) as client:
        assert client.get(http_server.url_for("/f.bin")).content == BODY
        for conn in transport._idle.values():
            conn.sock.shutdown(2)  # what a server's idle timeout looks like from here
        assert client.get(http_server.url_for("/f.bin")).content == BODY


def test_refused_connection_is_an_httpx_connect_error():
    with httpx.Client(transport=ReadintoTransport()) as client, pytest.raises(httpx.ConnectError):
        client.get("http://127.0.0.1:9/")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}/f.bin", cert_file
    server.shutdown()
    server.server_close()


def test_https_verifies_the_certificate(tls_server):
    url, cert_file = tls_server
    trusting = ssl.create_default_context(cafile=str(cert_file))
    with httpx.Client(transport=ReadintoTransport(verify=trusting)) as client:
        assert client.get(url).content == BODY
    with httpx.Client(transport=ReadintoTransport()) as client, pytest.raises(httpx.ConnectError, match="TLS"):
        client.get(url)
