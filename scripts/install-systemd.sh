#!/usr/bin/env bash
# Install (or remove) tornado-echo as a systemd service. Idempotent: run it again to
# upgrade the code and units; an existing /etc/tornado-echo/tornado-echo.toml is kept.
set -euo pipefail

readonly NAME=tornado-echo
readonly SERVICE_USER=tornado-echo
readonly UNITS=("$NAME.service" "$NAME@.service")

usage() {
    cat <<EOF
Usage: install-systemd.sh [OPTIONS] [SOURCE_DIR]
       install-systemd.sh --uninstall [--purge] [--root DIR]

Install tornado-echo from SOURCE_DIR (default: the tree this script belongs to):
  - a venv in /opt/$NAME/venv with the package installed by pip,
  - the system user and group $SERVICE_USER (no login shell, home /var/lib/$NAME),
  - /etc/$NAME/$NAME.toml from conf/production.toml, unless it exists
    (mode 0640, group $SERVICE_USER; the shipped one also goes to $NAME.toml.example),
  - the units $NAME.service and $NAME@.service in /etc/systemd/system,
  - systemctl daemon-reload, when systemd is running,
  - a smoke test: the installed binary, run as $SERVICE_USER on a free loopback port
    with a throw-away state directory, must echo one message (and, under systemd, the
    interpreter must start inside the unit's ProtectHome=/ProtectSystem= sandbox).
Nothing is enabled or started: see the message at the end.

Options:
  --root DIR       Stage into DIR instead of /: every path is prefixed with DIR, and
                   useradd, chown and systemctl are printed, not run. For inspection
                   and tests (a venv is not relocatable).
  --python PATH    Interpreter that creates the venv (default: python3). It must be
                   usable by $SERVICE_USER and outside /root, /home and /run/user
                   (hidden by ProtectHome=). The venv is recreated when it changes.
  --offline        Install without a package index: the venv sees the system
                   site-packages and pip installs only SOURCE_DIR (--no-deps
                   --no-build-isolation --no-index); dependencies must be there already.
  --no-venv        Skip the venv and pip entirely (units and config only).
  --restart        After an upgrade, restart the units that are running
                   (systemctl try-restart), so that they run the new code; without
                   it they keep the old code until restarted, which the script says.
  --uninstall      Stop and disable the units, remove them and the venv. The config,
                   state, drop-ins (systemctl edit) and user are kept.
  --purge          With --uninstall: also remove /etc/$NAME, /var/lib/$NAME, the
                   drop-in directories of the units, and the user and group.
  -h, --help       Show this help.
EOF
}

say() { printf 'install-systemd: %s\n' "$*"; }
die() { printf 'install-systemd: error: %s\n' "$*" >&2; exit 2; }
fail() { printf 'install-systemd: failed: %s\n' "$*" >&2; exit 1; }

# Run a command that changes the live system; under --root, print it instead.
live() {
    local shown
    shown=$(printf '%q ' "$@")
    if [[ -n $root ]]; then
        say "would run: ${shown% }"
    else
        say "running: ${shown% }"
        "$@"
    fi
}

systemd_running() { [[ -z $root && -d /run/systemd/system ]]; }

root=""
python=python3
offline=0
venv=1
uninstall=0
purge=0
restart=0
source_dir=""
# Temporary directories, removed on exit whatever happens.
cleanup=()
trap 'rm -rf -- "${cleanup[@]}"' EXIT

while (($#)); do
    case $1 in
        --root)
            (($# >= 2)) || die "--root needs a directory"
            root=$2; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --python)
            (($# >= 2)) || die "--python needs a path"
            python=$2; shift 2 ;;
        --python=*) python=${1#--python=}; shift ;;
        --offline) offline=1; shift ;;
        --no-venv) venv=0; shift ;;
        --restart) restart=1; shift ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *)
            [[ -z $source_dir ]] || die "more than one SOURCE_DIR: $source_dir, $1"
            source_dir=$1; shift ;;
    esac
done
if (($#)); then
    [[ -z $source_dir && $# -eq 1 ]] || die "more than one SOURCE_DIR"
    source_dir=$1
fi

((purge == 0 || uninstall == 1)) || die "--purge only goes with --uninstall"
((restart == 0 || uninstall == 0)) || die "--restart does not go with --uninstall"
if [[ -n $root ]]; then
    mkdir -p -- "$root" || die "cannot create --root $root"
    root=$(cd -- "$root" && pwd -P)
    [[ $root != / ]] || die "--root / is the live system; leave --root out"
elif [[ $(id -u) -ne 0 ]]; then
    die "must run as root (or stage with --root DIR)"
fi

readonly prefix="$root/opt/$NAME"
readonly venv_dir="$prefix/venv"
readonly etc_dir="$root/etc/$NAME"
readonly conf_file="$etc_dir/$NAME.toml"
readonly unit_dir="$root/etc/systemd/system"
readonly state_dir="$root/var/lib/$NAME"
readonly logs_dir="$root/var/log/$NAME"  # made by LogsDirectory= of earlier units
readonly python_mark="$venv_dir/.installed-with"  # the interpreter that made the venv
# Prefix that runs a command as the service user (staged: as ourselves, no such user).
as_service_user=()
[[ -n $root ]] \
    || as_service_user=(setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --clear-groups --)
readonly as_service_user

do_uninstall() {
    if systemd_running; then
        # Instances of the template are stopped through the glob of loaded units.
        live systemctl stop "$NAME.service" "$NAME@*.service" || true
    fi
    # What systemctl disable does, done by hand so it also works under --root and
    # catches every enabled instance of the template.
    local link
    for link in "$unit_dir"/*.wants/"$NAME.service" "$unit_dir"/*.wants/"$NAME@"*.service; do
        if [[ -L $link ]]; then
            say "removing $link"
            rm -f -- "$link"
        fi
    done
    local unit
    for unit in "${UNITS[@]}"; do
        if [[ -e $unit_dir/$unit ]]; then
            say "removing $unit_dir/$unit"
            rm -f -- "$unit_dir/$unit"
        fi
    done
    if [[ -d $venv_dir ]]; then
        say "removing $venv_dir"
        rm -rf -- "$venv_dir"
    fi
    [[ ! -d $prefix ]] || rmdir --ignore-fail-on-non-empty -- "$prefix"
    if systemd_running; then
        live systemctl daemon-reload
    fi
    if ((purge)); then
        local dir
        for dir in "$etc_dir" "$state_dir" "$logs_dir" \
            "$unit_dir/$NAME.service.d" "$unit_dir/$NAME@"*.service.d; do
            if [[ -e $dir ]]; then
                say "removing $dir"
                rm -rf -- "$dir"
            fi
        done
        if [[ -n $root ]] || getent passwd "$SERVICE_USER" >/dev/null; then
            live userdel "$SERVICE_USER"
        fi
        if [[ -n $root ]] || getent group "$SERVICE_USER" >/dev/null; then
            live groupdel "$SERVICE_USER"
        fi
        say "purged"
    else
        say "uninstalled; kept $conf_file, $state_dir and any drop-ins in $unit_dir/$NAME*.d" \
            "(--purge removes them)"
    fi
}

create_user() {
    if [[ -z $root ]] && getent passwd "$SERVICE_USER" >/dev/null; then
        say "user $SERVICE_USER exists"
        return
    fi
    if [[ -n $root ]] || ! getent group "$SERVICE_USER" >/dev/null; then
        live groupadd --system "$SERVICE_USER"
    fi
    live useradd --system --gid "$SERVICE_USER" --home-dir "/var/lib/$NAME" --no-create-home \
        --shell /usr/sbin/nologin --comment "tornado-echo WebSocket server" "$SERVICE_USER"
}

# The service runs as $SERVICE_USER with ProtectHome=yes: an interpreter under /root or
# /home (pyenv, conda) is invisible to it, and the unit fails with 203/EXEC and no log.
check_python() {
    local found base place
    found=$(command -v -- "$python") || die "no Python interpreter $python (see --python)"
    found=$(readlink -f -- "$found")
    base=$("$found" -c 'import sys; print(sys.base_prefix)' 2>/dev/null) \
        || die "$python ($found) does not run"
    for place in "$found" "$base"; do
        case $place/ in
            /root/* | /home/* | /run/user/*)
                die "$python lives in $place, hidden from the service by ProtectHome=yes;" \
                    "use a system interpreter (--python /usr/bin/python3)" ;;
        esac
    done
    if [[ -z $root ]] && getent passwd "$SERVICE_USER" >/dev/null \
        && ! "${as_service_user[@]}" "$found" -c '' 2>/dev/null; then
        die "$SERVICE_USER cannot run $found (permissions of its directories?); see --python"
    fi
    python=$found
}

install_venv() {
    if ((venv == 0)); then
        say "skipping the venv (--no-venv)"
        return
    fi
    local venv_args=() pip_args=(--disable-pip-version-check --quiet)
    if ((offline)); then
        venv_args+=(--system-site-packages)
        pip_args+=(--no-deps --no-build-isolation --no-index)
    fi
    if [[ -d $venv_dir ]]; then
        local before=""
        [[ ! -f $python_mark ]] || before=$(<"$python_mark")
        if [[ $before != "$python" ]]; then
            say "the venv was made with ${before:-an unrecorded interpreter}, not $python:" \
                "recreating it"
            rm -rf -- "$venv_dir"
        elif ! "$venv_dir/bin/python" -c '' 2>/dev/null; then
            say "the venv $venv_dir is broken: recreating it"
            rm -rf -- "$venv_dir"
        fi
    fi
    if [[ ! -d $venv_dir ]]; then
        say "creating the venv $venv_dir with $python"
        mkdir -p -- "$prefix"
        "$python" -m venv "${venv_args[@]}" -- "$venv_dir"
        printf '%s\n' "$python" >"$python_mark"
    fi
    say "installing $source_dir into $venv_dir"
    # pip builds in the tree it is given (setuptools writes build/ and *.egg-info there):
    # give it a copy, so that nothing root-owned is left in the owner's checkout (which
    # would break their pip install -e) and no stale build/lib re-ships deleted modules.
    local build
    build=$(mktemp -d)
    cleanup+=("$build")
    tar -C "$source_dir" --exclude=./.git --exclude='./.venv*' --exclude=./build \
        --exclude='./*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$build" -xf -
    # --force-reinstall --no-deps first so a changed tree with an unchanged version
    # number still replaces the installed code; the second call adds the dependencies.
    "$venv_dir/bin/pip" install "${pip_args[@]}" --force-reinstall --no-deps -- "$build"
    if ((!offline)); then
        "$venv_dir/bin/pip" install "${pip_args[@]}" -- "$build"
    fi
}

install_conf() {
    install -d -m 0750 -- "$etc_dir"
    live chown "root:$SERVICE_USER" "$etc_dir"
    install -m 0644 -- "$source_dir/conf/production.toml" "$conf_file.example"
    if [[ -e $conf_file ]]; then
        say "keeping the existing $conf_file (the shipped one is $conf_file.example)"
    else
        say "installing $conf_file"
        install -m 0640 -- "$source_dir/conf/production.toml" "$conf_file"
        live chown "root:$SERVICE_USER" "$conf_file"
    fi
}

install_units() {
    install -d -m 0755 -- "$unit_dir"
    local unit
    for unit in "${UNITS[@]}"; do
        say "installing $unit_dir/$unit"
        install -m 0644 -- "$source_dir/conf/$unit" "$unit_dir/$unit"
    done
    if systemd_running; then
        live systemctl daemon-reload
    elif [[ -z $root ]]; then
        say "systemd is not running here; skipped systemctl daemon-reload"
    else
        say "would run: systemctl daemon-reload"
    fi
}

# One echo through the installed code, as the service will run it; exit 1 if it fails.
smoke_test() {
    if ((venv == 0)); then
        say "no smoke test without the venv (--no-venv)"
        return
    fi
    if systemd_running; then
        # The unit's sandbox, where a hidden interpreter is a 203/EXEC with no log line.
        systemd-run --quiet --wait --collect --pipe --uid="$SERVICE_USER" \
            -p ProtectHome=yes -p ProtectSystem=strict -p PrivateTmp=yes \
            -- "$venv_dir/bin/tornado-echo" --version >/dev/null \
            || fail "$venv_dir/bin/tornado-echo does not start in the unit's sandbox"
    fi
    local tmp server port="" waited=0
    tmp=$(mktemp -d)
    cleanup+=("$tmp")
    printf '%s\n' 'host = "127.0.0.1"' 'port = 0' "state_dir = \"$tmp\"" \
        'database_url = "sqlite:///smoke.db"' 'workers = 1' 'log_format = "text"' \
        >"$tmp/smoke.toml"
    [[ -n $root ]] || chown -R -- "$SERVICE_USER:$SERVICE_USER" "$tmp"
    : >"$tmp/log"  # before the server's shell opens it, for the sed below
    # setpriv execs: $! is the server itself, which the SIGTERM below must reach.
    "${as_service_user[@]}" "$venv_dir/bin/tornado-echo" --config "$tmp/smoke.toml" \
        2>"$tmp/log" &
    server=$!
    while ((waited < 200)); do
        port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/log")
        [[ -z $port ]] || break
        kill -0 "$server" 2>/dev/null || break
        sleep 0.1
        waited=$((waited + 1))
    done
    if [[ -z $port ]]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        fail "the installed server did not start: $(tail -n 3 "$tmp/log")"
    fi
    local echoed=0
    "$venv_dir/bin/python" - "ws://127.0.0.1:$port/ws" <<'EOF' || echoed=$?
import asyncio
import sys

from tornado.websocket import websocket_connect


async def main() -> None:
    client = await asyncio.wait_for(websocket_connect(sys.argv[1]), 10)
    await client.write_message("install smoke test")
    answer = await asyncio.wait_for(client.read_message(), 10)
    client.close()
    sys.exit(0 if answer == "install smoke test" else 1)


asyncio.run(main())
EOF
    kill -TERM "$server"
    wait "$server" || true
    ((echoed == 0)) || fail "the installed server on 127.0.0.1:$port did not echo"
    say "smoke test: the installed server echoed a message on 127.0.0.1:$port" \
        "as $("${as_service_user[@]}" id -un)"
}

do_install() {
    if [[ -z $source_dir ]]; then
        source_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
    fi
    [[ -d $source_dir ]] || die "SOURCE_DIR $source_dir is not a directory"
    source_dir=$(cd -- "$source_dir" && pwd -P)
    [[ -f $source_dir/setup.py || -f $source_dir/pyproject.toml ]] \
        || die "$source_dir is not a Python project (no setup.py or pyproject.toml)"
    local f
    for f in production.toml "${UNITS[@]}"; do
        [[ -f $source_dir/conf/$f ]] || die "missing $source_dir/conf/$f"
    done
    if ((venv)); then
        command -v -- "$python" >/dev/null || die "no Python interpreter $python (see --python)"
    fi

    create_user
    if ((venv)); then
        check_python
    fi
    install_venv
    install_conf
    install_units
    smoke_test
    say "done. Edit $conf_file, then one of:"
    say "  systemctl enable --now $NAME.service"
    say "  systemctl enable --now $NAME@8081.service $NAME@8082.service   # one per port"
    report_running
}

# A running service keeps the code it started with: restart it (--restart), or say so.
report_running() {
    local units=("$NAME.service" "$NAME@*.service")
    if ((restart)); then
        if [[ -n $root ]] || systemd_running; then
            live systemctl try-restart "${units[@]}"
        else
            say "systemd is not running here; nothing to restart"
        fi
        return
    fi
    local running=""
    if systemd_running; then
        running=$(systemctl list-units --type=service --state=active --no-legend --plain \
            "${units[@]}" | awk '{print $1}' | paste -sd' ' -)
    fi
    if [[ -n $running ]]; then
        say "UPGRADE NOT IN EFFECT YET: running $running, which keeps the old code until" \
            "restarted: systemctl restart $running (or run this again with --restart)"
    else
        say "after an upgrade, a running service keeps the old code until restarted:" \
            "systemctl restart $NAME.service (or the instances), or run this with --restart"
    fi
}

if ((uninstall)); then
    do_uninstall
else
    do_install
fi
