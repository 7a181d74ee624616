#!/usr/bin/env bash
# Installs the benchmark's peers (issue 5, part 2), never by hand:
#   socat         Debian package (the raw relay floor)
#   supergateway  npm, into benches/.peers/node_modules
#   mcp-proxy     PyPI, into the venv benches/.peers/venv
# Idempotent: each step is skipped when its tool already answers, so a
# second run takes well under a second. A peer that cannot be installed is
# reported and skipped; the bench then prints why on that tool's row.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
peers="$here/.peers"
mkdir -p "$peers"
status=0

say() { printf 'setup: %s\n' "$*" >&2; }

# --- socat -----------------------------------------------------------------
if command -v socat >/dev/null 2>&1; then
    say "socat: present ($(command -v socat))"
elif command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
    say "socat: installing with apt-get"
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq socat; } >"$peers/socat-install.log" 2>&1; then
        say "socat: install failed, see $peers/socat-install.log"
        status=1
    fi
else
    say "socat: not installed and no apt-get here"
    status=1
fi

# --- supergateway (npm) ----------------------------------------------------
sg="$peers/node_modules/.bin/supergateway"
if [ -x "$sg" ]; then
    say "supergateway: present"
elif command -v npm >/dev/null 2>&1; then
    say "supergateway: installing with npm"
    if ! npm install --prefix "$peers" --no-audit --no-fund --loglevel=error supergateway >"$peers/supergateway-install.log" 2>&1; then
        say "supergateway: install failed, see $peers/supergateway-install.log"
        status=1
    fi
else
    say "supergateway: npm not found"
    status=1
fi

# --- mcp-proxy (PyPI) ------------------------------------------------------
venv="$peers/venv"
if [ -x "$venv/bin/mcp-proxy" ]; then
    say "mcp-proxy: present"
else
    py="$(command -v python3 || true)"
    if [ -z "$py" ]; then
        say "mcp-proxy: python3 not found"
        status=1
    else
        say "mcp-proxy: installing into $venv"
        if ! { [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"; } >"$peers/mcp-proxy-install.log" 2>&1 ||
            ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check mcp-proxy >>"$peers/mcp-proxy-install.log" 2>&1; then
            say "mcp-proxy: install failed, see $peers/mcp-proxy-install.log"
            status=1
        fi
    fi
fi

# --- a C compiler for the trivial child (benches/trivial_echo.c) ----------
if ! command -v cc >/dev/null 2>&1; then
    say "cc: not found; the spawn-cost rows fall back to forkline echo-server"
fi

exit $status
