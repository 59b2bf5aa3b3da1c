# shellcheck shell=bash
# Sourced by scripts/quickstart.sh and scripts/test.sh, from the checkout's top folder:
# ensure_venv [EXTRA] makes .venv (installing Debian's python3-venv when Python lacks it)
# and pip-installs the package in it (editable, with the extra, e.g. test). pip runs only
# when setup.py or pyproject.toml changed since the last install of that extra, so a
# second start takes no time; the code itself is editable and needs no reinstall.

ensure_venv() {
    local extra=${1:-} spec=. stamp want
    [[ -z $extra ]] || spec=".[$extra]"
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        local as_root=()
        [[ $(id -u) -eq 0 ]] || as_root=(sudo)
        "${as_root[@]}" apt-get update -qq
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    fi
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    stamp=.venv/.installed${extra:+-$extra}
    want=$(cat setup.py pyproject.toml | sha256sum)
    want=${want%% *}
    if [[ -f $stamp && $(<"$stamp") == "$want" ]] \
        && .venv/bin/python -c 'import tornado_echo' 2>/dev/null; then
        return
    fi
    printf 'installing %s into .venv (again only when setup.py changes)\n' "$spec" >&2
    .venv/bin/pip install --disable-pip-version-check -q -e "$spec"
    printf '%s\n' "$want" >"$stamp"
}
