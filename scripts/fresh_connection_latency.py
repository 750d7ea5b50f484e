#!/usr/bin/env python3
# Time per request through Sluice when every request needs a new upstream connection (the
# upstream closes each one), with the upstream named by HOST (an IP, or a name such as
# localhost): what looking an upstream name up costs a fresh connection. Prints mean, p50 and p99
# of N sequential requests (the first 100 left out).
#   scripts/fresh_connection_latency.py target/release/sluice localhost [N]
#   scripts/fresh_connection_latency.py target/release/sluice 127.0.0.1 [N]
import socket, subprocess, sys, threading, time, os, statistics, tempfile
binary, host = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
up = socket.socket(); up.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
up.bind(("127.0.0.1", 0)); up.listen(512); uport = up.getsockname()[1]
def serve():
    while True:
        c, _ = up.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d: break
            buf += d
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        c.close()
threading.Thread(target=serve, daemon=True).start()
s = socket.socket(); s.bind(("127.0.0.1", 0)); sport = s.getsockname()[1]; s.close()
cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
cfg.write(f"listen:\n  - addr: 127.0.0.1:{sport}\nserver:\n  threads: 2\nupstreams:\n  up:\n    url: http://{host}:{uport}\nroutes:\n  - path_prefix: /\n    upstream: up\n    provider: none\n")
cfg.close()
p = subprocess.Popen([binary, "-c", cfg.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(200):
    try:
        c = socket.create_connection(("127.0.0.1", sport)); break
    except OSError: time.sleep(0.02)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
for i in range(N):
    t = time.perf_counter()
    c.sendall(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
    buf = b""
    while not buf.endswith(b"{}"):
        d = c.recv(65536)
        if not d: raise SystemExit("closed: %r" % buf)
        buf += d
    times.append(time.perf_counter() - t)
    assert buf.startswith(b"HTTP/1.1 200"), buf
p.terminate(); p.wait()
times = times[100:]
print(f"{binary.split('/')[-1]:>14} {host:>10}: mean {statistics.mean(times)*1e6:7.0f} us  p50 {statistics.median(times)*1e6:7.0f} us  p99 {sorted(times)[int(len(times)*.99)]*1e6:7.0f} us")
