#!/usr/bin/python3
"""The lab's DNS server: a tiny UDP responder with a fixed table.

usage: dns_server.py ADDR PORT LOGFILE
A queries for the names below get their address; AAAA (and any other type) of
a known name: empty NOERROR; an unknown name: NXDOMAIN. Every query is logged
as "name TYPE" (name lower case, no trailing dot), one per line.
"""
import socket
import struct
import sys

TABLE = {
    "allowed.test": "203.0.113.10",
    "www.allowed.test": "203.0.113.10",
    "evil.allowed.test": "203.0.113.11",
    "other.test": "203.0.113.11",
    "private.test": "10.99.0.10",
}
TYPES = {1: "A", 28: "AAAA", 5: "CNAME", 15: "MX", 16: "TXT", 33: "SRV", 65: "HTTPS", 255: "ANY"}


def parse_question(data):
    labels, i = [], 12
    while True:
        n = data[i]
        if n == 0:
            i += 1
            break
        if n & 0xC0:
            raise ValueError("compressed name in question")
        labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype, qclass = struct.unpack("!HH", data[i:i + 4])
    return ".".join(labels), qtype, qclass, i + 4


def answer(data):
    ident, flags, qd = struct.unpack("!HHH", data[:6])
    if flags & 0x8000 or qd != 1:
        return None, None
    name, qtype, qclass, end = parse_question(data)
    key = name.lower().rstrip(".")
    rd = flags & 0x0100
    addr = TABLE.get(key)
    rcode = 0 if addr is not None else 3
    answers = b""
    count = 0
    if addr is not None and qtype == 1 and qclass == 1:
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(addr)
        count = 1
    header = struct.pack("!HHHHHH", ident, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1, count, 0, 0)
    return header + data[12:end] + answers, "%s %s" % (key, TYPES.get(qtype, str(qtype)))


def main(addr, port, log_path):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    log = open(log_path, "a", buffering=1)
    while True:
        data, peer = s.recvfrom(4096)
        try:
            reply, line = answer(data)
        except Exception as e:  # malformed: log and ignore
            log.write("? malformed %r\n" % (e,))
            continue
        if reply is None:
            continue
        log.write(line + "\n")
        s.sendto(reply, peer)


if __name__ == "__main__":
    main(*sys.argv[1:4])
