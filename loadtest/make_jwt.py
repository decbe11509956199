#!/usr/bin/env python3
"""Signs RS256 JWTs for the load-test suite with the openssl CLI (no Python
crypto package needed): make_jwt.py KEY.pem SUBJECT [SUBJECT...] prints one
token per subject, each valid for a day."""
import base64
import json
import subprocess
import sys
import time


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key: str, subject: str) -> str:
    now = int(time.time())
    header = b64(json.dumps({"alg": "RS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"sub": subject, "iat": now, "exp": now + 86400, "scope": "read", "plan": "gold"}
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    message = f"{header}.{payload}".encode()
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key], input=message, capture_output=True, check=True
    ).stdout
    return f"{header}.{payload}.{b64(signature)}"


if __name__ == "__main__":
    for subject in sys.argv[2:]:
        print(sign(sys.argv[1], subject))
