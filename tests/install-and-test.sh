#!/usr/bin/env bash
# The one command for a fresh Debian 12 machine (Python >= 3.11), run as root or
# through sudo from anywhere: installs Dovecot (without starting the system
# service), the mail user the test Dovecot runs mail processes as, a venv with the
# project and its test extras, then runs ruff, mypy and pytest.
# Extra arguments are passed to pytest, e.g.  tests/install-and-test.sh -k imap -x
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [[ $(id -u) -ne 0 ]]; then
    exec sudo --preserve-env=PATH,PYTHON bash "$0" "$@"
fi

python="${PYTHON:-python3}"
export DEBIAN_FRONTEND=noninteractive

apt_install() {
    # A policy-rc.d that exits 101 keeps apt from starting the system Dovecot;
    # remove it again whatever happens (unless one was there already).
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local rc=0
    { apt-get update -q && apt-get install -y -q --no-install-recommends "$@"; } || rc=$?
    if [[ $own_policy -eq 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
    return $rc
}

missing=()
# chromium: the suite opens the statistics page in a headless browser (about 115 MB to
# download, 415 MB installed; 13 s to install from a nearby Debian mirror).
for pkg in dovecot-imapd dovecot-lmtpd systemd openssl chromium; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "== installing ${missing[*]}"
    apt_install "${missing[@]}"
fi

# Dovecot will not run mail processes as root; the tests use this system user.
if ! id inboxd-vmail >/dev/null 2>&1; then
    echo "== creating system user inboxd-vmail"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin inboxd-vmail
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $python is $("$python" --version 2>&1); inboxd needs Python >= 3.11" >&2
    exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
    probe="$(mktemp -d)"
    if ! "$python" -m venv "$probe/venv" >/dev/null 2>&1; then
        echo "== installing python3-venv"
        apt_install python3-venv
    fi
    rm -rf "$probe"
    echo "== creating .venv"
    "$python" -m venv .venv
fi

echo "== installing inboxd[test] into .venv"
.venv/bin/python -m pip install -q -e '.[test]'

status=0
echo "== ruff"
.venv/bin/ruff check inboxd tests || status=1
echo "== mypy (inboxd and tests, see [tool.mypy] in pyproject.toml)"
.venv/bin/mypy || status=1
echo "== pytest"
.venv/bin/pytest -q "$@" || status=1

if [[ $status -ne 0 ]]; then
    echo "== FAILED (see above)" >&2
fi
exit $status
