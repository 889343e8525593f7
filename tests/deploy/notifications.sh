# shellcheck shell=bash
# Notifications in the booted VM, sourced by run.sh, whose helpers and variables it uses: a
# webhook and a heartbeat on the VM's loopback; the timer's run pings the heartbeat, a failed run
# is told once, a run killed by TimeoutStartSec= is told once by the OnFailure hook, and the
# hourly freshness check tells stale data once.

# ---- failure notifications through the units -------------------------------------------------
# A receiver on 127.0.0.1:9100 in the VM's network namespace (python3 on this machine, recording
# each POST as a JSON line), the playbook converged with a webhook and a heartbeat, then the
# timer's unit run once successfully and once failing on a blocking check: the heartbeat is
# pinged, then the failure told once to the webhook and the heartbeat's /fail, by the worker the
# unit runs, with the URLs handed over by LoadCredential=.
notifications_in_vm() {
    local received="$WORK/received.jsonl" out doomed=/etc/quantlens/assets/gold/doomed.sql
    step_start "notifications in the booted VM"
    : >"$received"
    nsenter -t "$LEADER" -n python3 -c '
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
out = sys.argv[1]
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        with open(out, "a") as f:
            f.write(json.dumps({"path": self.path, "body": body}) + "\n")
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", 9100), Handler).serve_forever()' "$received" &
    LISTENER_PIDS="$LISTENER_PIDS $!"
    python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
v.update(quantlens_notify_webhook="http://127.0.0.1:9100/hook",
         quantlens_heartbeat_url="http://127.0.0.1:9100/hc/deploy-test")
json.dump(v, open(sys.argv[2], "w"))' "$WORK/vars-live.json" "$WORK/vars-notify.json"
    if play_live site.yml "$WORK/vars-notify.json" "$WORK/notify.log"; then
        pass "site.yml with a webhook and a heartbeat configured"
    else
        fail "site.yml with a webhook and a heartbeat configured"
        tail -40 "$WORK/notify.log" | sed 's/^/    | /'
        step_end "notifications in the booted VM"
        return 1
    fi
    check "the channels are a root-only credential (0600 root:root)" \
        test "$(ct stat -c '%a %U:%G' /etc/quantlens/credentials/notify)" = "600 root:root"
    check_fails "the URLs are not in quantlens.env" ct grep -q 9100 /etc/quantlens/quantlens.env
    for unit in quantlens-trigger.service quantlens-materialize.service quantlens-backup.service \
        quantlens-health.service; do
        check "$unit loads the notify credential and may reach the receivers" \
            ct_sh "systemctl cat $unit | grep -q '^LoadCredential=notify:' && test -z \"\$(systemctl show -p IPAddressDeny --value $unit)\""
    done
    check "the timer's unit succeeds" ct systemctl start quantlens-materialize.service
    check "... and pings the heartbeat once" \
        test "$(grep -c '"path": "/hc/deploy-test"' "$received")" = 1
    ct_sh "mkdir -p /etc/quantlens/assets/gold && printf '%s\n' '-- quantlens:' '--   materialize: table' '--   checks:' '--     - row_count: {min: 1000000000}' 'SELECT symbol, count(*) AS days FROM silver_prices GROUP BY symbol' >$doomed"
    check_fails "with an asset whose blocking check fails, the timer's unit fails" \
        ct systemctl start quantlens-materialize.service
    check "the webhook was told once: run_failed, naming the asset and the check" \
        python3 -c 'import json, sys
hooks = [json.loads(json.loads(l)["body"]) for l in open(sys.argv[1]) if json.loads(l)["path"] == "/hook"]
assert len(hooks) == 1, hooks
h = hooks[0]
assert h["event"] == "run_failed" and h["assets"][0]["asset"] == "gold/doomed", h
assert "blocking check `row_count` failed" in h["assets"][0]["error"], h' "$received"
    check "the heartbeat's /fail was told once" \
        test "$(grep -c '"path": "/hc/deploy-test/fail"' "$received")" = 1
    sed 's/^/    received: /' "$received" | cut -c1-220
    ct rm -f "$doomed"
    # A run that hangs past its timeout is killed by systemd: the worker cannot tell, so the
    # OnFailure= hook does, once.
    ct mkdir -p /run/systemd/system/quantlens-materialize.service.d
    ct_sh "printf '[Service]\\nExecStart=\\nExecStart=/bin/sleep 60\\nTimeoutStartSec=2\\n' >/run/systemd/system/quantlens-materialize.service.d/99-fail.conf"
    ct systemctl daemon-reload
    check_fails "a timer run that outlives TimeoutStartSec fails the unit" ct systemctl start quantlens-materialize.service
    check "the OnFailure hook told the webhook once: unit_failed, result=timeout" \
        wait_for 30 python3 -c 'import json, sys
hooks = [json.loads(json.loads(l)["body"]) for l in open(sys.argv[1]) if json.loads(l)["path"] == "/hook"]
unit = [h for h in hooks if h["event"] == "unit_failed"]
assert len(unit) == 1 and "quantlens-materialize.service failed (result=timeout" in unit[0]["error"], hooks' "$received"
    check "the hook itself finished and succeeded" \
        wait_for 20 ct_sh "test \"\$(systemctl show -p ActiveState --value quantlens-alert@quantlens-materialize.service.service)\" = inactive -a \"\$(systemctl show -p Result --value quantlens-alert@quantlens-materialize.service.service)\" = success"
    check "a failed run (exit 1) was not told a second time by the hook" \
        test "$(grep -c '"path": "/hook"' "$received")" = 2
    ct rm -rf /run/systemd/system/quantlens-materialize.service.d
    ct systemctl daemon-reload
    check "the next run succeeds again (and clears the alert marker)" \
        ct_sh "systemctl start quantlens-materialize.service && ! test -e $STATE/alerts/quantlens-materialize.service.json"
    # Stale data, told by the hourly freshness check (quantlens-health.service), here with a bound
    # of one second and no schedule: once, however often the check runs.
    local fails
    fails=$(grep -c '"path": "/hc/deploy-test/fail"' "$received")
    ct mkdir -p /run/systemd/system/quantlens-health.service.d
    ct_sh "printf '[Service]\\nExecStart=\\nExecStart=/usr/bin/env -u QUANTLENS_SCHEDULE /opt/quantlens/current/bin/quantlens health --notify --max-age 1\\n' >/run/systemd/system/quantlens-health.service.d/99-stale.conf"
    ct systemctl daemon-reload
    sleep 2
    check "the freshness check runs twice on stale data and succeeds both times (exit 1 is its verdict)" \
        ct_sh "systemctl start quantlens-health.service && systemctl start quantlens-health.service"
    check "the webhook was told once: data_stale, with the last success" \
        python3 -c 'import json, sys
hooks = [json.loads(json.loads(l)["body"]) for l in open(sys.argv[1]) if json.loads(l)["path"] == "/hook"]
stale = [h for h in hooks if h["event"] == "data_stale"]
assert len(stale) == 1 and stale[0]["run_id"] and "more than the 1 s allowed" in stale[0]["error"], hooks' "$received"
    check "... and the heartbeat's /fail once more" \
        test "$(grep -c '"path": "/hc/deploy-test/fail"' "$received")" = $((fails + 1))
    ct rm -rf /run/systemd/system/quantlens-health.service.d
    ct systemctl daemon-reload
    check "quantlens-health.timer is armed: next $(unit_prop quantlens-health.timer NextElapseUSecRealtime)" \
        test -n "$(unit_prop quantlens-health.timer NextElapseUSecRealtime)"
    step_end "notifications in the booted VM"
}
