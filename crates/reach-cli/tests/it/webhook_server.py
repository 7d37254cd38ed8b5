"""An HTTPS auth webhook for the gateway's tests: CPython's http.server over its ssl module
(OpenSSL), so the gateway's TLS client is checked against another implementation.

    python3 webhook_server.py CERT KEY [CLIENT_CA]

Listens on 127.0.0.1 (a free port), prints `PORT <n>`, then one JSON line per request it
answers: the client's port (one port for several requests = a reused connection), the path,
the Authorization header and the client certificate's common name. Answers every POST with
200 {"allow": true}. With CLIENT_CA, a client without a certificate signed by it is refused
during the handshake.
"""
import http.server
import json
import ssl
import sys


class Hook(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be seen

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode("utf-8", "replace")
        cert = self.connection.getpeercert() or {}
        subject = dict(pair[0] for pair in cert.get("subject", ()))
        record = {
            "client_port": self.client_address[1],
            "path": self.path,
            "authorization": self.headers.get("Authorization"),
            "client_cn": subject.get("commonName"),
            "body": body,
        }
        print(json.dumps(record), flush=True)
        answer = b'{"allow": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def main():
    cert, key = sys.argv[1], sys.argv[2]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if len(sys.argv) > 3:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(sys.argv[3])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
