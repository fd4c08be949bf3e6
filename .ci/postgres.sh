# Sourced by .ci/run: start a throw-away PostgreSQL server on loopback for the distributed-tuning test and
# export REKFOLD_PG_URL. Installs Debian's postgresql package when it is missing. On any failure the
# variable stays unset and that one test is skipped with its reason (the rest of CI still runs).
pg_start() {
    local bin port=54329
    if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1; then
            echo "ci: installing PostgreSQL (Debian package postgresql)"
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || return 1
        else
            return 1
        fi
    fi
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    PG_CI_DATA=$(mktemp -d /tmp/rekfold-pg.XXXXXX)
    local run=()
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$PG_CI_DATA"
        run=(runuser -u postgres --)
    fi
    "${run[@]}" "$bin/initdb" -D "$PG_CI_DATA/data" -A trust -U postgres >/dev/null || return 1
    "${run[@]}" "$bin/pg_ctl" -D "$PG_CI_DATA/data" -l "$PG_CI_DATA/data/server.log" -w \
        -o "-p $port -k $PG_CI_DATA -c listen_addresses=127.0.0.1" start >/dev/null || return 1
    PG_CI_STOP=("${run[@]}" "$bin/pg_ctl" -D "$PG_CI_DATA/data" -m fast stop)
    "${run[@]}" "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE rekfold" >/dev/null || return 1
    export REKFOLD_PG_URL="postgresql+psycopg2://postgres@127.0.0.1:$port/rekfold"
    echo "ci: PostgreSQL running on 127.0.0.1:$port"
}

pg_stop() {
    if [ -n "${PG_CI_STOP+x}" ]; then "${PG_CI_STOP[@]}" >/dev/null 2>&1 || true; fi
    if [ -n "${PG_CI_DATA:-}" ]; then rm -rf "$PG_CI_DATA"; fi
}

pg_start || echo "ci: warning: no PostgreSQL server; the PostgreSQL tuning test will be skipped"
trap pg_stop EXIT
