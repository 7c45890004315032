#!/usr/bin/env bash
# start.sh - start a throwaway Kubernetes control plane on 127.0.0.1.
#
# Usage: start.sh DIR
#
# Runs prepare.sh (a fast no-op when its cache is ready), then starts, all
# bound to 127.0.0.1 only, on free ports:
#   etcd                      data in DIR/etcd (or $FERRITE_KUBE_ETCD_DIR)
#   kube-apiserver            self-made certificates in DIR/pki (openssl: CA,
#                             serving cert for 127.0.0.1/localhost, admin client
#                             cert O=system:masters, kube-controller-manager
#                             client cert, service-account key pair); RBAC
#   kube-controller-manager   its own kubeconfig; controllers that make sense
#                             without kubelets (PV/PVC binding, namespaces, GC,
#                             service accounts and tokens, workloads' objects)
# waits until the apiserver's /readyz is ok (and the controller manager is
# healthy and the default ServiceAccount exists), then writes
#   DIR/kubeconfig            admin kubeconfig (user ferrite-admin, system:masters)
#   DIR/env                   KEY=VALUE lines: KUBECONFIG, FERRITE_KUBE_PIDS
#                             (comma-separated), FERRITE_APISERVER, and more
#   DIR/pids                  "name pid" lines, read by stop.sh
# and prints DIR/env on stdout. Logs: DIR/etcd.log, DIR/kube-apiserver.log,
# DIR/kube-controller-manager.log. Stop with stop.sh DIR. Nothing runs pods:
# there is no scheduler, kubelet or container runtime.
#
# Environment: FERRITE_KUBE_READY_TIMEOUT (seconds per wait, default 120),
# FERRITE_KUBE_ETCD_DIR (etcd data dir, e.g. on /dev/shm), FERRITE_KUBE_V
# (log verbosity, default 1), FERRITE_KUBE_APISERVER_ARGS and
# FERRITE_KUBE_CONTROLLER_MANAGER_ARGS (extra flags, split on spaces, e.g.
# --feature-gates=...), FERRITE_KUBE_CACHE / FERRITE_CACHE as for prepare.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf 'start.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ $# -eq 1 ] || { sed -n '3p' "${BASH_SOURCE[0]}" | sed 's/^# //' >&2; exit 2; }
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
case "$DIR" in *[[:space:]]*) die "DIR must not contain whitespace: $DIR" ;; esac

if [ -f "$DIR/pids" ]; then
    while read -r name pid; do
        if [ -n "${pid:-}" ] && kill -0 "$pid" 2>/dev/null; then
            die "$name (pid $pid) from an earlier start.sh is still running in $DIR: run stop.sh $DIR first"
        fi
    done <"$DIR/pids"
    rm -f "$DIR/pids"
fi

"$HERE/prepare.sh"
CACHE="${FERRITE_KUBE_CACHE:-${FERRITE_CACHE:-$HOME/.cache/ferrite}/kube}"
# shellcheck source=/dev/null
. "$CACHE/bed.env"

T0=$(date +%s.%N)
TIMEOUT=${FERRITE_KUBE_READY_TIMEOUT:-120}
V=${FERRITE_KUBE_V:-1}
PKI="$DIR/pki"
ETCD_DIR="${FERRITE_KUBE_ETCD_DIR:-$DIR/etcd}"
SERVICE_CIDR=10.0.0.0/24     # only a setting: nothing is routed to it
read -ra API_EXTRA <<<"${FERRITE_KUBE_APISERVER_ARGS:-}"
read -ra KCM_EXTRA <<<"${FERRITE_KUBE_CONTROLLER_MANAGER_ARGS:-}"
rm -f "$DIR/env" "$DIR/kubeconfig" "$DIR/ready"

# --- free ports on 127.0.0.1 ---------------------------------------------------
# Below the ephemeral range (32768+) so outgoing connections cannot take them.
USED_PORTS=" "
# free_port VAR: set VAR to a port nothing on this machine uses.
free_port() {
    local p _
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        case "$USED_PORTS" in *" $p "*) continue ;; esac
        if [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then
            USED_PORTS="$USED_PORTS$p "
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    die "no free port found"
}
free_port ETCD_PORT
free_port ETCD_PEER_PORT
free_port API_PORT
free_port KCM_PORT
APISERVER="https://127.0.0.1:$API_PORT"

# --- certificates ----------------------------------------------------------------
mkdir -p "$PKI"
ossl() { openssl "$@" 2>>"$PKI/openssl.log" >/dev/null; }
pki_ok() {
    local f
    for f in ca apiserver admin kcm front-proxy-client; do
        [ -f "$PKI/$f.crt" ] && [ -f "$PKI/$f.key" ] || return 1
    done
    [ -f "$PKI/sa.key" ] && [ -f "$PKI/sa.pub" ]
}
if ! pki_ok; then
    log "making certificates in $PKI"
    rm -f "$PKI"/*
    ossl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=ferrite-test-ca" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    # sign NAME SUBJECT EXTENSIONS
    sign() {
        ossl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$1.key" \
            -out "$PKI/$1.csr" -subj "$2"
        printf '%s\n' "$3" >"$PKI/$1.ext"
        ossl x509 -req -sha256 -days 3650 -in "$PKI/$1.csr" -CA "$PKI/ca.crt" \
            -CAkey "$PKI/ca.key" -CAcreateserial -out "$PKI/$1.crt" -extfile "$PKI/$1.ext"
        rm -f "$PKI/$1.csr"
    }
    sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    CLIENT_EXT="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    sign admin "/O=system:masters/CN=ferrite-admin" "$CLIENT_EXT"
    sign kcm "/CN=system:kube-controller-manager" "$CLIENT_EXT"
    # The apiserver's front-proxy client (aggregated APIs; also keeps the
    # controller manager's delegated authentication from logging errors).
    sign front-proxy-client "/CN=front-proxy-client" "$CLIENT_EXT"
    ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key"
    ossl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
    chmod 600 "$PKI"/*.key
fi

# kubeconfig FILE USER CERT KEY
kubeconfig() {
    b64() { base64 -w0 <"$1"; }
    cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ferrite-test
  cluster:
    server: $APISERVER
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$3")
    client-key-data: $(b64 "$4")
contexts:
- name: ferrite-test
  context:
    cluster: ferrite-test
    user: $2
    namespace: default
current-context: ferrite-test
EOF
    chmod 600 "$1.tmp"
    mv "$1.tmp" "$1"
}
kubeconfig "$DIR/kcm.kubeconfig" system:kube-controller-manager "$PKI/kcm.crt" "$PKI/kcm.key"

# --- processes -------------------------------------------------------------------
PIDS=()
: >"$DIR/pids"
cleanup_on_failure() {
    log "start failed: stopping what was started (logs in $DIR)"
    "$HERE/stop.sh" "$DIR" >&2 || true
}
trap cleanup_on_failure ERR
fail() {
    local f
    for f in "$DIR"/etcd.log "$DIR"/kube-apiserver.log "$DIR"/kube-controller-manager.log; do
        [ -f "$f" ] || continue
        log "--- last lines of $f"
        tail -n 15 "$f" >&2
    done
    log "ERROR: $*"
    cleanup_on_failure
    exit 1
}
trap 'fail "interrupted"' INT TERM

# run NAME ARGS... : start in the background, log to DIR/NAME.log, record pid.
run() {
    local name=$1; shift
    "$@" >"$DIR/$name.log" 2>&1 </dev/null &
    local pid=$!
    PIDS+=("$pid")
    echo "$name $pid" >>"$DIR/pids"
    log "$name: pid $pid"
}
alive() { kill -0 "$1" 2>/dev/null; }

# wait_for WHAT PID CMD... : poll CMD every 0.2 s until it succeeds.
wait_for() {
    local what=$1 pid=$2; shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        alive "$pid" || fail "$what exited before it was ready"
        [ $SECONDS -lt $deadline ] || fail "$what not ready within ${TIMEOUT}s"
        sleep 0.2
    done
}

mkdir -p "$ETCD_DIR"
run etcd "$FERRITE_ETCD" \
    --name ferrite-test --data-dir "$ETCD_DIR" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "ferrite-test=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state new --initial-cluster-token ferrite-test \
    --logger=zap --log-outputs=stderr \
    --quota-backend-bytes $((1 << 30)) --snapshot-count 10000
ETCD_PID=$!
etcd_ok() { curl -fsS "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
wait_for etcd "$ETCD_PID" etcd_ok

run kube-apiserver "$FERRITE_KUBE_APISERVER_BIN" \
    --v="$V" \
    --advertise-address=127.0.0.1 --bind-address=127.0.0.1 \
    --secure-port="$API_PORT" --insecure-port=0 \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --cert-dir="$PKI" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --authorization-mode=RBAC \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --endpoint-reconciler-type=none \
    --allow-privileged=true \
    --profiling=false \
    --enable-priority-and-fairness=false \
    --requestheader-client-ca-file="$PKI/ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    "${API_EXTRA[@]}"
API_PID=$!
api_ready() {
    [ "$(curl -sS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" \
        --key "$PKI/admin.key" "$APISERVER/readyz")" = ok ]
}
wait_for kube-apiserver "$API_PID" api_ready
T_API=$(date +%s.%N)
kubeconfig "$DIR/kubeconfig" ferrite-admin "$PKI/admin.crt" "$PKI/admin.key"

# Controllers that do something without kubelets, nodes or a cloud. Not started:
# node*, attachdetach (needs scheduled pods), csrsigning (no signing CA given),
# horizontalpodautoscaling (no metrics), service (no cloud LB), ttl, podgc, ...
KCM_CONTROLLERS=serviceaccount-token,serviceaccount,namespace,garbagecollector
KCM_CONTROLLERS+=,persistentvolume-binder,persistentvolume-expander
KCM_CONTROLLERS+=,pv-protection,pvc-protection,resourcequota
KCM_CONTROLLERS+=,clusterrole-aggregation,root-ca-cert-publisher
KCM_CONTROLLERS+=,deployment,replicaset,statefulset,daemonset,job,cronjob
KCM_CONTROLLERS+=,endpoint,endpointslice,endpointslicemirroring,ttl-after-finished
run kube-controller-manager "$FERRITE_KUBE_CONTROLLER_MANAGER_BIN" \
    --v="$V" \
    --kubeconfig="$DIR/kcm.kubeconfig" \
    --authentication-kubeconfig="$DIR/kcm.kubeconfig" \
    --authorization-kubeconfig="$DIR/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --port=0 \
    --cert-dir="$DIR/kcm-certs" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --controllers="$KCM_CONTROLLERS" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --pvclaimbinder-sync-period=1s \
    "${KCM_EXTRA[@]}"
KCM_PID=$!
kcm_ok() { [ "$(curl -sS --max-time 5 -k "https://127.0.0.1:$KCM_PORT/healthz")" = ok ]; }
wait_for kube-controller-manager "$KCM_PID" kcm_ok
# The serviceaccount controller makes "default" in each namespace: pods and
# most charts need it, and it shows the controllers talk to the apiserver.
sa_ok() { "$FERRITE_KUBECTL" --kubeconfig "$DIR/kubeconfig" -n default get serviceaccount default; }
wait_for "the default ServiceAccount" "$KCM_PID" sa_ok
T_READY=$(date +%s.%N)
trap - ERR INT TERM

pids_csv=$(IFS=,; echo "${PIDS[*]}")
cat >"$DIR/env" <<EOF
KUBECONFIG=$DIR/kubeconfig
FERRITE_KUBE_PIDS=$pids_csv
FERRITE_APISERVER=$APISERVER
FERRITE_KUBE_DIR=$DIR
FERRITE_KUBE_CA=$PKI/ca.crt
FERRITE_ETCD_ENDPOINT=http://127.0.0.1:$ETCD_PORT
FERRITE_KUBE_CONTROLLER_MANAGER=https://127.0.0.1:$KCM_PORT
FERRITE_KUBECTL=$FERRITE_KUBECTL
FERRITE_HELM=$FERRITE_HELM
EOF
api_s=$(awk -v a="$T0" -v b="$T_API" 'BEGIN { printf "%.1f", b - a }')
all_s=$(awk -v a="$T0" -v b="$T_READY" 'BEGIN { printf "%.1f", b - a }')
echo "apiserver_ready_s=$api_s all_ready_s=$all_s" >"$DIR/ready"
log "ready: apiserver /readyz ok after ${api_s}s, controller manager + default SA after ${all_s}s"
cat "$DIR/env"
