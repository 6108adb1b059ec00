#!/usr/bin/env bash
# tallyfy-sync under a real systemd: boots a minimal Debian bookworm container with
# systemd-nspawn, installs the Debian package (apt install ./tallyfy-sync_*.deb: the files land,
# the account exists, the service is neither enabled nor started), and checks that a command
# run as root reads the token file the unit loads, Type=notify readiness,
# syncing into the fake API on the host, a launch folder that moves launched files to
# processed/ (writable through a ReadWritePaths= drop-in), the journal (fields, no colour, no
# second timestamp),
# the watchdog, reload, a clean stop, exit 78 without restarts on a broken config, the unit's
# hardening (systemd-analyze security and verify), and the package's removal.
# Needs root, systemd-nspawn and debootstrap; says "SKIPPED: why" and exits 0 where a container
# cannot be booted. The container root is cached in target/nspawn/. DEB=path installs that
# package; by default packaging/build-deb builds one.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)

skip() {
    echo "SKIPPED: $*"
    exit 0
}
step() { echo "== $*"; }
# A step that checks something; the closing line counts them.
checks=0
passed=0
check() {
    passed=$checks
    checks=$((checks + 1))
    step "$@"
}

[ "$(id -u)" = 0 ] || skip "the systemd container test needs root"
for tool in systemd-nspawn debootstrap nsenter; do
    command -v "$tool" >/dev/null || skip "$tool is not installed"
done

cache=target/nspawn
root=$cache/bookworm
work=$(mktemp -d "$PWD/target/nspawn-run.XXXXXX")
machine=tallyfy-test-$$
org=org-systemd
token=token-$RANDOM$RANDOM
unit=tallyfy-sync.service
invoices=/srv/tallyfy/invoices
contracts=/srv/tallyfy/contracts
new_invoices=/srv/tallyfy/new-invoices
nspawn_pid=
fake_pid=
cgroups=()

dump() {
    [ -n "${leader:-}" ] || return 0
    echo "--- systemctl status"
    inside systemctl status --no-pager --full "$unit" || true
    echo "--- journal"
    inside journalctl --no-pager -u "$unit" -o short-monotonic || true
}

fail() {
    echo "FAILED: $*"
    dump
    echo "systemd: $passed passed, 1 failed"
    exit 1
}

cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # SIGTERM makes nspawn power the container off cleanly.
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 150); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    if [ -n "$fake_pid" ]; then
        kill "$fake_pid" 2>/dev/null || true
        wait "$fake_pid" 2>/dev/null || true
    fi
    for cgroup in "${cgroups[@]}"; do
        [ -d "$cgroup" ] && find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    rm -rf "/run/systemd/nspawn/propagate/$machine" "$work"
}
trap cleanup EXIT

inside() { nsenter -t "$leader" -a "$@"; }

# Polls `$@` every 0.2 s until it succeeds or $1 seconds pass.
wait_until() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

show() { inside systemctl show -p "$1" --value "$unit"; }

# The mirror this machine's apt already uses for bookworm.
mirror() {
    local found
    found=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { uri = $2 } /^Suites:/ && / bookworm( |$)/ && uri { print uri; exit }')
    [ -n "$found" ] || found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
    echo "${found:-http://deb.debian.org/debian}"
}

step "build"
cargo build --locked --example fake-tallyfy
deb=${DEB:-}
if [ -z "$deb" ]; then
    packaging/build-deb
    deb=$(ls -t target/debian/tallyfy-sync_*_"$(dpkg --print-architecture)".deb | head -1)
fi
[ -f "$deb" ] || fail "no package at $deb"
echo "package: $deb"

step "container root"
if [ ! -x "$root/lib/systemd/systemd" ]; then
    source_url=$(mirror)
    echo "debootstrap bookworm from $source_url into $root"
    rm -rf "$root.tmp"
    mkdir -p "$cache"
    if ! debootstrap --variant=minbase --include=systemd,dbus,systemd-sysv,procps \
        bookworm "$root.tmp" "$source_url" >"$cache/debootstrap.log" 2>&1; then
        tail -5 "$cache/debootstrap.log"
        rm -rf "$root.tmp"
        skip "debootstrap failed (log: $cache/debootstrap.log)"
    fi
    mv "$root.tmp" "$root"
else
    echo "cached: $root"
fi

step "fake Tallyfy API on the host"
target/debug/examples/fake-tallyfy "$org" "$token" >"$work/fake.out" &
fake_pid=$!
wait_until 20 grep -q '^base_url=' "$work/fake.out" || fail "the fake API did not start"
read -r ids <"$work/fake.out"
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$ids"; }
base_url=$(field base_url)
echo "$base_url"

step "stage"
stage=$work/stage
mkdir -p "$stage"
cp "$deb" "$stage/"
printf '%s\n' "$token" >"$stage/token"
cat >"$stage/config.yaml" <<EOF
api:
  base_url: $base_url
  org_id: $org
settle: 500ms
folders:
  - path: $invoices
    task:
      run_id: $(field run_id)
      task_id: $(field task_id)
      capture_id: $(field capture_id)
  - path: $contracts
    kickoff:
      checklist_id: $(field checklist_id)
      field_id: $(field field_id)
  - path: $new_invoices
    launch:
      checklist_id: $(field approval_id)
      field_id: $(field approval_file_id)
      name: "Invoice {stem}"
      fields:
        $(field approval_source_id): "{parent}"
      after: move
EOF
printf 'folders: not a list\n' >"$stage/broken.yaml"
# A short watchdog, so that the test sees systemd accept the pings.
printf '[Service]\nWatchdogSec=4s\n' >"$stage/watchdog.conf"
# What docs/folders.md says a launch folder with after: move needs under the hardened unit.
printf '[Service]\nReadWritePaths=%s\n' "$new_invoices" >"$stage/launch.conf"

step "boot"
nspawn=(systemd-nspawn --quiet --boot --register=no --ephemeral --directory="$root"
    --machine="$machine" --bind-ro="$stage:/stage" --console=passive)
if [ -d /run/systemd/system ]; then
    # The host's systemd gives the container a scope of its own.
    "${nspawn[@]}" >"$work/boot.log" 2>&1 &
else
    # No systemd on the host: the container's systemd needs a cgroup of its own, made here
    # in each hierarchy it uses.
    for hierarchy in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
        if [ -f "$hierarchy/cgroup.procs" ] && mkdir "$hierarchy/$machine" 2>/dev/null; then
            cgroups+=("$hierarchy/$machine")
        fi
        [ "$hierarchy" = /sys/fs/cgroup/systemd ] && [ ${#cgroups[@]} -gt 0 ] && break
    done
    [ ${#cgroups[@]} -gt 0 ] || skip "cannot create a cgroup for the container"
    (
        for cgroup in "${cgroups[@]}"; do echo "$BASHPID" >"$cgroup/cgroup.procs"; done
        exec "${nspawn[@]}" --keep-unit
    ) >"$work/boot.log" 2>&1 &
fi
nspawn_pid=$!
container_init() {
    leader=$(pgrep -P "$nspawn_pid" -x systemd | head -1)
    [ -n "$leader" ]
}
if ! wait_until 30 container_init; then
    cat "$work/boot.log"
    skip "systemd-nspawn could not boot a container here"
fi
# systemctl needs the manager's private socket, which appears a moment after PID 1 starts.
wait_until 30 inside test -S /run/systemd/private || fail "the container's systemd did not come up"
booted=$(inside timeout 60 systemctl is-system-running --wait || true)
case $booted in
running | degraded) echo "container $machine is $booted (init pid $leader on the host)" ;;
*) cat "$work/boot.log"; fail "the container did not boot: $booted" ;;
esac

check "install the package"
# As README says; its dependencies are all in the container already, so no package list is
# needed (ca-certificates is only recommended).
installed=$(inside sh -c 'cd /stage && DEBIAN_FRONTEND=noninteractive apt install -y -q --no-install-recommends ./tallyfy-sync_*.deb' 2>&1) ||
    fail "apt install ./tallyfy-sync_*.deb failed: $installed"
grep -E '^(Setting up|Creating)' <<<"$installed" || true
files=$(inside dpkg -L tallyfy-sync)
for file in /usr/bin/tallyfy-sync /usr/lib/systemd/system/$unit /usr/lib/sysusers.d/tallyfy-sync.conf \
    /etc/tallyfy-sync/config.yaml /usr/share/man/man1/tallyfy-sync.1.gz \
    /usr/share/man/man1/tallyfy-sync-run.1.gz /usr/share/bash-completion/completions/tallyfy-sync \
    /usr/share/zsh/vendor-completions/_tallyfy-sync /usr/share/fish/vendor_completions.d/tallyfy-sync.fish \
    /usr/share/doc/tallyfy-sync/README.md /usr/share/doc/tallyfy-sync/docs/configuration.md \
    /usr/share/doc/tallyfy-sync/copyright; do
    grep -qx "$file" <<<"$files" || fail "the package does not install $file"
    inside test -e "$file" || fail "$file is not there after installing"
done
inside dpkg-query -W -f '${Conffiles}' tallyfy-sync | grep -q ' /etc/tallyfy-sync/config.yaml ' ||
    fail "/etc/tallyfy-sync/config.yaml is no conffile"
inside tallyfy-sync --version || fail "the installed binary does not run"
account=$(inside getent passwd tallyfy-sync) || fail "the package did not create the account tallyfy-sync"
echo "$account"
[ "$(cut -d: -f6 <<<"$account")" = /var/lib/tallyfy-sync ] || fail "unexpected home: $account"
[ "$(show LoadState)" = loaded ] || fail "systemd does not know $unit after installing"
enabled=$(inside systemctl is-enabled $unit || true)
active=$(inside systemctl is-active $unit || true)
echo "$unit: $enabled, $active"
[ "$enabled" = disabled ] && [ "$active" = inactive ] ||
    fail "installing enabled or started the service: $enabled, $active"

step "configure"
inside install -d -m 0755 /srv/tallyfy $invoices $contracts
inside install -d -m 0775 -g tallyfy-sync $new_invoices
inside install -m 0640 -g tallyfy-sync /stage/config.yaml /etc/tallyfy-sync/config.yaml
inside install -m 0600 /stage/token /etc/tallyfy-sync/token
inside install -D -m 0644 /stage/watchdog.conf /run/systemd/system/$unit.d/watchdog.conf
inside install -D -m 0644 /stage/launch.conf /run/systemd/system/$unit.d/launch.conf
inside systemctl daemon-reload

check "a command run as root reads the token the unit loads"
# No TALLYFY_ACCESS_TOKEN and no CREDENTIALS_DIRECTORY: what `sudo tallyfy-sync check` sees.
checked=$(inside env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin tallyfy-sync check --online 2>&1) ||
    fail "check --online as root failed: $checked"
echo "$checked" | sed 's/^/  | /'
grep -q "token from file /etc/tallyfy-sync/token (LoadCredential=tallyfy-token in /usr/lib/systemd/system/$unit)" <<<"$checked" ||
    fail "check does not name the unit's token file"

check "systemd-analyze verify"
# Documentation=man:tallyfy-sync(1) is checked by running man, which a minimal root lacks.
man_check=--man=yes
inside sh -c 'command -v man' >/dev/null || man_check=--man=no
verify=$(inside systemd-analyze verify "$man_check" /usr/lib/systemd/system/$unit 2>&1 || true)
echo "${verify:-(no output)}"
! grep -q tallyfy-sync <<<"$verify" || fail "systemd-analyze verify complains about the unit"

check "systemd-analyze security"
security=$(inside systemd-analyze security --no-pager $unit)
grep -E '^✗' <<<"$security" || true
exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$security")
echo "exposure: $exposure"
[ -n "$exposure" ] || fail "no exposure level in systemd-analyze security output"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || fail "exposure $exposure is above 2.0"

check "start (Type=notify)"
inside systemctl start $unit || fail "systemctl start failed"
state=$(inside systemctl show -p Type,ActiveState,SubState,NotifyAccess $unit | sort | tr '\n' ' ')
echo "$state"
[ "$state" = "ActiveState=active NotifyAccess=main SubState=running Type=notify " ] ||
    fail "unexpected state after start: $state"
status_text=$(show StatusText)
echo "StatusText=$status_text"
[ "$status_text" = "watching 3 folders" ] || fail "unexpected status text"
# Active only after READY=1, which comes after both targets are verified.
active_at=$(show ActiveEnterTimestampMonotonic)
# journalctl -o export: one entry per paragraph, one FIELD=value per line.
entries_at() {
    inside journalctl -u $unit -o export | awk -v start="MESSAGE=$1" 'BEGIN { RS = ""; FS = "\n" }
        { at = ""; hit = 0
          for (i = 1; i <= NF; i++) {
              if (index($i, "__MONOTONIC_TIMESTAMP=") == 1) at = substr($i, 23)
              if (index($i, start) == 1) hit = 1
          }
          if (hit) print at }'
}
verified=$(entries_at "target verified")
[ "$(wc -w <<<"$verified")" = 3 ] || fail "expected three 'target verified' entries, got: $verified"
for at in $verified; do
    [ "$at" -lt "$active_at" ] || fail "a target was verified at $at, after the unit became active at $active_at"
done
echo "every target verified before the unit became active"
main_pid=$(show MainPID)

check "sync"
inside sh -c "printf '%%PDF-1.4 scan' > $invoices/scan-0001.pdf"
inside sh -c "printf 'contract' > '$contracts/signed contract.txt'"
attached() {
    tail -1 "$work/fake.out" | grep -q '"kickoff":\["signed contract.txt"\]' &&
        tail -1 "$work/fake.out" | grep -q '"task":\["scan-0001.pdf"\]'
}
wait_until 30 attached || fail "the files were not attached; fake says: $(tail -1 "$work/fake.out")"
tail -1 "$work/fake.out"

check "launch, after: move"
inside sh -c "printf '%%PDF-1.4 invoice' > $new_invoices/2041.pdf"
launched() { tail -1 "$work/fake.out" | grep -q '"runs":\["Invoice 2041"\]'; }
wait_until 30 launched || fail "no process was launched; fake says: $(tail -1 "$work/fake.out")"
moved() { inside test -f $new_invoices/processed/2041.pdf && ! inside test -e $new_invoices/2041.pdf; }
wait_until 30 moved || fail "the launched file was not moved to $new_invoices/processed/"
run_id=$(inside journalctl -u $unit -o export FILE=$new_invoices/2041.pdf | sed -n 's/^RUN_ID=//p' | head -1)
[ -n "$run_id" ] || fail "no RUN_ID field for $new_invoices/2041.pdf"
echo "launched run $run_id; the file is in processed/"

check "status"
# Asked over the control socket: the daemon holds the store, so this proves the socket works.
status_out=$(inside tallyfy-sync status) || fail "tallyfy-sync status failed"
echo "$status_out" | sed 's/^/  | /'
grep -q "(daemon running)" <<<"$status_out" || fail "status did not reach the running daemon"
grep -q "1 synced, 0 pending, 0 held, 0 rejected, 0 failed" <<<"$status_out" ||
    fail "status does not count the synced files"

check "journal"
journal=$(inside journalctl --no-pager -u $unit -o cat)
echo "$journal" | sed 's/^/  | /'
by_folder=$(inside journalctl --no-pager -u $unit -o cat FOLDER=$invoices)
grep -q "attached folder=$invoices file=$invoices/scan-0001.pdf" <<<"$by_folder" ||
    fail "journalctl FOLDER=$invoices lacks the attached line"
! grep -q "$contracts/" <<<"$by_folder" || fail "journalctl FOLDER=$invoices shows the other folder"
by_file=$(inside journalctl --no-pager -u $unit -o cat FILE="$contracts/signed contract.txt")
grep -q '^uploading' <<<"$by_file" && grep -q '^attached' <<<"$by_file" ||
    fail "journalctl FILE= lacks the uploading and attached lines"
asset_id=$(inside journalctl -u $unit -o export FILE=$invoices/scan-0001.pdf | sed -n 's/^ASSET_ID=//p' | head -1)
[ -n "$asset_id" ] || fail "no ASSET_ID field for $invoices/scan-0001.pdf"
inside journalctl --no-pager -u $unit -o cat PRIORITY=6 ASSET_ID="$asset_id" | grep -q '^attached' ||
    fail "no attached line at priority info (6) for ASSET_ID=$asset_id"
! grep -q $'\e' <<<"$journal" || fail "ANSI escape sequences in the journal"
! grep -qE '^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}' <<<"$journal" ||
    fail "journal lines carry a timestamp of their own"
! grep -qE '^ *(INFO|WARN|ERROR|DEBUG) ' <<<"$journal" || fail "journal lines carry a level of their own"

check "watchdog"
first_ping=$(show WatchdogTimestampMonotonic)
ping_advanced() { [ "$(show WatchdogTimestampMonotonic)" != "$first_ping" ]; }
wait_until 10 ping_advanced || fail "systemd saw no watchdog ping in 10 s (WatchdogSec=4s)"
echo "WatchdogUSec=$(show WatchdogUSec); pings arrive"

check "reload, with a token_file the service user cannot read"
# The root-only token file named as api.token_file: the daemon falls back to the credential
# systemd hands it, with a warning.
inside sed -i "s|^  org_id: $org\$|&\n  token_file: /etc/tallyfy-sync/token|" /etc/tallyfy-sync/config.yaml
inside grep -q '^  token_file: /etc/tallyfy-sync/token$' /etc/tallyfy-sync/config.yaml ||
    fail "could not add api.token_file to the config"
inside systemctl reload $unit || fail "systemctl reload failed"
wait_until 10 sh -c "nsenter -t $leader -a journalctl -u $unit -o cat | grep -q 'reloaded the configuration'" ||
    fail "the daemon did not reload its configuration"
fallback=$(inside journalctl -u $unit -o cat -p warning | grep 'cannot read the API token file /etc/tallyfy-sync/token (api.token_file); using the systemd credential' || true)
echo "$fallback"
[ "$(grep -c . <<<"$fallback")" = 1 ] || fail "expected one warning about the fallback to the credential"
[ "$(inside systemctl is-active $unit)" = active ] || fail "not active after reload"
[ "$(show MainPID)" = "$main_pid" ] || fail "the main process changed on reload"
echo "reloaded; still active as pid $main_pid"

check "stop"
inside systemctl stop $unit
result=$(inside systemctl show -p Result,ExecMainStatus,ActiveState $unit | sort | tr '\n' ' ')
echo "$result"
[ "$result" = "ActiveState=inactive ExecMainStatus=0 Result=success " ] || fail "unclean stop: $result"
inside journalctl -u $unit -o cat | grep -q 'stopped; state saved' || fail "no 'stopped; state saved'"

check "broken config: exit 78, no restart"
inside install -m 0640 -g tallyfy-sync /stage/broken.yaml /etc/tallyfy-sync/config.yaml
if inside systemctl start $unit 2>/dev/null; then fail "start succeeded with a broken config"; fi
result=$(inside systemctl show -p ActiveState,Result,ExecMainStatus,NRestarts $unit | sort | tr '\n' ' ')
echo "$result"
[ "$result" = "ActiveState=failed ExecMainStatus=78 NRestarts=0 Result=exit-code " ] ||
    fail "unexpected state with a broken config: $result"
inside journalctl -u $unit -o cat | grep -q 'config file /etc/tallyfy-sync/config.yaml has' ||
    fail "the config error is not in the journal"

check "remove the package"
inside env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tallyfy-sync >/dev/null ||
    fail "apt-get purge tallyfy-sync failed"
! inside test -e /usr/bin/tallyfy-sync || fail "/usr/bin/tallyfy-sync is still there"
[ "$(show LoadState)" = not-found ] || fail "systemd still knows $unit after the purge"
echo "purged; the unit is gone"

echo "== took $(($(date +%s) - started)) s; exposure $exposure"
echo "systemd: $checks passed, 0 failed"
