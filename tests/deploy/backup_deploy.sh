# shellcheck shell=bash
# Stages in the booted VM, sourced by run.sh, whose helpers and variables they use:
#   backup_maintain_restore  maintenance, backup and restore as units (each timed), a failing
#                            backup raising the alert, a restore after a simulated disaster;
#   deploy_live              a new release deployed into the running VM through the run lock, a
#                            second deploy with changed=0, dr.yml refusing to restore over tables.

# ---- backup, maintenance, restore in the booted VM ----------------------------------------
# The units as the timers and dr.yml start them, on the demo lake the runs above wrote. The backup
# target is a local directory ($BACKUP_DIR, outside /var/lib/quantlens: the backup role's drop-in
# makes it writable); no object-storage keys are configured, so no unit loads a credential.
backup_maintain_restore() {
    local before after lost=/var/lib/quantlens/lost
    step_start "VM: maintenance, backup, restore"

    # Maintenance: compaction, checkpoint, vacuum, under the run lock.
    check_fails "before the maintenance gold/returns has no checkpoint" \
        ct_sh "ls $DATA/gold/returns/_delta_log/*.checkpoint.parquet"
    step_start "VM: quantlens-maintain.service"
    check "quantlens-maintain.service succeeds" ct systemctl start quantlens-maintain.service
    step_end "VM: quantlens-maintain.service"
    record_time "VM: quantlens-maintain.service, Starting to Finished" "$(unit_last_run quantlens-maintain.service)"
    check "... and did its work (exit 0, not 75: it got the run lock)" \
        test "$(unit_prop quantlens-maintain.service ExecMainStatus)" = 0
    check "it left a checkpoint in gold/returns/_delta_log (_last_checkpoint + .checkpoint.parquet)" \
        ct_sh "ls $DATA/gold/returns/_delta_log/*.checkpoint.parquet && test -s $DATA/gold/returns/_delta_log/_last_checkpoint"
    unit_last_output quantlens-maintain.service | sed -n '/^table /,/^quantlens-maintain/p' | sed '$d; s/^/    /'

    # A failing backup raises the alert; the next good one clears it.
    fail_unit quantlens-backup.service "/opt/quantlens/current/bin/quantlens backup --to /proc/no-such-dir"
    check_fails "a backup to an unusable target fails" ct systemctl start quantlens-backup.service
    check "... and raises the alert (journal at priority err + marker)" \
        wait_for 20 ct_sh "test -e $STATE/alerts/quantlens-backup.service.json && journalctl -b -p err -t quantlens-alert --no-pager | grep -q 'ALERT: quantlens-backup.service failed'"
    # (The daemon caches its look at the state directory for up to 5 s.)
    check "GET /health reports the backup's alert (503)" wait_for 15 health_is 503 quantlens-backup.service
    ct rm -rf /run/systemd/system/quantlens-backup.service.d
    ct systemctl daemon-reload

    # The backup, as the timer starts it.
    step_start "VM: quantlens-backup.service"
    check "quantlens-backup.service succeeds (local target $BACKUP_DIR)" ct systemctl start quantlens-backup.service
    step_end "VM: quantlens-backup.service"
    record_time "VM: quantlens-backup.service (first, full), Starting to Finished" "$(unit_last_run quantlens-backup.service)"
    unit_last_output quantlens-backup.service | grep '^backup ' | sed 's/^/    /'
    check "the successful backup cleared the backup's alert marker" \
        ct test ! -e "$STATE/alerts/quantlens-backup.service.json"
    check "GET /health answers 200 again" wait_for 15 health_is 200
    check "\`sudo quantlens backup list\` (target from backup.env) shows the backup with every table" backups 1
    check "\`sudo quantlens backup verify\` rereads every file of it (size, SHA-256)" \
        ct /usr/local/bin/quantlens backup verify
    check "the backup belongs to the service user" test "$(ct stat -c %U "$BACKUP_DIR/manifests")" = quantlens
    log "lake: $(ct_sh "du -sb --exclude=landing $DATA | cut -f1") bytes of tables in $(ct_sh "find $DATA -path $DATA/landing -prune -o -type f -print | wc -l") files; backup: $(ct_sh "du -sb $BACKUP_DIR | cut -f1") bytes"

    # Restore: never over existing tables.
    before=$(assets_versions)
    printf '%s\n' "$before" | sed 's/^/    before: /'
    check_fails "quantlens-restore.service refuses to restore over existing tables" \
        ct systemctl start quantlens-restore.service
    check "... and raises the alert" wait_for 20 ct test -e "$STATE/alerts/quantlens-restore.service.json"

    # The disaster: everything stopped, the tables gone (the landing files and run records stay).
    ct systemctl stop quantlens-trigger.socket quantlens-trigger.service quantlens-materialize.timer \
        quantlens-maintain.timer quantlens-backup.timer
    ct_sh "mkdir -p $lost && for d in $DATA/*; do [ \"\$d\" = $DATA/landing ] || mv \"\$d\" $lost/; done"
    check "after the disaster DATA_ROOT holds no table" ct_sh "test -z \"\$(find $DATA -name _delta_log)\""
    step_start "VM: quantlens-restore.service"
    check "quantlens-restore.service restores the newest backup" ct systemctl start quantlens-restore.service
    step_end "VM: quantlens-restore.service"
    record_time "VM: quantlens-restore.service, Starting to Finished" "$(unit_last_run quantlens-restore.service)"
    after=$(assets_versions)
    check "the restored lake has the same tables, versions and rows ($(printf '%s\n' "$before" | wc -l) tables)" \
        diff_text "$before" "$after"
    check "the restored tables belong to the service user" \
        test "$(ct_sh "find $DATA ! -user quantlens | head -1")" = ""
    check "the successful restore cleared the restore's alert marker" \
        ct test ! -e "$STATE/alerts/quantlens-restore.service.json"
    ct rm -rf "$lost"
    ct systemctl start quantlens-trigger.socket quantlens-materialize.timer quantlens-maintain.timer \
        quantlens-backup.timer
    check "the timer's run succeeds on the restored lake" ct systemctl start quantlens-materialize.service
    check "no unit failed after backup, maintenance and restore" test -z "$(ct systemctl --failed --plain --no-legend)"
    ct systemctl --failed --no-pager --plain --no-legend | sed 's/^/    failed: /'
    step_end "VM: maintenance, backup, restore"
}

# ---- deploy a new version into the running VM ---------------------------------------------
# The same playbook against the booted VM: the chroot connection with nsenter as its "chroot"
# command, so tasks run inside the container where systemd is PID 1 (the role's live branch:
# units started, handlers restart through the run lock). The new version is a new release name
# for the same build; quantlens_keep_releases=1 makes the role prune the old release, and one more
# frontend address changes the socket's allow-list (and UFW).
# write_live_inventory: inventory/live.yml, whose chroot connection enters the booted VM (LEADER).
write_live_inventory() {
    local exe="$WORK/nsenter-exec"
    cat >"$exe" <<SH
#!/bin/sh
# Called by the chroot connection as: nsenter-exec ROOT /bin/sh -c CMD
shift
exec nsenter -t $LEADER -a ${CT_ENV[*]} "\$@"
SH
    chmod 755 "$exe"
    sed "s|ansible_become: false|ansible_become: false\n      ansible_chroot_exe: $exe|" \
        "$WORK/inventory/hosts.yml" >"$WORK/inventory/live.yml"
}

deploy_live() {
    local out pid
    write_live_inventory
    python3 -c 'import json, sys
v = json.load(open(sys.argv[1])); v.update(quantlens_release="deploy-test-v2", quantlens_keep_releases=1)
v["quantlens_assets_src"] = sys.argv[3]
v["quantlens_trigger_allow_from"].append("10.213.1.3")
json.dump(v, open(sys.argv[2], "w"))' "$WORK/vars.json" "$WORK/vars-live.json" "$REPO/assets"
    # Make the daemon run, so the deploy has to restart it.
    http GET /health >/dev/null || true
    local before
    before=$(unit_prop quantlens-trigger.service InvocationID)

    step_start "deploy: new release into the running VM"
    if play_live site.yml "$WORK/vars-live.json" "$WORK/deploy1.log"; then
        pass "deploy of a new release into the running VM (changed=$(recap_field changed "$WORK/deploy1.log"))"
    else
        fail "deploy of a new release into the running VM"
        tail -40 "$WORK/deploy1.log" | sed 's/^/    | /'
        step_end "deploy: new release into the running VM"
        return 1
    fi
    step_end "deploy: new release into the running VM"
    check "the deploy's handler restarted the daemon through the run lock" \
        grep -q 'RUNNING HANDLER \[quantlens : Restart the trigger daemon when no run is in progress\]' "$WORK/deploy1.log"
    check "a changed allow-list restarted the socket through the run lock" \
        grep -q 'RUNNING HANDLER \[quantlens : Restart the trigger socket when no run is in progress\]' "$WORK/deploy1.log"
    ct ip addr add 10.213.1.3/32 dev lo
    check "the socket now accepts the added address (10.213.1.3)" connect_from 10.213.1.3
    check_fails "... and still drops an address not on the list (10.213.9.9)" connect_from 10.213.9.9
    check "/opt/quantlens/current points at the new release" \
        test "$(ct readlink /opt/quantlens/current)" = releases/deploy-test-v2
    check "the old release was pruned (quantlens_keep_releases=1)" \
        test "$(ct ls /opt/quantlens/releases)" = deploy-test-v2
    out=$(http POST /trigger -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data '{"select": "gold/returns+"}') || true
    local run_id
    run_id=$(json_field "${out% *}" run_id 2>/dev/null || true)
    pid=$(unit_prop quantlens-trigger.service MainPID)
    check "the daemon now runs from the new release" \
        ct_grep '/opt/quantlens/releases/deploy-test-v2/bin/quantlens-trigger' readlink "/proc/$pid/exe"
    check "the daemon is a new invocation after the deploy" \
        test "$(unit_prop quantlens-trigger.service InvocationID)" != "$before"
    check "a run triggered after the deploy (select gold/returns+) succeeds" \
        run_succeeds 300 "$run_id"
    check "the deploy copied the SQL assets and named them in quantlens.env" \
        ct_grep '^ASSETS_DIR=/etc/quantlens/assets$' cat /etc/quantlens/quantlens.env
    check "... and validated them on the VM (quantlens assets check)" \
        grep -q 'TASK \[quantlens : Validate the SQL assets' "$WORK/deploy1.log"
    check "that run built the SQL asset downstream of gold/returns (gold/symbol_summary)" \
        ct test -d /var/lib/quantlens/data/gold/symbol_summary/_delta_log

    step_start "deploy: second run into the running VM"
    if play_live site.yml "$WORK/vars-live.json" "$WORK/deploy2.log" &&
        [ "$(recap_field changed "$WORK/deploy2.log")" = 0 ]; then
        pass "a second deploy into the running VM reports changed=0"
    else
        fail "a second deploy into the running VM reports changed=0 (changed=$(recap_field changed "$WORK/deploy2.log"))"
        grep -B8 -E '^(changed|fatal)' "$WORK/deploy2.log" | sed 's/^/    | /' | head -40
    fi
    step_end "deploy: second run into the running VM"

    # dr.yml on a VM that already has tables: provisions (nothing to change), then refuses to
    # restore over them, before the restore unit is ever started.
    local restores
    restores=$(unit_starts quantlens-restore.service)
    step_start "dr.yml against the running VM (must refuse)"
    if play_live dr.yml "$WORK/vars-live.json" "$WORK/dr.log"; then
        fail "dr.yml must refuse to restore over existing tables, but it succeeded"
    elif grep -q 'already holds [1-9][0-9]* tables' "$WORK/dr.log" &&
        [ "$(unit_starts quantlens-restore.service)" = "$restores" ]; then
        pass "dr.yml provisions, then refuses to restore over existing tables ($(grep -o 'already holds [0-9]* tables' "$WORK/dr.log" | head -1)); restore never started"
    else
        fail "dr.yml failed for another reason"
        tail -30 "$WORK/dr.log" | sed 's/^/    | /'
    fi
    step_end "dr.yml against the running VM (must refuse)"
    check "the socket is still listening after the deploys" ct systemctl is-active quantlens-trigger.socket
    check "no unit failed after the deploys" test -z "$(ct systemctl --failed --plain --no-legend)"
}
