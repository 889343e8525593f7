# shellcheck shell=bash
# Where the binaries come from (issue 12, part 2), sourced by run.sh, whose helpers it uses:
#   wrong_binaries    the role refuses a binary built for another machine (ELF header) and
#                     binaries that do not match their SHA256SUMS, before anything is installed.
#   release_from_url  quantlens_release_url: a release tarball served over HTTP (in the VM's
#                     network namespace, where the converge runs) is downloaded, checked against
#                     the .sha256 beside it and installed; a tarball whose checksum does not
#                     match is refused before anything is installed.

# The role must refuse a binary built for another machine, and binaries that do not match their
# SHA256SUMS, before anything is installed: `current` keeps pointing at the converged release.
wrong_binaries() {
    local dir before releases
    before=$(readlink "$ROOT/opt/quantlens/current")
    releases=$(ls "$ROOT/opt/quantlens/releases" | wc -l)
    step_start "deploy refuses wrong binaries"
    dir="$WORK/artifacts-aarch64"
    cp -r "$WORK/artifacts" "$dir"
    # e_machine (ELF header bytes 18-19, little-endian) = 0x00B7: an aarch64 binary.
    printf '\267\000' | dd of="$dir/quantlens" bs=1 seek=18 conv=notrunc status=none
    (cd "$dir" && sha256sum quantlens quantlens-trigger >SHA256SUMS)
    vars_with aarch64 "v['quantlens_artifact_dir'] = '$dir'"
    if converge arch "$WORK/vars-aarch64.json"; then
        fail "site.yml must refuse a worker built for aarch64 on an x86_64 host, but it succeeded"
    elif grep -q "quantlens is built for aarch64, but testvm is x86_64: use the x86_64-unknown-linux-gnu build" "$WORK/convergearch.log"; then
        pass "site.yml refuses a worker built for aarch64 on x86_64, naming the build to use"
    else
        fail "site.yml failed for another reason than the architecture"
        tail -30 "$WORK/convergearch.log" | sed 's/^/    | /'
    fi
    grep -o "quantlens is built for aarch64[^\"]*" "$WORK/convergearch.log" | head -1 | sed 's/^/    /'

    dir="$WORK/artifacts-mismatch"
    cp -r "$WORK/artifacts" "$dir"
    sed -i '1s/^[0-9a-f]*/0000000000000000000000000000000000000000000000000000000000000000/' "$dir/SHA256SUMS"
    vars_with mismatch "v['quantlens_artifact_dir'] = '$dir'"
    if converge sums "$WORK/vars-mismatch.json"; then
        fail "site.yml must refuse binaries that do not match their SHA256SUMS, but it succeeded"
    elif grep -q "does not match its line in SHA256SUMS" "$WORK/convergesums.log"; then
        pass "site.yml refuses binaries that do not match their SHA256SUMS"
    else
        fail "site.yml failed for another reason than the checksum"
        tail -30 "$WORK/convergesums.log" | sed 's/^/    | /'
    fi
    check "nothing was installed: current still points at $before" \
        test "$(readlink "$ROOT/opt/quantlens/current")" = "$before"
    check "... and no release directory was added" \
        test "$(ls "$ROOT/opt/quantlens/releases" | wc -l)" = "$releases"
    step_end "deploy refuses wrong binaries"
}


release_from_url() {
    local before releases dir="$WORK/release" target name server
    before=$(readlink "$ROOT/opt/quantlens/current")
    releases=$(ls "$ROOT/opt/quantlens/releases" | wc -l)
    target="$(uname -m)-unknown-linux-gnu"
    step_start "deploy from a release URL"
    # The tarball as scripts/package-release packs it, with its .sha256 beside it; and a copy whose
    # published sum is wrong (a damaged download or a tampered mirror).
    mkdir -p "$dir/pack/$target"
    cp "$WORK/artifacts/quantlens" "$WORK/artifacts/quantlens-trigger" "$WORK/artifacts/SHA256SUMS" "$dir/pack/$target/"
    tar -C "$dir/pack" -czf "$dir/quantlens-test-$target.tar.gz" "$target"
    (cd "$dir" && sha256sum "quantlens-test-$target.tar.gz" >"quantlens-test-$target.tar.gz.sha256")
    cp "$dir/quantlens-test-$target.tar.gz" "$dir/quantlens-bad-$target.tar.gz"
    printf '%064d  %s\n' 0 "quantlens-bad-$target.tar.gz" >"$dir/quantlens-bad-$target.tar.gz.sha256"
    ip netns exec "$NS" python3 -m http.server 8700 --bind 127.0.0.1 --directory "$dir" >"$WORK/release-http.log" 2>&1 &
    server=$!
    LISTENER_PIDS="$LISTENER_PIDS $server"
    wait_for 10 ip netns exec "$NS" python3 -c 'import socket; socket.create_connection(("127.0.0.1", 8700), timeout=1)' || true

    for name in test bad; do
        vars_with "url-$name" "v.pop('quantlens_artifact_dir'); v['quantlens_release_cache'] = '$WORK/release-cache'
v['quantlens_release_url'] = 'http://127.0.0.1:8700/quantlens-$name-{{ ansible_facts.architecture }}-unknown-linux-gnu.tar.gz'"
    done
    if converge url "$WORK/vars-url-test.json"; then
        pass "site.yml installs from quantlens_release_url (downloaded, sum checked, unpacked on the controller)"
    else
        fail "site.yml installs from quantlens_release_url"
        tail -30 "$WORK/convergeurl.log" | sed 's/^/    | /'
    fi
    check "... the tarball's own directory holds the binaries and their SHA256SUMS" \
        test -f "$WORK/release-cache/quantlens-test-$target/$target/SHA256SUMS"
    check "... the same binaries are the same release: current still points at $before" \
        test "$(readlink "$ROOT/opt/quantlens/current")" = "$before"
    if converge urlbad "$WORK/vars-url-bad.json"; then
        fail "site.yml must refuse a release tarball that does not match its .sha256, but it succeeded"
    elif grep -q "did not match" "$WORK/convergeurlbad.log"; then
        pass "site.yml refuses a release tarball that does not match its published .sha256"
    else
        fail "site.yml failed for another reason than the tarball's checksum"
        tail -30 "$WORK/convergeurlbad.log" | sed 's/^/    | /'
    fi
    check "... and installed nothing (current unchanged, no release added)" \
        test "$(readlink "$ROOT/opt/quantlens/current")" = "$before" -a "$(ls "$ROOT/opt/quantlens/releases" | wc -l)" = "$releases"
    kill "$server" 2>/dev/null || true
    step_end "deploy from a release URL"
}
