# shellcheck shell=bash
# Shared helpers for the deployment tests (sourced).
# check NAME CMD...: runs CMD, prints "ok - NAME" or "FAIL - NAME" with its output, counts.
PASSED=${PASSED:-0}
FAILED=${FAILED:-0}
FAILURES=${FAILURES:-}

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*"; }

pass() { PASSED=$((PASSED + 1)); printf 'ok - %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); FAILURES="$FAILURES
  - $1"; printf 'FAIL - %s\n' "$1"; }

# check NAME CMD...: pass when CMD exits 0; on failure show its output.
check() {
    local name=$1 out rc
    shift
    out=$("$@" 2>&1) && rc=0 || rc=$?
    if [ "$rc" -eq 0 ]; then
        pass "$name"
    else
        fail "$name (exit $rc)"
        printf '%s\n' "$out" | sed 's/^/    | /' | tail -40
    fi
    return 0
}

# check_fails NAME CMD...: a negative control; pass when CMD exits non-zero.
check_fails() {
    local name=$1 out rc
    shift
    out=$("$@" 2>&1) && rc=0 || rc=$?
    if [ "$rc" -ne 0 ]; then
        pass "$name (exit $rc, as it should)"
    else
        fail "$name: succeeded but must fail"
        printf '%s\n' "$out" | sed 's/^/    | /' | tail -20
    fi
    return 0
}

# Step timing: step_start NAME; ...; step_end NAME -> "time NAME 12.3 s", also appended to $TIMINGS.
declare -A STEP_T0
step_start() { STEP_T0[$1]=$(date +%s.%N); log "== $1"; }
step_end() {
    local secs
    secs=$(awk -v a="${STEP_T0[$1]}" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    log "== $1 took ${secs} s"
    [ -n "${TIMINGS:-}" ] && printf '%s\t%s\n' "$1" "$secs" >>"$TIMINGS"
    return 0
}

summary() {
    echo
    if [ "$FAILED" -ne 0 ]; then
        echo "Failed checks:$FAILURES"
    fi
    echo "deploy: $PASSED passed, $FAILED failed"
}
