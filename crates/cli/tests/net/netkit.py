# Test servers, a deliberately naive proxy (for the controls) and raw protocol clients
# for crates/cli/tests/network.rs. Loopback only. Python 3 standard library only.
#
#   serve NAME LOGFILE PORTFILE [--dir D] [--tls CERT KEY] [--bind ADDR]
#       HTTP server; logs every accepted connection ({"ev":"conn"}) before reading a
#       byte, and every request ({"ev":"req","path","host","method"}) to LOGFILE.
#   naive-proxy LOGFILE PORTFILE PINS.json MODE
#       HTTP forward + CONNECT + SOCKS5 on one port with NO policy at all: what a proxy
#       that is bypassed would do. MODE "host" picks the destination from the Host header
#       (when present), "line" from the request line. SOCKS names are cut at the first
#       NUL (C-string semantics). Names resolve through PINS, then "*.test" -> 127.0.0.1.
#   socks-raw HOSTHEX PORT PATH    SOCKS5 CONNECT through $ALL_PROXY with raw host bytes
#   http-raw HEX                   send raw bytes to the $HTTP_PROXY proxy, print the status
#   tcp HOST PORT                  plain TCP connect + one line
#   make-index DIR                 a PEP 503 simple index with one hand-built wheel
#
# Servers exit by themselves when PORTFILE disappears (the scenario dir was removed),
# when their parent changes, or after 10 minutes.
import base64, hashlib, json, os, socket, ssl, sys, threading, time, urllib.parse, zipfile
import http.server, socketserver, functools

LOCK = threading.Lock()


def log(logfile, **kv):
    kv["t"] = time.time()
    with LOCK:
        with open(logfile, "a") as f:
            f.write(json.dumps(kv) + "\n")


def watchdog(portfile):
    ppid = os.getppid()
    start = time.time()

    def run():
        while True:
            time.sleep(0.3)
            if (not os.path.exists(portfile) or os.getppid() != ppid
                    or time.time() - start > 600):
                os._exit(0)

    threading.Thread(target=run, daemon=True).start()


def publish_port(portfile, port):
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, portfile)


# ------------------------------------------------------------------ server
def serve(argv):
    name, logf, portfile = argv[0], argv[1], argv[2]
    rest = argv[3:]
    d = tls = None
    bind = "127.0.0.1"
    i = 0
    while i < len(rest):
        if rest[i] == "--dir":
            d = rest[i + 1]; i += 2
        elif rest[i] == "--tls":
            tls = (rest[i + 1], rest[i + 2]); i += 3
        elif rest[i] == "--bind":
            bind = rest[i + 1]; i += 2
        else:
            raise SystemExit("bad arg " + rest[i])
    ctx = None
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls[0], tls[1])

    class H(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def note(self):
            log(logf, ev="req", server=name, method=self.command, path=self.path,
                host=self.headers.get("Host"))

        def do_GET(self):
            self.note()
            if d is not None:
                return super().do_GET()
            body = ("hello from %s path=%s\n" % (name, self.path)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self):
            self.note()
            return super().do_HEAD()

    handler = functools.partial(H, directory=d) if d else H

    class S(http.server.ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET

        def get_request(self):
            sock, addr = self.socket.accept()
            log(logf, ev="conn", server=name, peer=str(addr[0]))
            if ctx is not None:
                sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            return sock, addr

        def handle_error(self, request, client_address):
            pass

    srv = S((bind, 0), handler)
    watchdog(portfile)
    publish_port(portfile, srv.server_address[1])
    srv.serve_forever()


# ------------------------------------------------------------------ naive proxy
def relay(a, b):
    def pump(x, y):
        try:
            while True:
                data = x.recv(65536)
                if not data:
                    break
                y.sendall(data)
        except OSError:
            pass
        for s in (y,):
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    t = threading.Thread(target=pump, args=(b, a), daemon=True)
    t.start()
    pump(a, b)
    t.join(30)
    a.close()
    b.close()


def naive_proxy(argv):
    logf, portfile, pinsf, mode = argv
    pins = json.load(open(pinsf))

    def resolve(host):
        h = host.lower().rstrip(".")
        if h in pins:
            v = pins[h]
            return v if isinstance(v, list) else [v]
        if h.endswith(".test"):
            return ["127.0.0.1"]
        return [ai[4][0] for ai in socket.getaddrinfo(h, None, type=socket.SOCK_STREAM)]

    def dial(host, port):
        last = None
        for ip in resolve(host):
            try:
                fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
                s = socket.socket(fam, socket.SOCK_STREAM)
                s.settimeout(10)
                s.connect((ip, port))
                s.settimeout(None)
                return s
            except OSError as e:
                last = e
        raise last or OSError("no address")

    def split_hp(hp, default):
        hp = hp.strip()
        if hp.startswith("["):
            h, _, p = hp[1:].partition("]")
            p = p.lstrip(":")
        elif hp.count(":") == 1:
            h, p = hp.split(":")
        else:
            h, p = hp, ""
        return h, int(p) if p else default

    def socks(c):
        c.recv(1)
        n = c.recv(1)[0]
        c.recv(n)
        c.sendall(b"\x05\x00")
        hdr = c.recv(4)
        atyp = hdr[3]
        if atyp == 3:
            ln = c.recv(1)[0]
            raw = b""
            while len(raw) < ln:
                raw += c.recv(ln - len(raw))
            host = raw.split(b"\0")[0].decode("latin-1")
        elif atyp == 1:
            host = socket.inet_ntop(socket.AF_INET, c.recv(4))
        else:
            host = socket.inet_ntop(socket.AF_INET6, c.recv(16))
        port = int.from_bytes(c.recv(2), "big")
        log(logf, ev="socks", host=host, port=port)
        try:
            u = dial(host, port)
        except OSError:
            c.sendall(b"\x05\x04\x00\x01" + bytes(6))
            return
        c.sendall(b"\x05\x00\x00\x01" + bytes(6))
        relay(c, u)

    def http(c):
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                return
            buf += d
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, ver = lines[0].split(" ", 2)
        headers = [l for l in lines[1:] if l]
        hosth = None
        for l in headers:
            k, _, v = l.partition(":")
            if k.strip().lower() == "host":
                hosth = v.strip()
        if method == "CONNECT":
            line_hp = target
            path = None
        else:
            u = urllib.parse.urlsplit(target)
            line_hp = u.netloc
            path = (u.path or "/") + ("?" + u.query if u.query else "")
        hp = hosth if (mode == "host" and hosth) else line_hp
        host, port = split_hp(hp, 443 if method == "CONNECT" else 80)
        log(logf, ev="http", method=method, host=host, port=port)
        try:
            up = dial(host, port)
        except OSError:
            c.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        if method == "CONNECT":
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if body:
                up.sendall(body)
        else:
            keep = [l for l in headers if not l.lower().startswith("proxy-")]
            req = "%s %s %s\r\n%s\r\n\r\n" % (method, path, ver, "\r\n".join(keep))
            up.sendall(req.encode("latin-1") + body)
        relay(c, up)

    def handle(c):
        try:
            first = c.recv(1, socket.MSG_PEEK)
            if first == b"\x05":
                socks(c)
            elif first:
                http(c)
        except Exception as e:  # a control proxy: never die, just log
            log(logf, ev="error", error=repr(e))
        finally:
            try:
                c.close()
            except OSError:
                pass

    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    watchdog(portfile)
    publish_port(portfile, ls.getsockname()[1])
    while True:
        c, _ = ls.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


# ------------------------------------------------------------------ clients
def proxy_of(var):
    v = os.environ.get(var) or os.environ.get(var.lower())
    if not v:
        raise SystemExit("no $%s" % var)
    u = urllib.parse.urlsplit(v if "://" in v else "http://" + v)
    return u.hostname, u.port, u.username, u.password


def socks_raw(argv):
    host = bytes.fromhex(argv[0])
    port = int(argv[1])
    path = argv[2]
    ph, pp, user, pw = proxy_of("ALL_PROXY")
    s = socket.create_connection((ph, pp), timeout=15)
    if user is not None:
        s.sendall(b"\x05\x01\x02")
        if s.recv(2) != b"\x05\x02":
            print("SOCKS greeting-refused"); return
        u, p = urllib.parse.unquote(user).encode(), urllib.parse.unquote(pw or "").encode()
        s.sendall(b"\x01" + bytes([len(u)]) + u + bytes([len(p)]) + p)
        if s.recv(2)[1:2] != b"\x00":
            print("SOCKS auth-refused"); return
    else:
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            print("SOCKS greeting-refused"); return
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + port.to_bytes(2, "big"))
    rep = s.recv(10)
    if len(rep) < 2:
        print("SOCKS rep=closed"); return
    print("SOCKS rep=%d" % rep[1], flush=True)
    if rep[1] == 0:
        s.sendall(("GET %s HTTP/1.0\r\nHost: x\r\n\r\n" % path).encode())
        data = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
        except OSError:
            pass
        print("SOCKSDATA " + data.decode("latin-1").split("\r\n")[0])


def http_raw(argv):
    data = bytes.fromhex(argv[0])
    ph, pp, user, pw = proxy_of("HTTP_PROXY")
    if user is not None:
        cred = base64.b64encode(("%s:%s" % (urllib.parse.unquote(user),
                                            urllib.parse.unquote(pw or ""))).encode()).decode()
        data = data.replace(b"\r\n", ("\r\nProxy-Authorization: Basic %s\r\n" % cred).encode(), 1)
    s = socket.create_connection((ph, pp), timeout=15)
    s.sendall(data)
    out = b""
    try:
        while b"\r\n" not in out:
            d = s.recv(65536)
            if not d:
                break
            out += d
        s.settimeout(2)
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except OSError:
        pass
    text = out.decode("latin-1")
    print("HTTPRAW " + (text.split("\r\n")[0] if text else "closed"))
    print("HTTPRAWBODY " + text.partition("\r\n\r\n")[2].replace("\n", " ")[:500])


def tcp(argv):
    host, port = argv[0], int(argv[1])
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"PING direct\r\n\r\n")
        print("TCP %s rc=0" % host)
    except OSError as e:
        print("TCP %s rc=-1 errno=%s" % (host, e.errno))


def make_index(argv):
    root = argv[0]
    pk = os.path.join(root, "packages")
    os.makedirs(pk, exist_ok=True)
    whl = os.path.join(pk, "wfdemo-0.1-py3-none-any.whl")
    files = {
        "wfdemo/__init__.py": b"VALUE = 'workfence'\n",
        "wfdemo-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: wfdemo\nVersion: 0.1\n",
        "wfdemo-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    rec = []
    for n, b in files.items():
        h = base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
        rec.append("%s,sha256=%s,%d" % (n, h, len(b)))
    rec.append("wfdemo-0.1.dist-info/RECORD,,")
    files["wfdemo-0.1.dist-info/RECORD"] = ("\n".join(rec) + "\n").encode()
    with zipfile.ZipFile(whl, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    digest = hashlib.sha256(open(whl, "rb").read()).hexdigest()
    for d, body in [
        ("simple", '<a href="wfdemo/">wfdemo</a>'),
        ("simple/wfdemo", '<a href="../../packages/wfdemo-0.1-py3-none-any.whl#sha256=%s">'
                          'wfdemo-0.1-py3-none-any.whl</a>' % digest),
    ]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
        with open(os.path.join(root, d, "index.html"), "w") as f:
            f.write("<!DOCTYPE html><html><body>%s</body></html>\n" % body)
    print(digest)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"serve": serve, "naive-proxy": naive_proxy, "socks-raw": socks_raw,
     "http-raw": http_raw, "tcp": tcp, "make-index": make_index}[cmd](args)
