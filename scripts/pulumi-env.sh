# Sourced (never run) by the Makefile, .ci/run and the tests: puts the cached engine and the project's
# virtualenv on PATH and sets offline defaults. Every variable below is only a default: set it yourself
# (a Pulumi Cloud or S3 backend in PULUMI_BACKEND_URL, your own PULUMI_CONFIG_PASSPHRASE or
# PULUMI_CONFIG_PASSPHRASE_FILE) and it is kept.
THORBIS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
THORBIS_PULUMI_VERSION=$(sed -n 's/^pulumi==\([0-9][0-9.]*\).*/\1/p' "$THORBIS_ROOT/requirements.txt")
THORBIS_PULUMI_CACHE=${THORBIS_PULUMI_CACHE:-$HOME/.cache/thorbis-db/pulumi}
THORBIS_STATE_DIR=${THORBIS_STATE_DIR:-$THORBIS_ROOT/.state}
export THORBIS_ROOT THORBIS_PULUMI_VERSION THORBIS_PULUMI_CACHE THORBIS_STATE_DIR

export PATH="$THORBIS_PULUMI_CACHE/v$THORBIS_PULUMI_VERSION/bin:$THORBIS_ROOT/.venv/bin:$PATH"
# Go's official tarball installs to /usr/local/go without touching PATH (a CI shell may not have it)
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="$PATH:/usr/local/go/bin"
fi
export PULUMI_SKIP_UPDATE_CHECK=${PULUMI_SKIP_UPDATE_CHECK:-true}
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=${PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION:-true}
export PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK=${PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK:-true}
if [ -z "${PULUMI_HOME:-}" ]; then
    export PULUMI_HOME=$THORBIS_STATE_DIR/pulumi-home
    # The engine (v3.260) records every command's verbose log (-v=9: each property of each RPC), gzip'd and
    # encrypted, in $PULUMI_HOME/logs, with no switch to turn it off: for the whole stack, ~9 MB and half of
    # the CLI's CPU per preview. A file where that directory would be turns it off (the CLI notes "automatic
    # logging unavailable" at -v=1 and goes on; `-v=N --logtostderr` logs as before). A PULUMI_HOME of your
    # own keeps it.
    if [ ! -f "$PULUMI_HOME/logs" ]; then
        rm -rf "$PULUMI_HOME/logs"
        mkdir -p "$PULUMI_HOME" && : >"$PULUMI_HOME/logs"
    fi
fi
export PULUMI_BACKEND_URL=${PULUMI_BACKEND_URL:-file://$THORBIS_STATE_DIR/backend}
# The passphrase secrets provider, with a published passphrase for dev and test stacks only:
# staging and prod stacks must be created with a passphrase (or provider) of their own.
if [ -z "${PULUMI_CONFIG_PASSPHRASE+set}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
    export PULUMI_CONFIG_PASSPHRASE=thorbis-dev-only
fi
case "$PULUMI_BACKEND_URL" in
    file://*) mkdir -p "${PULUMI_BACKEND_URL#file://}" ;;
esac
