#!/usr/bin/env python3
"""Stalled consumers for the memory benchmark (docs/performance.md): opens N
connections to a broker, pipelines PER pull requests (1024 messages each) on
topic `stall` per connection, never reads a response, and holds the sockets
for SECS seconds.  Usage: stall_consumers.py BROKER_ADDR N PER SECS"""
import socket, struct, sys, time
addr = sys.argv[1].split(':'); n_conn = int(sys.argv[2]); per = int(sys.argv[3])
def str16(s): b = s.encode(); return struct.pack('>H', len(b)) + b
socks = []
for c in range(n_conn):
    s = socket.create_connection((addr[0], int(addr[1])))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for i in range(per):
        body = str16('stall') + struct.pack('>IQII', c % 8, 0, 1024, 0) + str16('')
        frame = struct.pack('>BBHII', 1, 0, 11, i + 1, 0) + body
        s.sendall(struct.pack('>I', len(frame)) + frame)
    socks.append(s)
time.sleep(float(sys.argv[4]))
