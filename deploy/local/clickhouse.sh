#!/usr/bin/env bash
# Named local ClickHouse servers for development and tests, on 127.0.0.1 only.
#
#   deploy/local/clickhouse.sh start  NAME [--http-port P] [--tcp-port P]
#   deploy/local/clickhouse.sh stop   NAME
#   deploy/local/clickhouse.sh status NAME    exit 0 running and answering, 1 running but not
#                                              answering, 3 stopped
#   deploy/local/clickhouse.sh url    NAME    prints http://127.0.0.1:HTTP_PORT
#   deploy/local/clickhouse.sh ports  NAME    prints "HTTP_PORT TCP_PORT"
#
# start installs Debian's clickhouse-server (and clickhouse-client) with apt-get when it is
# missing, and does nothing when the instance is already running and answering. Everything of
# instance NAME lives in <repo>/.local/clickhouse/NAME/: config.xml and users.xml (generated from
# deploy/local/clickhouse/ at every start), data/, tmp/, log/ (server log, error log, console
# output), the pid file and the ports it was last started with. Extra config can go into
# config.d/*.xml and users.d/*.xml there; ClickHouse merges those files in at start.
#
# Ports: instance "default" uses http 8123 / tcp 9000. Any other instance uses the ports it was
# last started with, or else ports derived from its name: n = cksum(NAME) mod 1000,
# http 20000 + n, tcp 21000 + n. --http-port / --tcp-port override both; the chosen ports are
# remembered for later starts, stop, status and url. Two names can derive the same ports: start
# then refuses with "port in use", and explicit ports fix it.
#
# Users (deploy/local/clickhouse/users.xml): "default" without password, full rights; and
# "sluice_ingest" / "sluice-dev", which can insert and select but not run DDL. Plus the deployed
# sluice_admin / sluice_writer / sluice_analyst users of deploy/clickhouse/users.d/ (development
# passwords sluice-admin-dev, sluice-writer-dev, sluice-analyst-dev).
#
# The server runs as user "clickhouse" when this script runs as root and that user exists and
# can reach the instance folder; otherwise as the calling user.
#
# Environment: CLICKHOUSE_START_TIMEOUT (seconds, default 30), CLICKHOUSE_STOP_TIMEOUT (default 30).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TEMPLATE_DIR="$REPO_ROOT/deploy/local/clickhouse"
INSTANCES_DIR="$REPO_ROOT/.local/clickhouse"
START_TIMEOUT=${CLICKHOUSE_START_TIMEOUT:-30}
STOP_TIMEOUT=${CLICKHOUSE_STOP_TIMEOUT:-30}
SERVICE_USER=clickhouse

say() { printf 'clickhouse.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# --- instance layout ---------------------------------------------------------------------------

set_instance() {
    NAME=$1
    [[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]] ||
        die "instance name '$NAME' must be letters, digits, '_' or '-'"
    DIR="$INSTANCES_DIR/$NAME"
    CONFIG="$DIR/config.xml"
    PID_FILE="$DIR/clickhouse-server.pid"
    PORTS_FILE="$DIR/ports"
}

port_ok() { [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= 65535)); }

# Sets HTTP_PORT and TCP_PORT: explicit arguments, else remembered, else default or derived.
resolve_ports() {
    local want_http=${1:-} want_tcp=${2:-} saved_http='' saved_tcp='' n
    if [[ -f $PORTS_FILE ]]; then
        read -r saved_http saved_tcp <"$PORTS_FILE" || true
        port_ok "$saved_http" && port_ok "$saved_tcp" || { saved_http=''; saved_tcp=''; }
    fi
    if [[ $NAME == default ]]; then
        HTTP_PORT=8123
        TCP_PORT=9000
    else
        n=$(($(printf '%s' "$NAME" | cksum | cut -d' ' -f1) % 1000))
        HTTP_PORT=$((20000 + n))
        TCP_PORT=$((21000 + n))
    fi
    HTTP_PORT=${want_http:-${saved_http:-$HTTP_PORT}}
    TCP_PORT=${want_tcp:-${saved_tcp:-$TCP_PORT}}
    [[ $HTTP_PORT != "$TCP_PORT" ]] || die "http and tcp port must differ (both $HTTP_PORT)"
}

url() { printf 'http://127.0.0.1:%s' "$HTTP_PORT"; }

# --- processes ---------------------------------------------------------------------------------

# Is PID a clickhouse-server started with this instance's config?
is_our_server() {
    local pid=$1 arg args=()
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] || return 1
    mapfile -d '' args <"/proc/$pid/cmdline" 2>/dev/null || return 1
    for arg in "${args[@]}"; do
        [[ $arg == "--config-file=$CONFIG" ]] && return 0
    done
    return 1
}

# Prints the pid of this instance's server, if one is running.
find_pid() {
    local pid='' proc
    if [[ -f $PID_FILE ]]; then
        read -r pid <"$PID_FILE" || true
        if is_our_server "$pid"; then
            echo "$pid"
            return 0
        fi
    fi
    # No (valid) pid file, e.g. a server still starting up: look for the command line.
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        if is_our_server "$pid"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

ping_ok() {
    local answer
    answer=$(curl -fsS --max-time 2 "$(url)/ping" 2>/dev/null) && [[ $answer == "Ok." ]]
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

show_logs() {
    local file
    for file in "$DIR/log/console.log" "$DIR/log/stderr.log" "$DIR/log/clickhouse-server.err.log"; do
        if [[ -s $file ]]; then
            say "--- last lines of ${file#"$REPO_ROOT"/}:"
            tail -n 40 "$file" >&2
        fi
    done
}

# --- installation ------------------------------------------------------------------------------

server_binary() {
    command -v clickhouse-server 2>/dev/null ||
        { [[ -x /usr/sbin/clickhouse-server ]] && echo /usr/sbin/clickhouse-server; }
}

ensure_installed() {
    local packages=()
    server_binary >/dev/null || packages+=(clickhouse-server clickhouse-client)
    command -v curl >/dev/null || packages+=(curl)
    ((${#packages[@]} == 0)) && return 0
    ((EUID == 0)) || die "missing ${packages[*]}: run as root, or apt-get install them yourself"
    say "installing ${packages[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    server_binary >/dev/null || die "clickhouse-server is still missing after apt-get install"
}

# Prints the command prefix that runs the server as the service user, if that is possible.
run_as_prefix() {
    ((EUID == 0)) || return 0
    id -u "$SERVICE_USER" >/dev/null 2>&1 || return 0
    local prefix=(setpriv "--reuid=$SERVICE_USER" "--regid=$SERVICE_USER" --init-groups)
    if "${prefix[@]}" test -w "$DIR/data" -a -x "$DIR/data" 2>/dev/null; then
        printf '%s\n' "${prefix[@]}"
    else
        say "note: user $SERVICE_USER cannot reach $DIR (a parent folder is private); running as root"
    fi
}

render_config() {
    local escaped_dir
    [[ -f $TEMPLATE_DIR/config.xml && -f $TEMPLATE_DIR/users.xml ]] ||
        die "templates missing in $TEMPLATE_DIR"
    # Escape what is special on the right-hand side of sed's s||| and in XML text.
    escaped_dir=$(printf '%s' "$DIR" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/[|\\&]/\\&/g')
    sed -e "s|@DIR@|$escaped_dir|g" -e "s|@NAME@|$NAME|g" \
        -e "s|@HTTP_PORT@|$HTTP_PORT|g" -e "s|@TCP_PORT@|$TCP_PORT|g" \
        "$TEMPLATE_DIR/config.xml" >"$CONFIG.new"
    mv "$CONFIG.new" "$CONFIG"
    cp "$TEMPLATE_DIR/users.xml" "$DIR/users.xml"
    # sluice's admin / writer / analyst users, as deployed (deploy/clickhouse/users.d/).
    mkdir -p "$DIR/users.d"
    cp "$REPO_ROOT"/deploy/clickhouse/users.d/*.xml "$DIR/users.d/"
}

# --- commands ----------------------------------------------------------------------------------

cmd_start() {
    local want_http='' want_tcp='' pid
    while (($#)); do
        case $1 in
        --http-port) want_http=${2:-}; shift 2 || usage ;;
        --http-port=*) want_http=${1#*=}; shift ;;
        --tcp-port) want_tcp=${2:-}; shift 2 || usage ;;
        --tcp-port=*) want_tcp=${1#*=}; shift ;;
        *) usage ;;
        esac
    done
    [[ -z $want_http ]] || port_ok "$want_http" || die "bad --http-port '$want_http'"
    [[ -z $want_tcp ]] || port_ok "$want_tcp" || die "bad --tcp-port '$want_tcp'"

    if pid=$(find_pid); then
        # Already running: its ports are the remembered ones.
        resolve_ports
        if [[ -n $want_http && $want_http != "$HTTP_PORT" || -n $want_tcp && $want_tcp != "$TCP_PORT" ]]; then
            die "instance $NAME already runs (pid $pid) on http $HTTP_PORT / tcp $TCP_PORT; stop it first to change ports"
        fi
        if ping_ok; then
            say "instance $NAME already running (pid $pid) at $(url)"
            return 0
        fi
        say "instance $NAME is running (pid $pid) but not answering yet; waiting"
        wait_until_ready "$pid" 0
        return 0
    fi

    resolve_ports "$want_http" "$want_tcp"
    ensure_installed
    local port
    for port in "$HTTP_PORT" "$TCP_PORT"; do
        port_busy "$port" && die "port $port on 127.0.0.1 is in use by another process; pick other ports with --http-port / --tcp-port"
    done

    mkdir -p "$DIR"/{data,tmp,log,user_files,format_schemas}
    rm -f "$PID_FILE"
    render_config
    printf '%s %s\n' "$HTTP_PORT" "$TCP_PORT" >"$PORTS_FILE"

    local prefix=()
    if ((EUID == 0)) && id -u "$SERVICE_USER" >/dev/null 2>&1; then
        chown -R "$SERVICE_USER:$SERVICE_USER" "$DIR"
    fi
    mapfile -t prefix < <(run_as_prefix)
    if ((EUID == 0)) && ((${#prefix[@]} == 0)); then
        chown -R 0:0 "$DIR"
    fi

    say "starting instance $NAME: http $HTTP_PORT, tcp $TCP_PORT, folder ${DIR#"$REPO_ROOT"/}"
    local started_at=$SECONDS
    # Foreground mode in the background rather than --daemon, so that errors from before the
    # logger is set up (a broken config) land in log/console.log. setsid gives the server its own
    # session: a Ctrl-C in the calling terminal does not reach it. nohup, setsid and setpriv all
    # exec, so $! is the server's pid (the server writes a pid file only in --daemon mode).
    {
        printf '=== %s start\n' "$(date -u +%FT%TZ)"
        nohup setsid "${prefix[@]}" "$(server_binary)" "--config-file=$CONFIG" </dev/null &
        pid=$!
    } >>"$DIR/log/console.log" 2>&1
    echo "$pid" >"$PID_FILE"
    wait_until_ready "$pid" 1
    say "instance $NAME ready at $(url) (pid $pid, $((SECONDS - started_at)) s)"
}

# wait_until_ready PID KILL_ON_FAILURE
wait_until_ready() {
    local pid=$1 kill_on_failure=$2 deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "error: instance $NAME exited during start"
            show_logs
            exit 1
        fi
        ping_ok && return 0
        sleep 0.1
    done
    say "error: instance $NAME did not answer $(url)/ping within $START_TIMEOUT s"
    show_logs
    ((kill_on_failure)) && stop_pid "$pid"
    exit 1
}

stop_pid() {
    local pid=$1 deadline=$((SECONDS + STOP_TIMEOUT))
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            say "instance $NAME (pid $pid) did not stop within $STOP_TIMEOUT s of SIGTERM: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.1
    done
    rm -f "$PID_FILE"
}

cmd_stop() {
    local pid
    if ! pid=$(find_pid); then
        rm -f "$PID_FILE"
        say "instance $NAME is not running"
        return 0
    fi
    say "stopping instance $NAME (pid $pid)"
    stop_pid "$pid"
    say "instance $NAME stopped"
}

cmd_status() {
    local pid
    resolve_ports
    if ! pid=$(find_pid); then
        echo "$NAME: stopped ($(url), tcp $TCP_PORT)"
        return 3
    fi
    if ping_ok; then
        echo "$NAME: running, pid $pid, $(url), tcp $TCP_PORT"
        return 0
    fi
    echo "$NAME: running, pid $pid, but $(url)/ping does not answer"
    return 1
}

(($# >= 2)) || usage
command=$1
set_instance "$2"
shift 2
case $command in
start) cmd_start "$@" ;;
stop) (($# == 0)) || usage; cmd_stop ;;
status) (($# == 0)) || usage; cmd_status ;;
url) (($# == 0)) || usage; resolve_ports; url; echo ;;
ports) (($# == 0)) || usage; resolve_ports; echo "$HTTP_PORT $TCP_PORT" ;;
*) usage ;;
esac
