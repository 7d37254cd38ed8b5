"""A registry token service, as the registry v2 protocol's token authentication wants one
(the role Docker Hub's auth.docker.io plays): GET /token?service=S&scope=repository:NAME:ACTIONS
with HTTP Basic credentials answers {"token": JWT}, the JWT signed RS256 by `openssl dgst` with
the key whose certificate the registry trusts (its `rootcertbundle`), the certificate in the
header's x5c. Wrong or missing credentials: 401. Standard library and the openssl program only.

usage: token_server.py PORT KEY.pem CERT.pem ISSUER USER PASSWORD
"""

import base64
import http.server
import json
import subprocess
import sys
import time
import urllib.parse

PORT, KEY, CERT, ISSUER, USER, PASSWORD = sys.argv[1:7]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def certificate_der() -> bytes:
    pem = open(CERT).read()
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    return base64.b64decode(body)


def token(service: str, scopes: list) -> str:
    access = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        access.append({"type": kind, "name": name, "actions": actions.split(",")})
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(certificate_der()).decode()]}
    claims = {
        "iss": ISSUER,
        "sub": USER,
        "aud": service,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": str(now) + str(len(access)),
        "access": access,
    }
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", KEY],
        input=signing_input.encode(),
        capture_output=True,
        check=True,
    ).stdout
    return signing_input + "." + b64url(signature)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path != "/token":
            self.send_error(404)
            return
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="reach-test-token"')
            self.end_headers()
            return
        query = urllib.parse.parse_qs(url.query)
        body = json.dumps({"token": token(query.get("service", [""])[0], query.get("scope", []))})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(PORT)), Handler).serve_forever()
