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
  - systemctl daemon-reload, when systemd is running.
Nothing is enabled or started: see the message at the end.

Options:
  --root DIR       Stage into DIR instead of /: every path is prefixed with DIR, and
                   useradd, chown and systemctl are printed, not run. For inspection
                   and tests (a venv is not relocatable).
  --python PATH    Interpreter that creates the venv (default: python3).
  --offline        Install without a package index: the venv sees the system
                   site-packages and pip installs only SOURCE_DIR (--no-deps
                   --no-build-isolation --no-index); dependencies must be there already.
  --no-venv        Skip the venv and pip entirely (units and config only).
  --uninstall      Stop and disable the units, remove them and the venv. The config,
                   state, logs and user are kept.
  --purge          With --uninstall: also remove /etc/$NAME, /var/lib/$NAME,
                   /var/log/$NAME and the user and group.
  -h, --help       Show this help.
EOF
}

say() { printf 'install-systemd: %s\n' "$*"; }
die() { printf 'install-systemd: error: %s\n' "$*" >&2; exit 2; }

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
source_dir=""

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
readonly logs_dir="$root/var/log/$NAME"

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
        for dir in "$etc_dir" "$state_dir" "$logs_dir"; do
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
        say "uninstalled; kept $conf_file, $state_dir and $logs_dir (--purge removes them)"
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
    if [[ ! -x $venv_dir/bin/python ]] || ! "$venv_dir/bin/python" -c '' 2>/dev/null; then
        say "creating the venv $venv_dir"
        mkdir -p -- "$prefix"
        "$python" -m venv "${venv_args[@]}" -- "$venv_dir"
    fi
    say "installing $source_dir into $venv_dir"
    # --force-reinstall --no-deps first so a changed tree with an unchanged version
    # number still replaces the installed code; the second call adds the dependencies.
    "$venv_dir/bin/pip" install "${pip_args[@]}" --force-reinstall --no-deps -- "$source_dir"
    if ((!offline)); then
        "$venv_dir/bin/pip" install "${pip_args[@]}" -- "$source_dir"
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
    install_venv
    install_conf
    install_units
    say "done. Edit $conf_file, then one of:"
    say "  systemctl enable --now $NAME.service"
    say "  systemctl enable --now $NAME@8081.service $NAME@8082.service   # one per port"
    say "and after upgrades: systemctl restart $NAME.service (or the instances)"
}

if ((uninstall)); then
    do_uninstall
else
    do_install
fi
