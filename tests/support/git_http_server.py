#!/usr/bin/env python3
"""A real git smart-HTTP server on 127.0.0.1 for haul's tests: `git http-backend` behind Python's HTTP server,
which can be told to answer rate limits first.

usage: git_http_server.py PROJECT_ROOT PORT_FILE LOG_FILE LIMITED [RETRY_AFTER]
  LIMITED      how many requests to answer 429 before serving (-1: every one)
  RETRY_AFTER  the Retry-After header's seconds (default 2)
Writes the chosen port to PORT_FILE and one line per request to LOG_FILE.
"""
import http.server
import os
import subprocess
import sys
import threading

root, port_file, log_file, limited = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
retry_after = sys.argv[5] if len(sys.argv) > 5 else "2"
lock = threading.Lock()
count = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def serve(self):
        global count
        with lock:
            count += 1
            n = count
        data = self.body()
        throttled = limited < 0 or n <= limited
        with open(log_file, "a") as f:
            f.write(f"{n} {self.command} {self.path} {'429' if throttled else 'ok'}\n")
        if throttled:
            payload = b"rate limit exceeded\n"
            self.send_response(429)
            self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(data)),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "REMOTE_ADDR": "127.0.0.1",
        }
        out = subprocess.run(["git", "http-backend"], input=data, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.split(b"\r\n"):
            if b":" not in line:
                continue
            k, v = line.split(b":", 1)
            if k.strip().lower() == b"status":
                status = int(v.split()[0])
            else:
                headers.append((k.strip().decode(), v.strip().decode()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = serve
    do_POST = serve


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
