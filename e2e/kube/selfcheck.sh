#!/usr/bin/env bash
# selfcheck.sh - prove the Kubernetes API-server test bed works, end to end.
#
# Usage: selfcheck.sh [DIR]     (DIR default: a new temp dir, removed on success)
#
# prepare.sh, start.sh DIR, then with the cached kubectl and helm:
#   - the API groups/versions the operator may use are served;
#   - a CRD (apiextensions.k8s.io/v1, group example.ferrite.dev, OpenAPI v3
#     schema with minItems: 1, printer columns, status subresource) is
#     established; a valid CR is created and shows its printer columns; a CR
#     violating minItems is rejected with a readable message; the status
#     subresource works; server-side apply records its field manager and
#     reports a conflict with another manager;
#   - a StorageClass, a CSI PersistentVolume and a PVC naming it: the
#     kube-controller-manager binds them (both Bound); CSIDriver, Lease and
#     VolumeAttachment objects are accepted;
#   - helm version, helm lint and helm template of a trivial chart made in DIR,
#     and helm install/uninstall of it against the apiserver;
# then stop.sh DIR. Prints timings and ends with "selfcheck: N passed, M failed".
# Exit 0 only if all passed. Logs stay in DIR when something failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf 'selfcheck: %s\n' "$*" >&2; }

if [ $# -ge 1 ]; then
    mkdir -p "$1"; DIR=$(cd "$1" && pwd); OWN_DIR=0
else
    DIR=$(mktemp -d /tmp/ferrite-kube-selfcheck.XXXXXX); OWN_DIR=1
fi
PASSED=0
FAILED=0
STARTED=0
finish() {
    local rc=$?
    if [ "$STARTED" = 1 ]; then "$HERE/stop.sh" "$DIR" >&2 || true; fi
    if [ "$FAILED" = 0 ] && [ "$rc" = 0 ] && [ "$OWN_DIR" = 1 ]; then
        rm -rf "$DIR"
    else
        log "logs and data kept in $DIR"
    fi
}
trap finish EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ok NAME / bad NAME DETAIL
ok() { PASSED=$((PASSED + 1)); log "PASS $1"; }
bad() { FAILED=$((FAILED + 1)); log "FAIL $1${2:+: $2}"; }
# check NAME CMD...: run CMD (output to DIR/check.out), pass if it exits 0.
check() {
    local name=$1; shift
    if "$@" >"$DIR/check.out" 2>&1; then ok "$name"; else bad "$name" "$(tail -n 5 "$DIR/check.out")"; fi
}

t=$(now)
"$HERE/prepare.sh"
T_PREPARE=$(since "$t")

t=$(now)
STARTED=1
"$HERE/start.sh" "$DIR" >"$DIR/start.out"
T_START=$(since "$t")
set -a
# shellcheck source=/dev/null
. "$DIR/env"
set +a
k() { "$FERRITE_KUBECTL" "$@"; }
log "apiserver $FERRITE_APISERVER, kubeconfig $KUBECONFIG"

# --- API versions ------------------------------------------------------------------
k api-versions >"$DIR/api-versions.txt"
k api-resources -o wide >"$DIR/api-resources.txt"
for gv in v1 apiextensions.k8s.io/v1 storage.k8s.io/v1 coordination.k8s.io/v1 \
          events.k8s.io/v1 rbac.authorization.k8s.io/v1 apps/v1 \
          admissionregistration.k8s.io/v1; do
    check "API group $gv served" grep -qx "$gv" "$DIR/api-versions.txt"
done
for r in csidrivers csinodes volumeattachments storageclasses; do
    check "storage.k8s.io/v1 $r" grep -Eq "^${r}[[:space:]].*storage\.k8s\.io/v1[[:space:]]" "$DIR/api-resources.txt"
done

# --- CRD -------------------------------------------------------------------------------
cat >"$DIR/crd.yaml" <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.ferrite.dev
spec:
  group: example.ferrite.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources:
      status: {}
    additionalPrinterColumns:
    - {name: Size, type: string, jsonPath: .spec.size}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Phase, type: string, jsonPath: .status.phase}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [targets]
            properties:
              size: {type: string, pattern: '^[0-9]+(Ki|Mi|Gi|Ti)?$'}
              replicas: {type: integer, minimum: 1, maximum: 5, default: 3}
              targets:
                type: array
                minItems: 1
                items: {type: string}
          status:
            type: object
            properties:
              phase: {type: string}
EOF
check "CRD apply" k apply -f "$DIR/crd.yaml"
check "CRD established" k wait --for condition=established --timeout=60s crd/widgets.example.ferrite.dev

cat >"$DIR/cr-good.yaml" <<'EOF'
apiVersion: example.ferrite.dev/v1alpha1
kind: Widget
metadata: {name: good, namespace: default}
spec: {size: 1Gi, targets: [node-a]}
EOF
check "valid CR created" k create -f "$DIR/cr-good.yaml"
check "CR default applied (replicas=3)" \
    test "$(k get widget good -o jsonpath='{.spec.replicas}')" = 3
if k get widgets >"$DIR/widgets.txt" 2>&1 \
    && head -n1 "$DIR/widgets.txt" | grep -Eq '^NAME +SIZE +REPLICAS +PHASE +AGE$' \
    && grep -Eq '^good +1Gi +3 ' "$DIR/widgets.txt"; then
    ok "printer columns"
else
    bad "printer columns" "$(cat "$DIR/widgets.txt")"
fi

cat >"$DIR/cr-bad.yaml" <<'EOF'
apiVersion: example.ferrite.dev/v1alpha1
kind: Widget
metadata: {name: bad, namespace: default}
spec: {size: 1Gi, targets: []}
EOF
if k create -f "$DIR/cr-bad.yaml" >"$DIR/cr-bad.out" 2>&1; then
    bad "CR violating minItems rejected" "it was accepted"
elif grep -q 'spec.targets.*should have at least 1 items' "$DIR/cr-bad.out"; then
    ok "CR violating minItems rejected: $(tr '\n' ' ' <"$DIR/cr-bad.out")"
else
    bad "CR violating minItems rejected with a readable message" "$(cat "$DIR/cr-bad.out")"
fi

# Status subresource: a status change through the main resource is ignored,
# through /status it is kept (and the printer column shows it).
check "status via main resource ignored" sh -c \
    "'$FERRITE_KUBECTL' patch widget good --type=merge -p '{\"status\":{\"phase\":\"Sneaky\"}}' \
     && [ -z \"\$('$FERRITE_KUBECTL' get widget good -o jsonpath='{.status.phase}')\" ]"
if curl -fsS --cacert "$FERRITE_KUBE_CA" --cert "$DIR/pki/admin.crt" --key "$DIR/pki/admin.key" \
        -X PATCH -H 'Content-Type: application/merge-patch+json' \
        --data '{"status":{"phase":"Ready"}}' \
        "$FERRITE_APISERVER/apis/example.ferrite.dev/v1alpha1/namespaces/default/widgets/good/status" \
        >"$DIR/status.out" 2>&1 \
    && [ "$(k get widget good -o jsonpath='{.status.phase}')" = Ready ] \
    && k get widgets | grep -Eq '^good +1Gi +3 +Ready '; then
    ok "status subresource"
else
    bad "status subresource" "$(tail -n 5 "$DIR/status.out")"
fi

# Server-side apply.
cat >"$DIR/cr-ssa.yaml" <<'EOF'
apiVersion: example.ferrite.dev/v1alpha1
kind: Widget
metadata: {name: ssa, namespace: default, labels: {app: ferrite}}
spec: {size: 2Gi, replicas: 2, targets: [node-a, node-b]}
EOF
check "server-side apply (create)" k apply --server-side --field-manager=ferrite-a -f "$DIR/cr-ssa.yaml"
check "server-side apply records the field manager" sh -c \
    "'$FERRITE_KUBECTL' get widget ssa -o json --show-managed-fields \
     | jq -e '[.metadata.managedFields[] | select(.manager == \"ferrite-a\" and .operation == \"Apply\")] | length == 1'"
sed 's/replicas: 2/replicas: 4/' "$DIR/cr-ssa.yaml" >"$DIR/cr-ssa2.yaml"
if k apply --server-side --field-manager=ferrite-b -f "$DIR/cr-ssa2.yaml" >"$DIR/ssa-conflict.out" 2>&1; then
    bad "server-side apply conflict between managers" "no conflict reported"
elif grep -qi 'conflict' "$DIR/ssa-conflict.out"; then
    ok "server-side apply conflict between managers"
else
    bad "server-side apply conflict between managers" "$(cat "$DIR/ssa-conflict.out")"
fi
check "server-side apply --force-conflicts" sh -c \
    "'$FERRITE_KUBECTL' apply --server-side --field-manager=ferrite-b --force-conflicts -f '$DIR/cr-ssa2.yaml' \
     && [ \"\$('$FERRITE_KUBECTL' get widget ssa -o jsonpath='{.spec.replicas}')\" = 4 ]"

# --- storage -------------------------------------------------------------------------
cat >"$DIR/storage.yaml" <<'EOF'
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: csi.example.ferrite.dev}
spec: {attachRequired: true, podInfoOnMount: false, volumeLifecycleModes: [Persistent]}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: ferrite-manual}
provisioner: csi.example.ferrite.dev
reclaimPolicy: Retain
volumeBindingMode: Immediate
allowVolumeExpansion: true
parameters: {replicas: "2"}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: ferrite-pv-1}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ferrite-manual
  csi:
    driver: csi.example.ferrite.dev
    volumeHandle: vol-0001
    volumeAttributes: {nqn: "nqn.2024-01.dev.ferrite:vol-0001"}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: ferrite-pvc-1, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  storageClassName: ferrite-manual
  volumeName: ferrite-pv-1
  resources: {requests: {storage: 1Gi}}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: ferrite-selfcheck, namespace: default}
spec: {holderIdentity: selfcheck, leaseDurationSeconds: 15}
---
apiVersion: storage.k8s.io/v1
kind: VolumeAttachment
metadata: {name: ferrite-va-1}
spec:
  attacher: csi.example.ferrite.dev
  nodeName: node-a
  source: {persistentVolumeName: ferrite-pv-1}
EOF
check "CSIDriver, StorageClass, PV, PVC, Lease, VolumeAttachment created" k apply -f "$DIR/storage.yaml"
t=$(now)
bound=0
for _ in $(seq 1 150); do
    pvc=$(k get pvc ferrite-pvc-1 -o jsonpath='{.status.phase}' 2>/dev/null || true)
    pv=$(k get pv ferrite-pv-1 -o jsonpath='{.status.phase}' 2>/dev/null || true)
    if [ "$pvc" = Bound ] && [ "$pv" = Bound ]; then bound=1; break; fi
    sleep 0.2
done
if [ "$bound" = 1 ] && [ "$(k get pv ferrite-pv-1 -o jsonpath='{.spec.claimRef.name}')" = ferrite-pvc-1 ]; then
    ok "kube-controller-manager bound PV and PVC (in $(since "$t")s)"
else
    bad "kube-controller-manager bound PV and PVC" "pvc=$pvc pv=$pv"
fi
check "PVC carries the pvc-protection finalizer" sh -c \
    "'$FERRITE_KUBECTL' get pvc ferrite-pvc-1 -o jsonpath='{.metadata.finalizers}' | grep -q kubernetes.io/pvc-protection"
check "events.k8s.io/v1 events listable" k get events.v1.events.k8s.io -A

# --- helm ----------------------------------------------------------------------------
if [ -n "${FERRITE_HELM:-}" ]; then
    h() { "$FERRITE_HELM" "$@"; }
    export HELM_CACHE_HOME="$DIR/helm/cache" HELM_CONFIG_HOME="$DIR/helm/config" \
        HELM_DATA_HOME="$DIR/helm/data"
    check "helm version" h version
    mkdir -p "$DIR/chart/templates"
    cat >"$DIR/chart/Chart.yaml" <<'EOF'
apiVersion: v2
name: ferrite-selfcheck
description: A trivial chart for the test bed's self-check
version: 0.1.0
appVersion: "0.1.0"
EOF
    cat >"$DIR/chart/values.yaml" <<'EOF'
greeting: hello
replicas: 2
EOF
    cat >"$DIR/chart/templates/configmap.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
  labels:
    app.kubernetes.io/name: {{ .Chart.Name }}
    app.kubernetes.io/instance: {{ .Release.Name }}
data:
  greeting: {{ .Values.greeting | quote }}
  replicas: {{ .Values.replicas | quote }}
EOF
    check "helm lint" h lint "$DIR/chart"
    if h template demo "$DIR/chart" --set greeting=bonjour >"$DIR/helm-template.yaml" 2>&1 \
        && grep -q 'name: demo-config' "$DIR/helm-template.yaml" \
        && grep -q 'greeting: "bonjour"' "$DIR/helm-template.yaml"; then
        ok "helm template"
    else
        bad "helm template" "$(cat "$DIR/helm-template.yaml")"
    fi
    check "helm install against the apiserver" sh -c \
        "'$FERRITE_HELM' install demo '$DIR/chart' -n default --timeout 60s \
         && [ \"\$('$FERRITE_KUBECTL' get configmap demo-config -o jsonpath='{.data.greeting}')\" = hello ]"
    check "helm uninstall" h uninstall demo -n default --timeout 60s
else
    bad "helm present" "prepare.sh fell back to Debian's kubectl: no helm"
fi

# --- versions, timings -----------------------------------------------------------------
# shellcheck source=/dev/null
. "${FERRITE_KUBE_CACHE:-${FERRITE_CACHE:-$HOME/.cache/ferrite}/kube}/bed.env"
server_version=$(curl -fsS --cacert "$FERRITE_KUBE_CA" --cert "$DIR/pki/admin.crt" \
    --key "$DIR/pki/admin.key" "$FERRITE_APISERVER/version" | jq -r .gitVersion || echo '?')
log "versions: apiserver $server_version; kube-controller-manager $FERRITE_KUBE_CONTROLLER_MANAGER_VERSION;" \
    "etcd ${FERRITE_ETCD_VERSION#etcd Version: }; kubectl $FERRITE_KUBECTL_VERSION ($FERRITE_KUBECTL_FROM); helm ${FERRITE_HELM_VERSION:-none}"
log "timings: prepare ${T_PREPARE}s; start.sh ${T_START}s ($(cat "$DIR/ready"))"
echo "selfcheck: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
