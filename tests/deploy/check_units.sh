#!/usr/bin/env bash
# Static checks of systemd/: `systemd-analyze verify --recursive-errors=yes` on every unit,
# `systemd-analyze security --offline=yes` exposure <= 2.0 for every service, `systemd-analyze
# calendar` on every OnCalendar=, each with a negative control showing the check can fail.
# Needs only the systemd tools (systemd 252 here). Sourced by run.sh or run alone.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}

# A root for --root=: systemd's own units (sysinit.target, ...) from this machine, our units, and
# executable stand-ins at the ExecStart paths (verify checks they exist and are executable).
prepare_verify_root() {
    local root=$1
    mkdir -p "$root/usr/lib" "$root/etc/systemd/system" "$root/opt/quantlens/current/bin" \
        "$root/usr/local/lib/quantlens"
    cp -a /usr/lib/systemd "$root/usr/lib/"
    for bin in quantlens quantlens-trigger; do
        printf '#!/bin/sh\necho "stand-in %s"\n' "$bin" >"$root/opt/quantlens/current/bin/$bin"
        chmod 755 "$root/opt/quantlens/current/bin/$bin"
    done
    install -m 755 "$REPO/systemd/quantlens-alert" "$root/usr/local/lib/quantlens/quantlens-alert"
    cp "$REPO"/systemd/*.service "$REPO"/systemd/*.socket "$REPO"/systemd/*.timer \
        "$REPO"/systemd/*.slice "$root/etc/systemd/system/"
}

# verify_units ROOT UNIT...: verify must exit 0 and print nothing at all (warnings count).
verify_units() {
    local root=$1 out rc
    shift
    out=$(cd "$root/etc/systemd/system" && systemd-analyze verify --root="$root" \
        --recursive-errors=yes "$@" 2>&1) && rc=0 || rc=$?
    printf '%s' "$out"
    [ "$rc" -eq 0 ] && [ -z "$out" ]
}

# exposure ROOT UNIT -> prints the overall exposure number; exit status of --threshold.
exposure() {
    local root=$1 unit=$2 out rc
    out=$(cd "$root/etc/systemd/system" && systemd-analyze security --offline=yes --root="$root" \
        --threshold="$(awk -v m="$MAX_EXPOSURE" 'BEGIN { printf "%d", m * 10 }')" "$unit" 2>&1) \
        && rc=0 || rc=$?
    printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
    return "$rc"
}

check_exposure() {
    local root=$1 unit=$2 level rc
    level=$(exposure "$root" "$unit") && rc=0 || rc=$?
    if [ -n "$level" ] && [ "$rc" -eq 0 ] && awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l <= m) }'; then
        pass "security exposure of $unit is $level (<= $MAX_EXPOSURE)"
    else
        fail "security exposure of $unit is ${level:-unknown} (must be <= $MAX_EXPOSURE; exit $rc)"
    fi
}

run_unit_checks() {
    local work root units unit timer expr next
    work=$(mktemp -d /tmp/quantlens-units.XXXXXX)
    root="$work/root"
    prepare_verify_root "$root"
    mapfile -t units < <(cd "$root/etc/systemd/system" && ls)
    log "units: ${units[*]}"

    for unit in "${units[@]}"; do
        check "systemd-analyze verify --recursive-errors=yes $unit" verify_units "$root" "$unit"
    done
    check "systemd-analyze verify of all units together" verify_units "$root" "${units[@]}"

    for unit in "${units[@]}"; do
        case "$unit" in
        *@.service) check_exposure "$root" "${unit%@.service}@check.service" ;;
        *.service) check_exposure "$root" "$unit" ;;
        esac
    done

    for timer in "$REPO"/systemd/*.timer; do
        while IFS= read -r expr; do
            if next=$(systemd-analyze calendar "$expr" 2>&1); then
                pass "calendar '$expr' ($(basename "$timer")): next $(printf '%s\n' "$next" | sed -n 's/^ *Next elapse: //p' | head -1)"
            else
                fail "calendar '$expr' ($(basename "$timer"))"
                printf '%s\n' "$next" | sed 's/^/    | /'
            fi
        done < <(sed -n 's/^OnCalendar=//p' "$timer")
    done
    # Every timer has at least one OnCalendar (a timer without one would never be checked above).
    for timer in "$REPO"/systemd/*.timer; do
        check "$(basename "$timer") has an OnCalendar=" grep -q '^OnCalendar=' "$timer"
    done

    # Negative controls: each check above must be able to fail.
    sed 's/^NoDelay=true$/NoDelay=true\nListenBacklogg=1/' "$root/etc/systemd/system/quantlens-trigger.socket" \
        >"$root/etc/systemd/system/broken-key.socket"
    check_fails "negative control: verify rejects an unknown key" verify_units "$root" broken-key.socket
    sed 's|^ExecStart=/opt/quantlens/current/bin/quantlens |ExecStart=/opt/quantlens/missing/quantlens |' \
        "$root/etc/systemd/system/quantlens-materialize.service" >"$root/etc/systemd/system/broken-exec.service"
    check_fails "negative control: verify rejects a missing ExecStart binary" verify_units "$root" broken-exec.service
    grep -v -E '^(Protect|Private|Restrict|SystemCall|Capability|NoNewPrivileges|LockPersonality|MemoryDeny|IPAddress|RemoveIPC|KeyringMode|DevicePolicy|ProcSubset|UMask)' \
        "$root/etc/systemd/system/quantlens-materialize.service" >"$root/etc/systemd/system/unhardened.service"
    check_fails "negative control: an unhardened copy of the worker unit exceeds exposure $MAX_EXPOSURE" \
        exposure "$root" unhardened.service
    check_fails "negative control: calendar rejects 'Mon..Fri 25:30 UTC'" systemd-analyze calendar 'Mon..Fri 25:30 UTC'
    rm -rf "$work"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    run_unit_checks
    summary
    [ "$FAILED" -eq 0 ]
fi
