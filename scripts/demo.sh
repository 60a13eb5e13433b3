#!/usr/bin/env bash
# The demo: two clusters (c1, c2) of two nodes each, the frontend/backend demo app in both,
# traffic balanced and forwarded by the kernel (socket LB, fast path) or, on L7 ports, the node
# proxies, and the flows it left.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked -q
strait=target/release/strait
export STRAIT_LAB=${STRAIT_LAB:-strait}

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

# A lab left by an earlier run (meshed, with the policy) would change what the first steps show:
# start from a fresh one.
if $strait lab status >/dev/null 2>&1; then
  run $strait lab down
fi
run $strait lab up
run $strait lab apply --cluster c1 -f deploy/lab/demo.yaml
run $strait lab apply --cluster c2 -f deploy/lab/demo.yaml
run $strait lab status
for cluster in c1 c2; do
  for i in 1 2 3 4; do
    say "$strait lab exec $cluster/demo/deploy/frontend -- curl -s http://backend/"
    $strait lab exec $cluster/demo/deploy/frontend -- curl -s --max-time 5 http://backend/ \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); print("answered by %s/%s/%s (%s on %s)" % (d["cluster"], d["namespace"], d["pod"], d["ip"], d["node"]))'
  done
done
sleep 0.3
run $strait observe --namespace demo --last 12

# Policy, as in Cilium's tutorial: only the frontend may reach the backend.
run $strait lab apply --cluster c1 -f deploy/lab/intruder.yaml
run $strait lab apply --cluster c1 -f deploy/lab/allow-frontend-to-backend.yaml
say "$strait lab exec c1/demo/deploy/frontend -- curl -s -o /dev/null -w '%{http_code}' http://backend/"
$strait lab exec c1/demo/deploy/frontend -- curl -s --max-time 5 -o /dev/null -w '%{http_code}\n' http://backend/
say "$strait lab exec c1/demo/intruder -- curl -sS --max-time 5 http://backend/"
$strait lab exec c1/demo/intruder -- curl -sS --max-time 5 http://backend/ || echo "(refused at connect(): the kernel denied it)"
run $strait policy trace --src c1/demo/intruder --dst c1/demo/deploy/backend --dport 8080
sleep 0.3
run $strait observe --namespace demo --verdict DROPPED --last 3

# Cluster mesh, as in Cilium's multi-cluster tutorial: the backend Service is global.
run $strait clustermesh enable --cluster c1
run $strait clustermesh enable --cluster c2
run $strait clustermesh connect --cluster c1 --destination-cluster c2
run $strait clustermesh status --cluster c1 --wait --wait-duration 60s
for i in 1 2 3 4 5 6; do
  say "$strait lab exec c1/demo/deploy/frontend -- curl -s http://backend/"
  $strait lab exec c1/demo/deploy/frontend -- curl -s --max-time 5 http://backend/ \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print("answered by %s/%s/%s" % (d["cluster"], d["namespace"], d["pod"]))'
done
sleep 0.3
run $strait observe --namespace demo --last 4
echo
echo "The lab stays up: try '$strait lab exec c1/demo/deploy/frontend -- curl -s http://backend/'"
echo "'$strait observe --namespace demo', and '$strait ui' (service map and flows on"
echo "http://127.0.0.1:8088). Remove it with '$strait lab down'."
