# shellcheck shell=bash
# Safe defaults (issue 12, part 3), sourced by run.sh, whose helpers and variables it uses:
#   unsafe_inventory_refused  an inventory with an unauthenticated trigger off loopback, no backup
#                             target, no heartbeat, no admin addresses or users: site.yml stops
#                             before any change and names every problem; each opt-out, written
#                             down, is accepted.
#   planted_links_refused     the service user plants symbolic links where its directories and
#                             run lock belong: ansible.builtin.file would chown a link's target
#                             and root's flock would create one (both reproduced), while site.yml
#                             refuses the link and the deploy's lock helper never opens it as root.
#   hardening_in_vm           in the booted VM: sshd's effective settings and a real login that
#                             is offered no password; unattended security upgrades configured and
#                             their timer armed; the run lock is held by the service user.

# vars_with NAME PYTHON: $WORK/vars-NAME.json is vars.json changed by PYTHON (on the dict v).
vars_with() {
    python3 -c 'import json, sys
v = json.load(open(sys.argv[1])); exec(sys.argv[3]); json.dump(v, open(sys.argv[2], "w"))' \
        "$WORK/vars.json" "$WORK/vars-$1.json" "$2"
}

unsafe_inventory_refused() {
    local log="$WORK/convergeunsafe.log" before problem
    before=$(readlink "$ROOT/opt/quantlens/current")
    step_start "preflight refuses an unsafe inventory"
    vars_with unsafe 'v.update(quantlens_trigger_listen="10.213.1.1", quantlens_trigger_token="",
    backup_to="", quantlens_allow_no_heartbeat=False, quantlens_admin_cidrs=[], quantlens_admin_users=[])'
    if converge unsafe "$WORK/vars-unsafe.json"; then
        fail "site.yml must refuse an unauthenticated trigger on 10.213.1.1, no backup, no heartbeat, no admins; it succeeded"
    else
        grep -o 'Refusing to provision[^"]*' "$log" | head -1 | cut -c1-200 | sed 's/^/    /'
        for problem in "with no bearer token" "No backup target" "No heartbeat URL" \
            "quantlens_admin_cidrs is empty" "No SSH user would be allowed"; do
            check "the refusal names: $problem" grep -q "$problem" "$log"
        done
        check "... before changing anything (changed=0)" test "$(recap_field changed "$log")" = 0
    fi
    vars_with optout 'v.update(quantlens_trigger_listen="10.213.1.1", quantlens_trigger_token="",
    backup_to="", quantlens_allow_no_heartbeat=True, quantlens_admin_cidrs=["any"],
    quantlens_trigger_allow_unauthenticated=True, quantlens_allow_no_backup=True)'
    check "each opt-out written in the inventory is accepted (the preflight passes)" \
        converge optout "$WORK/vars-optout.json" --tags preflight
    check "... the preflight did run there (its task is in the log)" \
        grep -q 'TASK \[preflight : Refuse an unsafe configuration before changing anything\]' "$WORK/convergeoptout.log"
    check "nothing was installed: current still points at $before" \
        test "$(readlink "$ROOT/opt/quantlens/current")" = "$before"
    step_end "preflight refuses an unsafe inventory"
}

# as_service_user CMD: a shell command run as the quantlens user in the converged root.
as_service_user() { in_vm_chroot runuser -u quantlens -- sh -c "$1"; }

planted_links_refused() {
    local state=/var/lib/quantlens/state planted=/etc/quantlens/planted-by-quantlens
    step_start "planted symbolic links"
    # What the role did before: ansible.builtin.file with owner= follows the link and hands its
    # target (here a scratch directory of root's) to the service user.
    install -d -m 0700 "$ROOT/root/scratch"
    as_service_user "ln -s /root/scratch $state/scratch"
    ip netns exec "$NS" env ANSIBLE_CONFIG="$REPO/ansible/ansible.cfg" ANSIBLE_NOCOLOR=1 \
        ansible testvm -i "$WORK/inventory/hosts.yml" -m ansible.builtin.file \
        -a "path=$state/scratch state=directory owner=quantlens mode=0750" >"$WORK/file-follows.log" 2>&1 || true
    check "reproduced: ansible.builtin.file state=directory owner= on a planted link chowns its target" \
        test "$(stat -c %u "$ROOT/root/scratch")" = "$(stat -c %u "$ROOT$state")"
    rm -rf "$ROOT/root/scratch" "$ROOT$state/scratch"

    as_service_user "mv $state/alerts $state/alerts.real && ln -s /etc/quantlens/credentials $state/alerts"
    if converge links; then
        fail "site.yml must refuse $state/alerts planted as a link to /etc/quantlens/credentials; it succeeded"
    elif grep -q "refusing: $state/alerts is a symbolic link" "$WORK/convergelinks.log"; then
        pass "site.yml refuses $state/alerts planted by the service user as a link to /etc/quantlens/credentials"
    else
        fail "site.yml failed for another reason than the planted link"
        tail -30 "$WORK/convergelinks.log" | sed 's/^/    | /'
    fi
    check "... and the link's target kept its owner and mode (root:root 700)" \
        test "$(stat -c %u:%g:%a "$ROOT/etc/quantlens/credentials")" = 0:0:700

    as_service_user "mv $state/run.lock $state/run.lock.real && ln -s $planted $state/run.lock"
    in_vm_chroot flock --wait 2 "$state/run.lock" true || true
    check "reproduced: root's flock on the planted run lock creates the link's target in /etc/quantlens" \
        test -e "$ROOT$planted"
    rm -f "$ROOT$planted"
    check_fails "the deploy's lock helper does not take a planted run lock" \
        in_vm_chroot /usr/local/lib/quantlens/with-run-lock quantlens 2 "$state/run.lock" true
    check "... and creates nothing where the link points" test ! -e "$ROOT$planted"

    as_service_user "rm $state/alerts $state/run.lock && mv $state/alerts.real $state/alerts && mv $state/run.lock.real $state/run.lock"
    check "the service user's directories are back (real directory and lock file)" \
        test -d "$ROOT$state/alerts" -a ! -L "$ROOT$state/alerts" -a -f "$ROOT$state/run.lock" -a ! -L "$ROOT$state/run.lock"
    step_end "planted symbolic links"
}

hardening_in_vm() {
    local sshd_t out
    step_start "hardening in the booted VM"
    sshd_t=$(ct sshd -T -C user=admin,host=admin.example,addr=10.213.1.2 2>&1 || true)
    check "sshd: PasswordAuthentication no" grep -qx 'passwordauthentication no' <<<"$sshd_t"
    check "sshd: KbdInteractiveAuthentication no" grep -qx 'kbdinteractiveauthentication no' <<<"$sshd_t"
    check "sshd: PermitRootLogin no" grep -qx 'permitrootlogin no' <<<"$sshd_t"
    check "sshd: AllowUsers admin (quantlens_admin_users)" grep -qx 'allowusers admin' <<<"$sshd_t"
    check "ssh.service is active" ct systemctl is-active ssh.service
    out=$(ct ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ConnectTimeout=5 root@127.0.0.1 true 2>&1 || true)
    check "a real SSH login as root is refused and offered keys only: $(tail -1 <<<"$out")" \
        grep -q 'Permission denied (publickey)' <<<"$out"
    out=$(ct apt-config dump 2>&1 || true)
    check "apt: APT::Periodic::Update-Package-Lists \"1\"" grep -qx 'APT::Periodic::Update-Package-Lists "1";' <<<"$out"
    check "apt: APT::Periodic::Unattended-Upgrade \"1\"" grep -qx 'APT::Periodic::Unattended-Upgrade "1";' <<<"$out"
    check "unattended-upgrades takes Debian's security archive only" \
        test "$(grep '^Unattended-Upgrade::Origins-Pattern:: ' <<<"$out" | grep -vc 'label=Debian-Security')" = 0
    out=$(ct unattended-upgrade --dry-run --debug 2>&1 || true)
    check "unattended-upgrade --dry-run reads those origins" \
        grep -q 'Allowed origins are: origin=Debian,codename=bookworm-security,label=Debian-Security' <<<"$out"
    check "apt-daily-upgrade.timer is armed" ct systemctl is-active apt-daily-upgrade.timer
    check "the deploy's lock helper holds the run lock as the service user" \
        test "$(ct /usr/local/lib/quantlens/with-run-lock quantlens 5 "$STATE/run.lock" ps -o user= -C flock)" = quantlens
    step_end "hardening in the booted VM"
}
