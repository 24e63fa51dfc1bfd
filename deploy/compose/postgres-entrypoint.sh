#!/bin/sh
# Entry point of the ghost-runner/postgres image (deploy/compose/postgres.Dockerfile). The one
# secret is the URL the services use, postgres://USER:PASSWORD@HOST:PORT/DB, in the file
# $GHOST_POSTGRES_URL_FILE: at the first start (no $PGDATA yet) it runs initdb (scram-sha-256
# over TCP, peer on the local socket) and creates USER with PASSWORD and the database DB owned
# by USER; then it runs postgres on 0.0.0.0:5432 in the foreground. The password is never
# printed and never on a command line (psql reads it from standard input).
set -eu
url_file=${GHOST_POSTGRES_URL_FILE:-/run/secrets/ghost_postgres_url}
[ -r "$url_file" ] || { echo "ghost-postgres: cannot read $url_file (the secret ghost_postgres_url)" >&2; exit 1; }
url=$(sed -n '/./{p;q}' "$url_file" | tr -d '\r')
rest=${url#postgres://}
[ "$rest" != "$url" ] || rest=${url#postgresql://}
[ "$rest" != "$url" ] || { echo "ghost-postgres: $url_file does not hold a postgres:// URL" >&2; exit 1; }
credentials=${rest%%@*}
user=${credentials%%:*}
password=${credentials#*:}
database=${rest#*/}
database=${database%%\?*}
ok() { printf '%s' "$1" | grep -Eq "$2"; }
ok "$user" '^[a-z_][a-z0-9_]{0,62}$' || { echo "ghost-postgres: the URL's user must match [a-z_][a-z0-9_]*" >&2; exit 1; }
ok "$database" '^[a-z_][a-z0-9_]{0,62}$' || { echo "ghost-postgres: the URL's database must match [a-z_][a-z0-9_]*" >&2; exit 1; }
if [ "$credentials" = "$user" ] || ! ok "$password" '^[A-Za-z0-9._~-]{16,}$'; then
  echo "ghost-postgres: the URL needs a password of 16 or more URL-safe characters (e.g. openssl rand -hex 24)" >&2
  exit 1
fi

# First start: initialise a sibling directory and rename it into place once the role and the
# database exist, so a start that dies halfway leaves nothing that looks initialised.
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  fresh=$PGDATA.initialising
  rm -rf "$fresh"
  initdb -D "$fresh" -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  # The services connect from other containers of the compose network, with the password.
  echo "host all all all scram-sha-256" >>"$fresh/pg_hba.conf"
  pg_ctl -D "$fresh" -o "-c listen_addresses= -k /tmp" -w start >/dev/null
  printf "CREATE ROLE %s LOGIN PASSWORD '%s';\nCREATE DATABASE %s OWNER %s;\n" \
    "$user" "$password" "$database" "$user" | psql -v ON_ERROR_STOP=1 -q -h /tmp -U postgres -d postgres
  pg_ctl -D "$fresh" -m fast -w stop >/dev/null
  rm -rf "$PGDATA"
  mv "$fresh" "$PGDATA"
  echo "ghost-postgres: initialised $PGDATA with role $user and database $database"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
