#!/bin/sh
# nvmet-serve.sh - guest script: serve a kernel nvmet target to the host, as
# a reference NVMe/TCP target (what Linux's own target answers).
# Exports a 64 MiB namespace of NVMET_NQN (default
# nqn.2024-01.io.ferrite:nvmet-ref) on nvmet-tcp 0.0.0.0:4420 in the guest for
# NVMET_SERVE_SECONDS (default 120), then passes. Reach it from the host with
# a QEMU port forward, e.g.:
#   FERRITE_QEMU_NETDEV_OPTS=,hostfwd=tcp:127.0.0.1:14420-:4420 \
#     e2e/qemu/run-guest.sh e2e/qemu/guest/nvmet-serve.sh 200 NVMET_SERVE_SECONDS=180
# and the target is at 127.0.0.1:14420 on the host (10.0.2.2:14420 from
# another guest).
# shellcheck shell=dash disable=SC3040,SC3028 # busybox ash: pipefail, RANDOM
set -eu
# shellcheck source=lib.sh
. /guest/lib.sh

NQN=${NVMET_NQN:-nqn.2024-01.io.ferrite:nvmet-ref}
step "serve $NQN on tcp 0.0.0.0:4420 for ${NVMET_SERVE_SECONDS:-120}s"
nvmet_setup "$NQN" 0.0.0.0 4420 64
echo "NVMET-SERVE: ready"
sleep "${NVMET_SERVE_SECONDS:-120}"
echo "--- dmesg | grep -i nvme ---"
dmesg | grep -i nvme || true
