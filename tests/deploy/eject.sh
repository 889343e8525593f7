# shellcheck shell=bash
# The eject path, sourced by run.sh, whose helpers and variables it uses: an S3-compatible server
# (moto) in the VM's network namespace, then dr.yml moves the lake into a bucket the documented
# way, and every unit that touches the lake works on it with the keys from LoadCredential=.

# ---- the eject path: DATA_ROOT on object storage --------------------------------------------
# An S3-compatible server (moto) runs on the VM's loopback (in its network namespace); the lake
# moves there the documented way: a fresh backup, then dr.yml with quantlens_data_root=s3://...
# (the landing files stay local), which restores the newest backup into the bucket. Then every
# unit that touches the lake must work on it with the keys handed over by LoadCredential=.
eject_to_object_storage() {
    local secret out run_id pid before after version unit restores
    local bucket=quantlens-lake endpoint=http://127.0.0.1:9000
    step_start "eject: S3 server in the VM"
    nsenter -t "$LEADER" -n "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p 9000 >"$WORK/moto.log" 2>&1 &
    MOTO_PID=$!
    if ! wait_for 60 ct curl -sf -o /dev/null "$endpoint/"; then
        fail "moto_server listens in the VM's network namespace"
        tail -20 "$WORK/moto.log" | sed 's/^/    | /'
        step_end "eject: S3 server in the VM"
        return 1
    fi
    ct curl -sf -o /dev/null -X PUT "$endpoint/$bucket"
    step_end "eject: S3 server in the VM"

    # docs/operations.md, "The eject path": stop everything, a fresh backup, dr.yml.
    ct systemctl stop quantlens-trigger.socket quantlens-trigger.service quantlens-materialize.timer \
        quantlens-maintain.timer quantlens-backup.timer
    check "a fresh backup before the move (quantlens-backup.service)" ct systemctl start quantlens-backup.service
    restores=$(unit_starts quantlens-restore.service)
    before=$(assets_versions)
    secret="qltest-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
v.update(quantlens_data_root="s3://" + sys.argv[3] + "/lake",
         quantlens_landing_dir="/var/lib/quantlens/data/landing/prices",
         quantlens_s3_access_key_id="qltest-access", quantlens_s3_secret_access_key=sys.argv[4],
         quantlens_s3_region="us-east-1", quantlens_s3_endpoint=sys.argv[5],
         quantlens_s3_allow_http=True)
json.dump(v, open(sys.argv[2], "w"))' "$WORK/vars-live.json" "$WORK/vars-eject.json" "$bucket" "$secret" "$endpoint"

    step_start "eject: dr.yml restores the lake into s3://"
    if play_live dr.yml "$WORK/vars-eject.json" "$WORK/eject.log"; then
        pass "dr.yml with DATA_ROOT=s3://$bucket/lake provisions, restores the newest backup there, starts the platform"
    else
        fail "dr.yml with DATA_ROOT=s3://$bucket/lake"
        tail -40 "$WORK/eject.log" | sed 's/^/    | /'
        step_end "eject: dr.yml restores the lake into s3://"
        return 1
    fi
    step_end "eject: dr.yml restores the lake into s3://"
    record_time "eject: quantlens-restore.service into s3://, Starting to Finished" "$(unit_last_run quantlens-restore.service)"
    check "dr.yml started quantlens-restore.service once, and it restored into the bucket" \
        test "$(unit_starts quantlens-restore.service)" = $((restores + 1)) -a \
        -n "$(unit_last_output quantlens-restore.service | grep "restored into s3://$bucket/lake/")"
    unit_last_output quantlens-restore.service | sed 's/^/    /'
    check "dr.yml's check listed the restored tables (sudo quantlens assets)" grep -q 'gold/returns' "$WORK/eject.log"
    after=$(assets_versions)
    check "the s3:// lake has the backup's tables, versions and rows (\`sudo quantlens assets\`: keys from s3.env)" \
        diff_text "$before" "$after"
    check "the bucket holds the tables (lake/gold/returns/_delta_log/)" \
        ct_grep 'lake/gold/returns/_delta_log/0{20}\.json' curl -sf "$endpoint/$bucket?list-type=2&prefix=lake/gold/returns/_delta_log/"

    # The keys: a root-only file, handed over by LoadCredential= to exactly the units that touch
    # object storage, never in the environment file, a unit or a drop-in.
    for unit in quantlens-trigger.service quantlens-materialize.service quantlens-maintain.service \
        quantlens-backup.service quantlens-restore.service; do
        check "$unit loads the credential (30-s3.conf: LoadCredential=s3.env, QUANTLENS_S3_CREDENTIALS)" \
            has_s3_credential "$unit"
    done
    check "no credential for the alert hook" no_s3_credential_dropins quantlens-alert@x.service
    check "/etc/quantlens/credentials/s3.env is root:root 0600" \
        test "$(ct stat -c '%U:%G %a' /etc/quantlens/credentials/s3.env)" = "root:root 600"
    check "the secret key is in no environment file, unit, drop-in or wrapper (grep exits 1)" \
        ct_sh "grep -rqF '$secret' /etc/quantlens/quantlens.env /etc/quantlens/backup.env /etc/systemd/system /run/systemd/system /usr/local/bin/quantlens; test \$? = 1"
    check "the socket and the timers run again after dr.yml" ct systemctl is-active quantlens-trigger.socket \
        quantlens-materialize.timer quantlens-maintain.timer quantlens-backup.timer

    # New landing files, then a run through the daemon: its worker reads and commits in the bucket.
    check "new landing files (5 more days, after the demo's)" \
        ct /usr/local/bin/quantlens demo --symbols 8 --days 5 --start 2031-01-06
    out=$(http POST /trigger -H "Authorization: Bearer $TOKEN") || true
    run_id=$(json_field "${out% *}" run_id 2>/dev/null || true)
    pid=$(unit_prop quantlens-trigger.service MainPID)
    check "the secret key is not in the daemon's environment" \
        ct_sh "test $pid -gt 0 && ! grep -qF '$secret' /proc/$pid/environ"
    check "a run through the daemon on the s3:// lake succeeds (its worker gets the daemon's credential)" \
        run_succeeds 300 "$run_id"
    after=$(assets_versions)
    check "... and committed new versions in the bucket (gold/returns)" \
        test "$(grep '^gold/returns ' <<<"$after")" != "$(grep '^gold/returns ' <<<"$before")"
    check "the timer's run succeeds on the s3:// lake" ct systemctl start quantlens-materialize.service
    step_start "eject: quantlens-maintain.service on s3://"
    check "the maintenance succeeds on the s3:// lake" ct systemctl start quantlens-maintain.service
    step_end "eject: quantlens-maintain.service on s3://"
    record_time "eject: quantlens-maintain.service on s3://, Starting to Finished" "$(unit_last_run quantlens-maintain.service)"
    version=$(sed -n 's/^gold\/returns \([0-9]*\) .*/\1/p' <<<"$after")
    check "... and wrote a checkpoint at gold/returns' new version ($version) in the bucket" \
        ct_grep "_delta_log/$(printf '%020d' "${version:-0}")\.checkpoint\.parquet" \
        curl -sf "$endpoint/$bucket?list-type=2&prefix=lake/gold/returns/_delta_log/"
    step_start "eject: quantlens-backup.service of the s3:// lake"
    check "the backup of the s3:// lake (to the local target) succeeds" ct systemctl start quantlens-backup.service
    step_end "eject: quantlens-backup.service of the s3:// lake"
    record_time "eject: quantlens-backup.service of s3:// (incremental), Starting to Finished" "$(unit_last_run quantlens-backup.service)"
    check "the newest backup's source is the bucket" \
        ct_grep "s3://$bucket/lake" sh -c '/usr/local/bin/quantlens backup list | tail -1'
    check "no unit failed after the eject" test -z "$(ct systemctl --failed --plain --no-legend)"
    ct systemctl --failed --no-pager --plain --no-legend | sed 's/^/    failed: /'
}
