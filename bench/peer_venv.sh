#!/usr/bin/env bash
# Side virtualenv holding cryptofeed, for bench/peer_cryptofeed.py.  Never part of Meltica's
# own environment or dependencies.
#
#   bench/peer_venv.sh [DIR]          default DIR: <repo>/.venv-peer
#
# CRYPTOFEED_VERSION picks one of two pinned sets:
#   3.0.1 (default)  needs Python 3.13 (cryptofeed 3.x requires >= 3.13)
#   2.4.1            Python 3.11, the interpreter Meltica runs on and the version our
#                    peer baselines were measured with
# PEER_PYTHON overrides the interpreter used to create the venv.
# Idempotent: an existing venv with the pinned cryptofeed is left as it is.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-$(dirname "$here")/.venv-peer}"
version="${CRYPTOFEED_VERSION:-3.0.1}"
marker=".meltica-peer"

die() {
    echo "peer_venv: $*" >&2
    exit 1
}

case "$version" in
3.0.1)
    want_py="3.13"
    pins=(
        cryptofeed==3.0.1 aiodns==4.0.4 aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0
        attrs==26.1.0 cffi==2.1.1 frozenlist==1.8.0 idna==3.20 msgspec==0.22.0 multidict==7.2.1
        order_book==1.1.0 propcache==0.5.4 pycares==5.2.1 pycparser==3.12 PyYAML==6.0.4
        uvloop==0.23.0 websockets==17.4 yarl==1.25.1 zstandard==0.25.0
    )
    ;;
2.4.1)
    want_py="3.11"
    pins=(
        cryptofeed==2.4.1 aiodns==4.0.4 aiofile==3.12.3 aiohappyeyeballs==2.7.1 aiohttp==3.14.5
        aiosignal==1.4.0 attrs==26.1.0 caio==0.12.10 certifi==2026.10.19.post1 cffi==2.1.1
        charset-normalizer==3.5.3 frozenlist==1.8.0 idna==3.20 multidict==7.2.1
        order_book==0.6.1 propcache==0.5.4 pycares==5.2.1 pycparser==3.12 PyYAML==6.0.4
        requests==2.34.2 typing_extensions==4.16.0 urllib3==2.8.0 uvloop==0.23.0
        websockets==17.4 yapic.json==1.9.5 yarl==1.25.1
    )
    ;;
*) die "CRYPTOFEED_VERSION=$version is not pinned here (use 3.0.1 or 2.4.1)" ;;
esac

is_py() { # interpreter path, wanted major.minor
    [ -n "$1" ] && "$1" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$2')" 2>/dev/null
}

installed_ok() {
    [ -x "$dir/bin/python" ] && is_py "$dir/bin/python" "$want_py" &&
        "$dir/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('cryptofeed') != '$version')" 2>/dev/null &&
        "$dir/bin/python" -m pip check >/dev/null 2>&1
}

if installed_ok; then
    echo "peer_venv: $dir already holds cryptofeed $version (Python $want_py)"
    exit 0
fi

py="${PEER_PYTHON:-}"
if [ -n "$py" ]; then
    is_py "$py" "$want_py" || die "PEER_PYTHON=$py is not Python $want_py"
else
    for cand in "python$want_py" "$(pyenv root 2>/dev/null)/versions/$want_py"*/bin/python$want_py \
        /usr/bin/python$want_py /usr/local/bin/python$want_py; do
        if is_py "$cand" "$want_py"; then
            py="$cand"
            break
        fi
    done
    [ -n "$py" ] || die "no Python $want_py interpreter found (set PEER_PYTHON, or use CRYPTOFEED_VERSION=2.4.1 for Python 3.11)"
fi

if [ -e "$dir" ]; then
    # only ever replace a venv this script made
    [ -f "$dir/$marker" ] || die "$dir exists and was not made by this script; remove it or pick another DIR"
    rm -rf -- "$dir"
fi

echo "peer_venv: creating $dir with $py (cryptofeed $version)"
"$py" -m venv "$dir" || die "could not create a virtualenv at $dir"
touch "$dir/$marker"
# keep the venv out of git whatever the interpreter (3.13 venvs write this file themselves)
[ -f "$dir/.gitignore" ] || printf '*\n' >"$dir/.gitignore"
if ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"; then
    die "pip could not install cryptofeed $version and its pinned dependencies into $dir"
fi
"$dir/bin/python" -m pip check || die "the installed set in $dir is inconsistent (pip check)"
installed_ok || die "cryptofeed $version did not import from $dir"
echo "peer_venv: ready: $dir/bin/python (cryptofeed $version, Python $want_py)"
