#!/usr/bin/env bash
# The deployment stage: systemd/ and ansible/ tested on real tools, as root.
#
#   tests/deploy/run.sh [--static-only] [--keep]
#
# Binaries (the ones the playbook installs; built for this machine's architecture):
#   QUANTLENS_BIN          default $HOME/.cache/quantlens/target/debug/quantlens
#   QUANTLENS_TRIGGER_BIN  default $HOME/.cache/quantlens/target/debug/quantlens-trigger
# Cache (kept between runs, outside the clone): QUANTLENS_DEPLOY_CACHE, default $HOME/.cache/quantlens
#   debootstrap-bookworm-<arch>-<key>.tar.zst   the debootstrap'd Debian root (key: package list)
#   deploy-venv/                                 ansible + ansible-lint, pinned
#
# What it checks, in order (each line of output is "ok - ..." or "FAIL - ..."):
#  1. systemd/: verify --recursive-errors=yes, security --offline exposure <= 2.0, calendar,
#     with negative controls (check_units.sh).
#  2. ansible/: ansible-playbook --syntax-check site.yml dr.yml; ansible-lint --offline
#     --profile production.
#  3. Converge site.yml for real into a debootstrap'd Debian 12 root through the chroot
#     connection, inside a network namespace of its own (UFW is really enabled there, never on
#     this machine's network); UFW is then tested with real connections from two other
#     namespaces (frontend allowed, anyone else dropped, SSH open). A second converge must report
#     changed=0.
#  4. verify --root on the converged root (installed units + the role's drop-ins, real binaries).
#  5. Boot that root with systemd-nspawn (systemd as PID 1, private network) and check inside:
#     socket listening and daemon not running; POST /trigger (bearer token) starts the daemon and
#     runs the pipeline on demo data; the daemon exits when idle and the next request starts it
#     again; the timers are scheduled; the timer's service runs through the same run lock (75
#     counts as success); a failing unit leaves an alert in the journal and a marker; UFW active.
# The last line is "deploy: N passed, M failed"; the exit status is non-zero on any failure.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=check_units.sh
. "$HERE/check_units.sh"

STATIC_ONLY=false
KEEP=false
for arg in "$@"; do
    case "$arg" in
    --static-only) STATIC_ONLY=true ;;
    --keep) KEEP=true ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" -eq 0 ] || { echo "run.sh needs root (debootstrap, chroot, netns, nspawn)" >&2; exit 2; }

CACHE=${QUANTLENS_DEPLOY_CACHE:-$HOME/.cache/quantlens}
QUANTLENS_BIN=${QUANTLENS_BIN:-$HOME/.cache/quantlens/target/debug/quantlens}
QUANTLENS_TRIGGER_BIN=${QUANTLENS_TRIGGER_BIN:-$HOME/.cache/quantlens/target/debug/quantlens-trigger}
ANSIBLE_VERSION=12.3.0
ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_LINT_VERSION=26.10.1
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
VENV="$CACHE/deploy-venv"
mkdir -p "$CACHE"

WORK=$(mktemp -d /var/tmp/quantlens-deploy.XXXXXX)
TIMINGS="$WORK/timings.tsv"
: >"$TIMINGS"
ROOT="$WORK/root"
NS="qlvm$$"            # the converge's network namespace (the VM's network)
NS_FE="qlfe$$"         # the frontend's namespace
NS_X="qlx$$"           # anyone else
NSPAWN_PID=""
LISTENER_PIDS=""

cleanup() {
    local rc=$?
    set +e
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID" 2>/dev/null   # nspawn turns SIGTERM into a clean container shutdown
        for _ in $(seq 1 30); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 1; done
        kill -KILL "$NSPAWN_PID" 2>/dev/null
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    for pid in $LISTENER_PIDS; do kill "$pid" 2>/dev/null; done
    for ns in "$NS" "$NS_FE" "$NS_X"; do
        ip netns list 2>/dev/null | grep -qw "$ns" && ip netns delete "$ns"
    done
    # Nothing may stay mounted under the root before it is removed.
    if [ -d "$ROOT" ]; then
        grep -o " $ROOT[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
    fi
    if [ "$KEEP" = true ]; then
        echo "kept $WORK"
    else
        rm -rf --one-file-system "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

install_tools() {
    step_start "install tools"
    local need=()
    command -v systemd-analyze >/dev/null || need+=(systemd)
    $STATIC_ONLY || {
        command -v debootstrap >/dev/null || need+=(debootstrap)
        command -v systemd-nspawn >/dev/null || need+=(systemd-container)
        command -v zstd >/dev/null || need+=(zstd)
        command -v ip >/dev/null || need+=(iproute2)
        command -v curl >/dev/null || need+=(curl)
    }
    if [ ${#need[@]} -gt 0 ]; then
        log "apt-get install ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    if ! "$VENV/bin/ansible-lint" --version 2>/dev/null | grep -q "$ANSIBLE_LINT_VERSION" ||
        ! "$VENV/bin/ansible" --version 2>/dev/null | grep -q "core $ANSIBLE_CORE_VERSION"; then
        log "pip install ansible==$ANSIBLE_VERSION ansible-core==$ANSIBLE_CORE_VERSION ansible-lint==$ANSIBLE_LINT_VERSION"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check \
            "ansible==$ANSIBLE_VERSION" "ansible-core==$ANSIBLE_CORE_VERSION" "ansible-lint==$ANSIBLE_LINT_VERSION"
    fi
    export PATH="$VENV/bin:$PATH"
    log "$(systemd-analyze --version | head -1); $(ansible --version | head -1); ansible-lint $ANSIBLE_LINT_VERSION"
    step_end "install tools"
}

ansible_static() {
    step_start "ansible static checks"
    cd "$REPO/ansible"
    check "ansible-playbook --syntax-check site.yml dr.yml" ansible-playbook --syntax-check site.yml dr.yml
    check "ansible-lint --offline --profile production" ansible-lint --offline --profile production --nocolor
    cd "$REPO"
    step_end "ansible static checks"
}

# The Debian root: extracted from the cached tarball, or debootstrapped and cached. The package
# list is the base role's (so the converge, which has no network, finds every package installed).
prepare_root() {
    local packages key tarball
    packages=$(python3 -c 'import sys, yaml; print(",".join(yaml.safe_load(open(sys.argv[1]))["base_packages"]))' \
        "$REPO/ansible/roles/base/defaults/main.yml" 2>/dev/null ||
        "$VENV/bin/python" -c 'import sys, yaml; print(",".join(yaml.safe_load(open(sys.argv[1]))["base_packages"]))' \
            "$REPO/ansible/roles/base/defaults/main.yml")
    key=$(printf '%s %s %s' "$SUITE" "$packages" "$(dpkg --print-architecture)" | sha256sum | cut -c1-12)
    tarball="$CACHE/debootstrap-$SUITE-$(dpkg --print-architecture)-$key.tar.zst"
    mkdir -p "$ROOT"
    if [ -f "$tarball" ]; then
        step_start "provision: extract cached root"
        log "using $tarball"
        tar -C "$ROOT" --zstd -xpf "$tarball" --numeric-owner
        step_end "provision: extract cached root"
    else
        step_start "provision: debootstrap"
        log "debootstrap --variant=minbase --include=$packages $SUITE (no cache at $tarball)"
        debootstrap --variant=minbase --include="$packages" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
            { tail -30 "$WORK/debootstrap.log"; return 1; }
        # Keep the cache small: no downloaded .debs, no apt lists (the converge does not update).
        rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*_Packages
        tar -C "$ROOT" --zstd -cpf "$tarball.tmp" --numeric-owner . && mv "$tarball.tmp" "$tarball"
        find "$CACHE" -maxdepth 1 -name "debootstrap-$SUITE-*.tar.zst" ! -name "$(basename "$tarball")" -delete
        log "cached $tarball ($(du -h "$tarball" | cut -f1))"
        step_end "provision: debootstrap"
    fi
}

write_inventory() {
    mkdir -p "$WORK/inventory/group_vars" "$WORK/artifacts"
    ln -sf "$QUANTLENS_BIN" "$WORK/artifacts/quantlens"
    ln -sf "$QUANTLENS_TRIGGER_BIN" "$WORK/artifacts/quantlens-trigger"
    cat >"$WORK/inventory/hosts.yml" <<YAML
quantlens:
  hosts:
    testvm:
      ansible_connection: community.general.chroot
      ansible_host: $ROOT
      ansible_become: false
YAML
    # Extra vars as JSON: real booleans and numbers (ansible-core 2.19 conditionals).
    TOKEN="deploy-test-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    cat >"$WORK/vars.json" <<JSON
{
  "quantlens_artifact_dir": "$WORK/artifacts",
  "quantlens_trigger_listen": "127.0.0.1",
  "quantlens_trigger_allow_from": ["10.213.1.2"],
  "quantlens_trigger_token": "$TOKEN",
  "quantlens_idle_exit": 5,
  "quantlens_maintain_enabled": false,
  "base_apt_update_cache": false,
  "backup_to": "s3://quantlens-deploy-test/backups",
  "backup_s3_access_key_id": "test-access-key",
  "backup_s3_secret_access_key": "test-secret-key",
  "backup_s3_region": "eu-central-1"
}
JSON
}

# converge N: ansible-playbook site.yml into the root, run inside the VM's network namespace with
# /proc mounted in the chroot (in a mount namespace of its own, so nothing leaks). Prints the recap.
converge() {
    local n=$1
    ip netns exec "$NS" unshare --mount --propagation private sh -c '
        mount -t proc proc "$1/proc" && shift && exec "$@"' sh "$ROOT" \
        env ANSIBLE_CONFIG="$REPO/ansible/ansible.cfg" ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1 \
        ansible-playbook -i "$WORK/inventory/hosts.yml" "$REPO/ansible/site.yml" \
        -e "@$WORK/vars.json" >"$WORK/converge$n.log" 2>&1
}

recap_field() { sed -n "s/^testvm *:.* $1=\([0-9]*\).*/\1/p" "$2" | tail -1; }

converge_twice() {
    ip netns add "$NS"
    ip -n "$NS" link set lo up
    write_inventory

    step_start "converge: first run"
    if converge 1; then
        pass "converge site.yml into the debootstrap root (ok=$(recap_field ok "$WORK/converge1.log") changed=$(recap_field changed "$WORK/converge1.log"))"
    else
        fail "converge site.yml into the debootstrap root"
        tail -60 "$WORK/converge1.log" | sed 's/^/    | /'
        step_end "converge: first run"
        return 1
    fi
    step_end "converge: first run"

    step_start "converge: second run"
    if converge 2 && [ "$(recap_field changed "$WORK/converge2.log")" = 0 ] &&
        [ "$(recap_field failed "$WORK/converge2.log")" = 0 ]; then
        pass "second converge reports changed=0 (ok=$(recap_field ok "$WORK/converge2.log"))"
    else
        fail "second converge must report changed=0 (changed=$(recap_field changed "$WORK/converge2.log"))"
        grep -E '^(changed|failed|fatal)|^TASK' "$WORK/converge2.log" | grep -B1 -E '^(changed|failed|fatal)' | sed 's/^/    | /' | head -40
    fi
    step_end "converge: second run"
}

# UFW, enabled by the converge inside $NS, tested with real TCP connections: the frontend's
# namespace (10.213.1.2, the allowed address) and another one (10.213.2.2) are wired to $NS by veth
# pairs; listeners on the trigger port, SSH port and an unlisted port run inside $NS.
firewall_connectivity() {
    step_start "firewall: connections through UFW"
    ip netns add "$NS_FE"
    ip netns add "$NS_X"
    ip link add "qf$$" netns "$NS" type veth peer name eth0 netns "$NS_FE"
    ip link add "qx$$" netns "$NS" type veth peer name eth0 netns "$NS_X"
    ip -n "$NS" addr add 10.213.1.1/24 dev "qf$$"
    ip -n "$NS" addr add 10.213.2.1/24 dev "qx$$"
    ip -n "$NS_FE" addr add 10.213.1.2/24 dev eth0
    ip -n "$NS_X" addr add 10.213.2.2/24 dev eth0
    for ns_dev in "$NS qf$$" "$NS qx$$" "$NS_FE eth0" "$NS_X eth0"; do
        set -- $ns_dev
        ip -n "$1" link set "$2" up
        ip -n "$1" link set lo up
    done
    for port in 8787 22 9000; do
        ip netns exec "$NS" python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16); s.settimeout(120)
while True:
    try:
        c, _ = s.accept(); c.sendall(b"hello\n"); c.close()
    except socket.timeout:
        break' "$port" &
        LISTENER_PIDS="$LISTENER_PIDS $!"
    done
    sleep 0.5
    connect() { # connect NS ADDR PORT: succeeds when the TCP handshake completes within 3 s
        ip netns exec "$1" python3 -c '
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).recv(16)' "$2" "$3"
    }
    check "ufw status is active in the VM's namespace" \
        sh -c "ip netns exec '$NS' chroot '$ROOT' ufw status verbose | tee /dev/stderr | grep -q '^Status: active'"
    check "frontend (10.213.1.2) reaches the trigger port 8787" connect "$NS_FE" 10.213.1.1 8787
    check_fails "another host (10.213.2.2) cannot reach the trigger port 8787" connect "$NS_X" 10.213.2.1 8787
    check "another host (10.213.2.2) reaches SSH (22)" connect "$NS_X" 10.213.2.1 22
    check_fails "the frontend cannot reach an unlisted port (9000)" connect "$NS_FE" 10.213.1.1 9000
    check "the VM's namespace holds UFW's chains (iptables-save sees them)" \
        sh -c "ip netns exec '$NS' chroot '$ROOT' iptables-save | grep -q ':ufw-user-input'"
    check "this machine's own network namespace has no UFW chains (never firewalled)" \
        sh -c "out=\$(chroot '$ROOT' iptables-nft-save; chroot '$ROOT' iptables-legacy-save) && ! printf '%s' \"\$out\" | grep -q ufw-"
    for pid in $LISTENER_PIDS; do kill "$pid" 2>/dev/null; done
    LISTENER_PIDS=""
    step_end "firewall: connections through UFW"
}

# verify --root on the converged root: the installed units with the role's drop-ins, the real
# binaries at the real paths.
verify_converged() {
    local units
    mapfile -t units < <(cd "$ROOT/etc/systemd/system" && ls quantlens*.service quantlens*.socket quantlens*.timer quantlens*.slice)
    check "systemd-analyze verify --recursive-errors=yes on the converged root (${#units[@]} units + drop-ins)" \
        verify_units "$ROOT" "${units[@]}"
    local unit
    for unit in quantlens-trigger.service quantlens-materialize.service; do
        check_exposure "$ROOT" "$unit"
    done
}

main() {
    install_tools
    step_start "static checks of systemd/"
    run_unit_checks
    step_end "static checks of systemd/"
    ansible_static
    if ! $STATIC_ONLY; then
        for bin in "$QUANTLENS_BIN" "$QUANTLENS_TRIGGER_BIN"; do
            [ -x "$bin" ] || { fail "binary $bin is missing (set QUANTLENS_BIN / QUANTLENS_TRIGGER_BIN)"; summary; return 1; }
        done
        prepare_root
        if converge_twice; then
            firewall_connectivity
            verify_converged
            ${NO_BOOT:-false} || boot_and_check
        fi
    fi
    summary
    log "timings (s):"
    sed 's/^/    /' "$TIMINGS"
    [ "$FAILED" -eq 0 ]
}

main
