#!/usr/bin/env python3
"""kkclient.py: a knockknock client for authenticated knocks (wire format version 2), in Python
with the standard library only. It does what `knockknock knock --secret-file FILE HOST PORTS`
does:

  1. HELLO to the first port: key id, client time, a random client nonce, MAC;
  2. waits for the CHALLENGE from that port and checks its MAC against the hello's nonce
     (the hello is resent every 0.5 s until an answer or --wait);
  3. one KNOCK to each port, in order, bound to the server's nonce and to the address the
     server saw;
  4. waits for the CONFIRM from the last port and checks its MAC against the server's nonce.

It prints what was unlocked and the address the server saw, and exits 0; or it prints one line
on stderr and exits 1 (2 for bad usage). `kkclient.py --selftest` checks the encoders against
the test vector that knockknock's Go tests also check (TestAuthTestVector).

    kkclient.py --secret-file ~/.knockknock/key HOST 7000 9000 8000
    kkclient.py --secret-file KEY -p 7000,9000,8000 --wait 3 HOST

The key file is the one `knockknock keygen FILE` (or `keygen --user NAME FILE`) wrote: its bytes,
white space around them removed, are the HMAC key.
"""

import argparse
import hashlib
import hmac
import ipaddress
import os
import socket
import struct
import sys
import time

WIRE_LEN = 64
VERSION = 2
MAC_AT = 48
MAC_LEN = 16
KEY_ID_LABEL = b"knockknock key id"
HELLO, CHALLENGE, KNOCK, CONFIRM = b"H", b"C", b"K", b"A"
STATUS_UNLOCKED, STATUS_HOOK_FAILED = 0, 1
RESEND = 0.5  # seconds between hellos while no challenge comes


class Failure(Exception):
    """One line for the user; exit 1."""


def mac(key, data):
    """The first 16 bytes of HMAC-SHA256."""
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_LEN]


def key_id(key):
    return hashlib.sha256(KEY_ID_LABEL + key).digest()[:8]


def header(typ):
    return b"KK" + bytes([VERSION]) + typ


def mapped(addr):
    """An address as the 16 bytes of the wire: IPv4 as ::ffff:a.b.c.d."""
    a = ipaddress.ip_address(addr)
    if a.version == 4:
        a = ipaddress.IPv6Address("::ffff:" + str(a))
    return a.packed


def unmapped(b16):
    a = ipaddress.IPv6Address(b16)
    return str(a.ipv4_mapped or a)


def encode_hello(key, dst_port, unix_milli, nonce_c):
    body = key_id(key) + struct.pack(">Q", unix_milli) + nonce_c  # bytes 4-35
    m = mac(key, HELLO + struct.pack(">H", dst_port) + body)
    return header(HELLO) + body + bytes(12) + m


def encode_challenge(key, nonce_c, nonce_s, seen_addr, seen_port):
    """The server's side; here for the self-test only."""
    body = nonce_s + mapped(seen_addr) + struct.pack(">H", seen_port)  # bytes 4-37
    return header(CHALLENGE) + body + bytes(10) + mac(key, CHALLENGE + nonce_c + body)


def decode_challenge(key, b, nonce_c):
    """(server nonce, seen address, seen port), or None when b is not this hello's challenge."""
    if len(b) != WIRE_LEN or b[:4] != header(CHALLENGE):
        return None
    if not hmac.compare_digest(mac(key, CHALLENGE + nonce_c + b[4:38]), b[MAC_AT:]):
        return None
    return b[4:20], unmapped(b[20:36]), struct.unpack(">H", b[36:38])[0]


def encode_knock(key, pos, dst_port, nonce_s, seen_addr):
    m = mac(key, KNOCK + bytes([pos]) + struct.pack(">H", dst_port) + nonce_s + mapped(seen_addr))
    return header(KNOCK) + key_id(key) + bytes([pos]) + bytes(35) + m


def encode_confirm(key, nonce_s, status, door):
    """The server's side; here for the self-test only."""
    name = door.encode()[:32]
    body = bytes([status, len(name)]) + name.ljust(32, b"\0")  # bytes 4-37
    return header(CONFIRM) + body + bytes(10) + mac(key, CONFIRM + nonce_s + body)


def decode_confirm(key, b, nonce_s):
    """(status, door name), or None when b is not this attempt's confirmation."""
    if len(b) != WIRE_LEN or b[:4] != header(CONFIRM) or b[5] > 32:
        return None
    if not hmac.compare_digest(mac(key, CONFIRM + nonce_s + b[4:38]), b[MAC_AT:]):
        return None
    return b[4], b[6:6 + b[5]].decode("utf-8", "replace")


# The test vector (README, Security; TestAuthTestVector checks the Go encoders against it).
VECTOR = {
    "key": b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    "time": 1700000000000,
    "nonce_c": bytes(range(0x10, 0x20)),
    "nonce_s": bytes(range(0xA0, 0xB0)),
    "seen": ("192.0.2.2", 40000),
    "ports": (7000, 9000, 8000),
    "door": "default",
    "key_id": "887af9f0faf85cb5",
    "hello": "4b4b0248887af9f0faf85cb50000018bcfe56800101112131415161718191a1b1c1d1e1f"
             "00000000000000000000000037dfe8a5159e09fca320b865dfbddbab",
    "challenge": "4b4b0243a0a1a2a3a4a5a6a7a8a9aaabacadaeaf00000000000000000000ffffc0000202"
                 "9c4000000000000000000000dc52853ec6b216247ad4fc01a943e86e",
    "knocks": (
        "4b4b024b887af9f0faf85cb5000000000000000000000000000000000000000000000000"
        "000000000000000000000000bb076f0139f1bc174f462cfe9accfa75",
        "4b4b024b887af9f0faf85cb5010000000000000000000000000000000000000000000000"
        "000000000000000000000000c14d1fcdcdefe19bab5e51f903c86d0a",
        "4b4b024b887af9f0faf85cb5020000000000000000000000000000000000000000000000"
        "000000000000000000000000bf046b7580c520556cabaa3d4587ea05",
    ),
    "confirm": "4b4b0241000764656661756c7400000000000000000000000000000000000000000000"
               "0000000000000000000000000093c8e1e225010a2e01970cc725be8618",
}


def selftest():
    v = VECTOR
    key, nc, ns = v["key"], v["nonce_c"], v["nonce_s"]
    seen_addr, seen_port = v["seen"]
    got = {
        "key_id": key_id(key).hex(),
        "hello": encode_hello(key, v["ports"][0], v["time"], nc).hex(),
        "challenge": encode_challenge(key, nc, ns, seen_addr, seen_port).hex(),
        "knocks": tuple(encode_knock(key, i, p, ns, seen_addr).hex() for i, p in enumerate(v["ports"])),
        "confirm": encode_confirm(key, ns, STATUS_UNLOCKED, v["door"]).hex(),
    }
    bad = [name for name in got if got[name] != v[name]]
    # The decoders accept the vector's messages, and refuse them with any one bit flipped in
    # the header or in the authenticated bytes (4-37 and the MAC; bytes 38-47 are padding,
    # which no MAC covers).
    chal, conf = bytes.fromhex(v["challenge"]), bytes.fromhex(v["confirm"])
    if decode_challenge(key, chal, nc) != (ns, seen_addr, seen_port):
        bad.append("decode_challenge")
    if decode_confirm(key, conf, ns) != (STATUS_UNLOCKED, v["door"]):
        bad.append("decode_confirm")
    for i in [i for i in range(WIRE_LEN * 8) if not 38 <= i // 8 < MAC_AT]:
        c, a = bytearray(chal), bytearray(conf)
        c[i // 8] ^= 1 << (i % 8)
        a[i // 8] ^= 1 << (i % 8)
        if decode_challenge(key, bytes(c), nc) is not None or decode_confirm(key, bytes(a), ns) is not None:
            bad.append("a flipped bit at %d accepted" % i)
            break
    if bad:
        for name in bad:
            if name in got:
                print("kkclient: selftest: %s is %s, want %s" % (name, got[name], v[name]), file=sys.stderr)
            else:
                print("kkclient: selftest: %s" % name, file=sys.stderr)
        return 1
    print("selftest ok: key id, hello, challenge, 3 knocks and confirm match the test vector")
    return 0


def read_key(path):
    try:
        with open(path, "rb") as f:
            key = f.read(64 << 10).strip()
    except OSError as e:
        raise Failure("cannot read the key file %s: %s" % (path, e.strerror or e))
    if len(key) < 16:
        raise Failure("%s holds %d bytes: a key has at least 16 (make one with knockknock keygen)" % (path, len(key)))
    return key


def parse_ports(words):
    ports = []
    for w in words:
        for p in w.split(","):
            p = p.strip()
            if p.endswith(":udp"):
                p = p[:-4]
            if not p.isdigit() or not 1 <= int(p) <= 65535:
                raise ValueError("%r is not a UDP port (1-65535)" % p)
            ports.append(int(p))
    if not 1 <= len(ports) <= 64:
        raise ValueError("a sequence has 1 to 64 ports")
    return ports


def receive(sock, want, deadline, accept):
    """Read datagrams until one from want (address, port) is accepted or the deadline passes."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data, src = sock.recvfrom(2048)
        except socket.timeout:
            return None
        except OSError:
            continue  # an ICMP error for an earlier datagram
        host = src[0].split("%")[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        if host == want[0] and src[1] == want[1]:
            got = accept(data)
            if got is not None:
                return got


def knock(key, host, ports, family, wait, delay):
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise Failure("cannot resolve %r: %s" % (host, e.strerror))
    fam, _, _, _, sockaddr = infos[0]
    dst = sockaddr[0]
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        nonce_c = os.urandom(16)
        hello = encode_hello(key, ports[0], int(time.time() * 1000), nonce_c)
        first, last = (dst, ports[0]), (dst, ports[-1])
        deadline = time.monotonic() + wait
        chal = None
        while chal is None:
            try:
                sock.sendto(hello, first)
            except OSError as e:
                raise Failure("hello to %s port %d failed: %s" % (dst, ports[0], e.strerror or e))
            chal = receive(sock, first, min(deadline, time.monotonic() + RESEND),
                           lambda b: decode_challenge(key, b, nonce_c))
            if chal is None and time.monotonic() >= deadline:
                raise Failure("no answer from %s port %d within %gs: the key is not in the server's keys (or was revoked), "
                              "the clocks differ by more than the server's --max-skew, a firewall drops UDP, "
                              "or the server is not running with keys" % (dst, ports[0], wait))
        nonce_s, seen_addr, seen_port = chal
        for pos, port in enumerate(ports):
            if pos > 0 and delay > 0:
                time.sleep(delay)
            try:
                sock.sendto(encode_knock(key, pos, port, nonce_s, seen_addr), (dst, port))
            except OSError as e:
                raise Failure("knock on %s port %d failed: %s" % (dst, port, e.strerror or e))
        conf = receive(sock, last, time.monotonic() + wait, lambda b: decode_confirm(key, b, nonce_s))
        if conf is None:
            raise Failure("no confirmation from %s within %gs: these ports are no door's sequence, a knock was lost, "
                          "the hook takes longer than --wait, or this address is banned" % (dst, wait))
        status, door = conf
        if status != STATUS_UNLOCKED:
            raise Failure("%s: the server's hook failed to open door %s for %s (see the server's log)" % (dst, door, seen_addr))
        return dst, door, seen_addr, seen_port
    finally:
        sock.close()


class Parser(argparse.ArgumentParser):
    def error(self, message):
        print("kkclient: %s (see kkclient.py --help)" % message, file=sys.stderr)
        sys.exit(2)


def main(argv):
    p = Parser(prog="kkclient.py", description="knockknock authenticated knock client (wire version 2)")
    p.add_argument("--selftest", action="store_true", help="check the encoders against the test vector and exit")
    p.add_argument("--secret-file", "--key-file", dest="key_file", metavar="FILE", help="the key (knockknock keygen)")
    p.add_argument("-p", "--ports", metavar="LIST", help="the sequence, e.g. 7000,9000,8000 (or give PORT...)")
    p.add_argument("--wait", type=float, default=3.0, metavar="SECONDS", help="how long to wait for each answer (3)")
    p.add_argument("-d", "--delay", type=float, default=0.01, metavar="SECONDS", help="pause between knocks (0.01)")
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("-4", dest="family", action="store_const", const=socket.AF_INET, help="IPv4 only")
    fam.add_argument("-6", dest="family", action="store_const", const=socket.AF_INET6, help="IPv6 only")
    p.add_argument("host", nargs="?", metavar="HOST")
    p.add_argument("port", nargs="*", metavar="PORT")
    a = p.parse_args(argv)
    if a.selftest:
        return selftest()
    try:
        if not a.key_file or not a.host:
            raise ValueError("usage: kkclient.py --secret-file FILE HOST PORT... (or -p LIST)")
        ports = parse_ports(a.port or ([a.ports] if a.ports else []))
        if not 0.01 <= a.wait <= 600 or not 0 <= a.delay <= 60:
            raise ValueError("--wait is 0.01 to 600 seconds, --delay 0 to 60")
    except ValueError as e:
        print("kkclient: %s" % e, file=sys.stderr)
        return 2
    try:
        dst, door, seen_addr, seen_port = knock(read_key(a.key_file), a.host, ports, a.family or 0, a.wait, a.delay)
    except Failure as e:
        print("kkclient: %s" % " ".join(str(e).split()), file=sys.stderr)
        return 1
    print("unlocked door %s on %s for %s (the address the server sees; source port %d)" % (door, dst, seen_addr, seen_port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
