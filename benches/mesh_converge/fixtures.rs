//! What the bench deploys (manifests of c1 and c2) and the python clients it runs in c1's
//! client pod.

/// The client (c1/node-1), the same-cluster backend (c1/node-2) and the Services. `conv` and
/// `far` are global with no c1 backends: c1 traffic to them can only be served by c2.
pub const C1: &str = "apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: client}}
spec:
  nodeName: node-1
  containers: [{name: echo}]
---
apiVersion: v1
kind: Pod
metadata: {name: near, namespace: bench, labels: {app: near}}
spec:
  nodeName: node-2
  containers: [{name: echo, ports: [{name: api, containerPort: 7070}]}]
---
apiVersion: v1
kind: Service
metadata: {name: near, namespace: bench}
spec:
  selector: {app: near}
  ports: [{name: api, port: 80, targetPort: api}]
---
apiVersion: v1
kind: Service
metadata:
  name: far
  namespace: bench
  annotations: {service.cilium.io/global: \"true\"}
spec:
  selector: {app: far}
  ports: [{name: api, port: 80, targetPort: api}]
---
apiVersion: v1
kind: Service
metadata:
  name: conv
  namespace: bench
  annotations: {service.cilium.io/global: \"true\", service.cilium.io/affinity: remote}
spec:
  selector: {app: conv}
  ports: [{name: api, port: 80, targetPort: api}]
";

/// c2's backends: `far` (one pod) and the `conv` Deployment, first at 0 replicas.
pub const C2: &str = "apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: bench, labels: {app: far}}
spec:
  nodeName: node-1
  containers: [{name: echo, ports: [{name: api, containerPort: 7070}]}]
---
apiVersion: v1
kind: Service
metadata:
  name: far
  namespace: bench
  annotations: {service.cilium.io/global: \"true\"}
spec:
  selector: {app: far}
  ports: [{name: api, port: 80, targetPort: api}]
---
apiVersion: v1
kind: Service
metadata:
  name: conv
  namespace: bench
  annotations: {service.cilium.io/global: \"true\", service.cilium.io/affinity: remote}
spec:
  selector: {app: conv}
  ports: [{name: api, port: 80, targetPort: api}]
";

pub fn conv_deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: conv, namespace: bench}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: conv}}}}
  template:
    metadata: {{labels: {{app: conv}}}}
    spec:
      containers: [{{name: echo, ports: [{{name: api, containerPort: 7070}}]}}]
"
    )
}

/// Requests `ip:port` in a tight loop, each on a new connection, until `deadline` (epoch
/// seconds) or stdin closes. Prints `ok <answered> <cluster> <pod>` for every answer and
/// `err <started> <class>` for failures, at most one per 20 ms so the pipe stays quiet while
/// nothing serves. Timestamps come from the wall clock the bench reads too.
pub const LOOP: &str = r#"import json, socket, sys, time
ip, port, deadline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
req = b'GET / HTTP/1.1\r\nHost: conv\r\nConnection: close\r\n\r\n'
last_err = 0.0
print('started', time.time(), flush=True)
while time.time() < deadline:
    t = time.time()
    try:
        s = socket.create_connection((ip, port), timeout=0.2)
        s.settimeout(0.5)
        s.sendall(req)
        data = b''
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        doc = json.loads(data.split(b'\r\n\r\n', 1)[1])
        print('ok', time.time(), doc['cluster'], doc['pod'], flush=True)
        time.sleep(0.002)
    except Exception as e:
        if t - last_err >= 0.02:
            print('err', t, type(e).__name__, flush=True)
            last_err = t
        time.sleep(0.003)
"#;

/// For N rounds, against each `name=ip:port` target in turn (interleaved, so load drifts over
/// all alike): one request on a new connection (connect + request + full answer) and one on a
/// kept-alive connection per target. Prints one JSON object: per target, the samples in µs and
/// the clusters that answered.
pub const LATENCY: &str = r#"import json, socket, sys, time
n = int(sys.argv[1])
targets = []
for arg in sys.argv[2:]:
    name, addr = arg.split('=')
    ip, port = addr.split(':')
    targets.append((name, ip, int(port)))

def read_answer(s, buf):
    while b'\r\n\r\n' not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError('closed in headers')
        buf += chunk
    head, rest = buf.split(b'\r\n\r\n', 1)
    length = 0
    for line in head.split(b'\r\n')[1:]:
        k, _, v = line.partition(b':')
        if k.strip().lower() == b'content-length':
            length = int(v.strip())
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError('closed in body')
        rest += chunk
    return rest[:length], rest[length:]

req_close = b'GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n'
req_keep = b'GET / HTTP/1.1\r\nHost: bench\r\n\r\n'
out = {name: {'new': [], 'keepalive': [], 'clusters': {}, 'errors': 0} for name, _, _ in targets}
kept = {}
for name, ip, port in targets:
    s = socket.create_connection((ip, port), timeout=2)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    kept[name] = [s, b'']
for _ in range(n):
    for name, ip, port in targets:
        o = out[name]
        try:
            t = time.perf_counter_ns()
            s = socket.create_connection((ip, port), timeout=2)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(req_close)
            body, _ = read_answer(s, b'')
            o['new'].append((time.perf_counter_ns() - t) / 1e3)
            s.close()
            c = json.loads(body)['cluster']
            o['clusters'][c] = o['clusters'].get(c, 0) + 1
            k = kept[name]
            t = time.perf_counter_ns()
            k[0].sendall(req_keep)
            body, k[1] = read_answer(k[0], k[1])
            o['keepalive'].append((time.perf_counter_ns() - t) / 1e3)
        except Exception:
            o['errors'] += 1
print(json.dumps(out))
"#;
