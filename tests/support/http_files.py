#!/usr/bin/env python3
"""A real HTTP file server on 127.0.0.1 for haul's artifact tests: serves the files of a directory with an ETag
(the sha256 of the bytes), optionally requires a bearer token, and can be told to answer rate limits.

usage: http_files.py ROOT PORT_FILE LOG_FILE LIMITED RETRY_AFTER [TOKEN]
  LIMITED      how many requests to answer 429 before serving (-1: every one)
  RETRY_AFTER  the Retry-After header's seconds
  TOKEN        when given, requests must carry `Authorization: Bearer TOKEN` (else 401)
Writes the chosen port to PORT_FILE and one line per request ("METHOD PATH STATUS") to LOG_FILE.
With HTTP_FILES_SLOW_MS set, bodies are sent 16 KiB at a time with that many milliseconds between pieces
(a download a test can SIGKILL haul in the middle of).
"""
import hashlib
import http.server
import os
import sys
import threading
import time

root, port_file, log_file = sys.argv[1], sys.argv[2], sys.argv[3]
limited, retry_after = int(sys.argv[4]), sys.argv[5]
token = sys.argv[6] if len(sys.argv) > 6 else None
slow = int(os.environ.get("HTTP_FILES_SLOW_MS", "0")) / 1000.0
lock = threading.Lock()
count = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def log(self, status):
        with lock, open(log_file, "a") as f:
            f.write(f"{self.command} {self.path} {status}\n")

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            try:
                if slow and len(body) > 16384:
                    for i in range(0, len(body), 16384):
                        self.wfile.write(body[i:i + 16384])
                        self.wfile.flush()
                        time.sleep(slow)
                else:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (a test killed it): nothing to tell
        self.log(status)

    def serve(self):
        global count
        with lock:
            count += 1
            n = count
        if limited < 0 or n <= limited:
            body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
            return self.answer(429, body, [("Retry-After", retry_after), ("Content-Type", "application/json")])
        if token is not None and self.headers.get("Authorization", "") != f"Bearer {token}":
            return self.answer(401, b"unauthorized")
        path = os.path.normpath(os.path.join(root, self.path.lstrip("/").split("?")[0]))
        if not path.startswith(os.path.abspath(root)) or not os.path.isfile(path):
            return self.answer(404, b"not found")
        with open(path, "rb") as f:
            data = f.read()
        etag = '"' + hashlib.sha256(data).hexdigest() + '"'
        self.answer(200, data, [("ETag", etag), ("Content-Type", "application/octet-stream")])

    do_GET = serve
    do_HEAD = serve


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
