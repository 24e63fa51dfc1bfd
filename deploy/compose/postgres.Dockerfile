# PostgreSQL for compose's `postgres` profile (deploy/compose/postgres.yml): Debian's own
# `postgresql` package on the Debian base the executor image already uses, so building it pulls
# no other image (set BASE_IMAGE to smoke.sh's debootstrap base, ghost-local/runtime-executor:
# bookworm, to pull none at all):
#   docker build -f deploy/compose/postgres.Dockerfile -t ghost-runner/postgres:0.1.0 .
# Only classic-builder instructions, like deploy/Dockerfile. The data directory is
# /var/lib/postgresql/data/pgdata, inside the volume; the socket is in /tmp (a tmpfs in compose).
ARG BASE_IMAGE=buildpack-deps:bookworm-scm
FROM ${BASE_IMAGE}
ARG PG_MAJOR=15
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}" \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data \
 && chown -R postgres:postgres /var/lib/postgresql \
 && chmod 0700 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:/usr/local/bin:/usr/bin:/bin \
    PGDATA=/var/lib/postgresql/data/pgdata
COPY deploy/compose/postgres-entrypoint.sh /usr/local/bin/ghost-postgres
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
LABEL org.opencontainers.image.title="ghost-runner-postgres"
ENTRYPOINT ["/bin/sh", "/usr/local/bin/ghost-postgres"]
