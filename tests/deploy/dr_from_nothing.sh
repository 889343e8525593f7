# shellcheck shell=bash
# Disaster recovery from nothing (issue 12, part 4), sourced by run.sh, whose helpers and VM it
# uses; it runs last, after the eject stage left an S3-compatible server (moto) in the VM's
# network namespace and the lake in a bucket there.
#   1. The old VM backs up to s3://quantlens-dr/daily (the source: its tables, versions, rows
#      and last successful run), then is shut down for good. moto keeps the network namespace.
#   2. A new root is extracted from the debootstrap cache (nothing of QuantLens in it) and booted
#      with systemd-nspawn in that namespace, so it reaches the same S3 server on 127.0.0.1.
#   3. dr.yml, as an operator runs it from nothing (provisioning included, the backup on s3://,
#      read with the backup target's own keys, quantlens_backup_s3_*), then the checks: the same tables at the same versions with the same rows, /health
#      healthy with the old VM's last success (the run records travel in the manifest), the
#      socket answering, the timers armed, one run through the daemon succeeding.
# Each step is timed; their sum is the software part of the RTO (docs/operations.md).

dr_from_nothing() {
    local bucket=quantlens-dr endpoint=http://127.0.0.1:9000 source last out run_id t0 secs
    local root2="$WORK/root-dr"
    [ -n "$MOTO_PID" ] || { fail "dr from nothing needs the eject stage's S3 server"; return 1; }
    step_start "dr: backup of the old VM to s3://"
    ct curl -sf -o /dev/null -X PUT "$endpoint/$bucket"
    check "the old VM backs up to s3://$bucket/daily" \
        ct /usr/local/bin/quantlens backup --to "s3://$bucket/daily"
    source=$(assets_versions)
    out=$(http GET /health) || true
    last=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["last_success"]["run_id"])' "${out% *}" 2>/dev/null || true)
    log "source: $(wc -l <<<"$source") tables, last success $last"
    step_end "dr: backup of the old VM to s3://"

    step_start "dr: the old VM is lost"
    stop_vm
    check "the old VM is down, the S3 server still up (it holds the network namespace)" \
        kill -0 "$MOTO_PID"
    step_end "dr: the old VM is lost"

    t0=$(date +%s.%N)
    step_start "dr: a blank Debian root"
    mkdir -p "$root2"
    tar -C "$root2" --zstd -xpf "$ROOT_TARBALL" --numeric-owner
    check "the new root holds nothing of QuantLens" test ! -e "$root2/opt/quantlens" -a ! -e "$root2/etc/quantlens"
    step_end "dr: a blank Debian root"

    step_start "dr: boot the blank root"
    if ! boot_vm "$root2" "$WORK/boot-dr.log" "--network-namespace-path=/proc/$MOTO_PID/ns/net"; then
        step_end "dr: boot the blank root"
        return 1
    fi
    step_end "dr: boot the blank root"
    write_live_inventory
    python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
v.update(backup_to="s3://" + sys.argv[3] + "/daily",
         quantlens_backup_s3_access_key_id="qltest-backup", quantlens_backup_s3_secret_access_key="qltest-dr-secret",
         quantlens_s3_region="us-east-1", quantlens_s3_endpoint=sys.argv[4], quantlens_s3_allow_http=True)
json.dump(v, open(sys.argv[2], "w"))' "$WORK/vars-live.json" "$WORK/vars-dr.json" "$bucket" "$endpoint"

    step_start "dr: dr.yml from nothing (provision, restore from s3://, start)"
    if play_live dr.yml "$WORK/vars-dr.json" "$WORK/dr-nothing.log"; then
        pass "dr.yml on a blank VM: provisions, restores the newest backup from s3://$bucket/daily, starts the platform"
    else
        fail "dr.yml on a blank VM"
        tail -40 "$WORK/dr-nothing.log" | sed 's/^/    | /'
        step_end "dr: dr.yml from nothing (provision, restore from s3://, start)"
        return 1
    fi
    step_end "dr: dr.yml from nothing (provision, restore from s3://, start)"
    record_time "dr: quantlens-restore.service from s3://, Starting to Finished" "$(unit_last_run quantlens-restore.service)"
    check "the restore read s3:// with the backup target's own keys only (31-backup-s3.conf; no s3.env)" \
        restore_uses_backup_key_only

    step_start "dr: the restored VM answers"
    check "the restored lake equals the source: every table at the same version with the same rows" \
        diff_text "$source" "$(assets_versions)"
    check "GET /health is 200 ok, with the old VM's last success ($last)" health_is 200 "\"run_id\":\"$last\""
    check "the socket and the timers are active" ct systemctl is-active quantlens-trigger.socket \
        quantlens-materialize.timer quantlens-maintain.timer quantlens-backup.timer quantlens-health.timer
    check "the materialisation timer is armed: next $(unit_prop quantlens-materialize.timer NextElapseUSecRealtime)" \
        test -n "$(unit_prop quantlens-materialize.timer NextElapseUSecRealtime)"
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    record_time "dr: blank root to a healthy, answering VM (extract, boot, dr.yml, checks)" "$secs"
    log "blank root to a healthy, answering VM: $secs s"
    step_end "dr: the restored VM answers"

    step_start "dr: the first run after the restore"
    check "new landing files (5 more days)" ct /usr/local/bin/quantlens demo --symbols 8 --days 5 --start 2031-03-03
    out=$(http POST /trigger -H "Authorization: Bearer $TOKEN") || true
    run_id=$(json_field "${out% *}" run_id 2>/dev/null || true)
    check "a run through the daemon after the restore succeeds ($run_id)" run_succeeds 300 "$run_id"
    check "... and moved gold/returns past the restored version" \
        test "$(grep '^gold/returns ' <<<"$(assets_versions)")" != "$(grep '^gold/returns ' <<<"$source")"
    check "no unit failed on the restored VM" test -z "$(ct systemctl --failed --plain --no-legend)"
    step_end "dr: the first run after the restore"
}

restore_uses_backup_key_only() {
    ct systemctl cat quantlens-restore.service |
        grep -qx 'Environment=QUANTLENS_BACKUP_CREDENTIALS=%d/backup-s3.env' &&
        ! ct test -e /etc/quantlens/credentials/s3.env
}
