#!/bin/sh
# selfcheck-script.sh - run ferrite-target.sh against the guest kernel's own
# nvmet target instead of Ferrite: sets up nvmet-tcp on 127.0.0.1:4420 with a
# 64 MiB namespace, points FERRITE_* at it and sources ferrite-target.sh.
# It checks the test script itself (and shows what a reference target does).
# Run on the host:
#   e2e/qemu/run-guest.sh e2e/qemu/guest/selfcheck-script.sh [TIMEOUT] [FERRITE_TRACE=1]
# shellcheck shell=dash disable=SC3040,SC3028 # busybox ash: pipefail, RANDOM
set -eu
# shellcheck source=lib.sh
. /guest/lib.sh

FERRITE_ADDR=127.0.0.1
FERRITE_PORT=4420
FERRITE_NQN=nqn.2024-01.io.ferrite:selfcheck-script
FERRITE_BAD_NQN=nqn.2024-01.io.ferrite:does-not-exist

step "set up the kernel nvmet target (stand-in for Ferrite)"
nvmet_setup "$FERRITE_NQN" "$FERRITE_ADDR" "$FERRITE_PORT" 64

# shellcheck source=ferrite-target.sh
. /guest/ferrite-target.sh
