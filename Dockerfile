# Dockerfile -- the circus-warden container image (deployment artefacts: Dockerfile,
# .dockerignore, charts/circus-warden, tests/deploy).
#
# One image serves every way circus-warden runs; which process runs where:
#   (a) chart, container "circusd":  args `/bin/sh -c 'chmod 2770 <shared dirs> && exec circusd
#       /etc/circus/circus.ini'` as uid 0 with SETUID/SETGID/KILL only -> circusd (Python,
#       from the venv in /opt/circus) owns the ipc sockets in /run/circus and runs the managed
#       processes as its children, each as the policy's run-as user (circus-run below).
#   (b) chart, container "warden":   args `circus-warden serve --transport http --config
#       /etc/circus-warden/config.yaml` -> the MCP server; talks to (a) over the shared ipc
#       sockets only (no TCP endpoint, no multicast).
#   (c) standalone (the default CMD): `circus-warden serve` with
#       /opt/circus-warden/config/circus-warden.yaml (HTTP on 0.0.0.0:8731, no circus.endpoint)
#       and policies/default.yaml (read-only) -> the warden starts its own circusd (found on
#       PATH: /opt/circus/bin) with sockets in a private 0700 directory under /tmp.
# tini is PID 1 in every case: it forwards signals and reaps orphans that circusd's children
# leave behind (circusd only reaps its direct children).
#
# Stages: build (the Rust binary), python (Debian + python3 + tini, the common base), circus
# (a venv with circus pinned, made with pip), runtime (python + venv + binary, non-root).
# The circus venv is copied from a stage built FROM the same python stage, so its interpreter
# symlinks point at the identical /usr/bin/python3.
#
# A shell stays in the image on purpose: /bin/sh, dash and coreutils are Essential packages
# of the Debian base that python3 needs, deleting them under dpkg leaves an image nobody can
# debug or patch, and the programs circusd is asked to run are often shell scripts. Nothing in
# the warden or circusd invokes a shell (circusd runs argv directly; the warden's gate refuses
# circus's `shell` option).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the benches; cargo refuses a manifest whose targets are missing (they are
# not built here).
COPY benches ./benches
# The release profile keeps line tables for backtraces; compressing the debug sections keeps
# them readable (file:line in panics) at about a third of the size.
RUN cargo build --release --locked \
    && install -D -m 0755 target/release/circus-warden /out/circus-warden \
    && objcopy --compress-debug-sections=zlib /out/circus-warden

FROM debian:bookworm-slim AS python
# Debian stable replaces package versions with security updates, so exact version pins would
# break rebuilds; the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini \
    && rm -rf /var/lib/apt/lists/*

FROM python AS circus
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# Same pins as tests/requirements.txt (the versions the e2e suite runs against). pip and
# setuptools are removed afterwards: nothing needs them at run time.
RUN python3 -m venv /opt/circus \
    && /opt/circus/bin/pip install --no-cache-dir --disable-pip-version-check \
        circus==0.19.0 pyzmq==27.3.0 tornado==6.6.1 psutil==7.2.2 \
    && /opt/circus/bin/pip uninstall -y -q pip setuptools \
    && /opt/circus/bin/python -c "import circus, zmq, tornado, psutil"

FROM python AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="circus-warden" \
      org.opencontainers.image.description="MCP server that lets AI agents manage processes under circusd through a deny-by-default gate; also carries circusd (circus 0.19.0)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# Fixed uids/gids, no home directory, no login shell:
#   circus      10001  the warden (and, standalone, its circusd); the chart's warden
#                      runAsUser/runAsGroup and the pod's fsGroup;
#   circus-run  10002  the run-as user of every managed process (the policy's
#                      `run_as: {user: circus-run}`) when circusd runs as root; its only
#                      group is its own, so it reaches nothing that is open to group 10001.
RUN echo 'circus:x:10001:10001:circus-warden:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'circus-run:x:10002:10002:circus-warden managed processes:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'circus:x:10001:' >> /etc/group \
    && echo 'circus-run:x:10002:' >> /etc/group
COPY --from=circus /opt/circus /opt/circus
COPY --from=build /out/circus-warden /usr/local/bin/circus-warden
# Standalone defaults, laid out like a source checkout (config/, policies/) so that a plain
# `circus-warden serve` in the working directory finds them: HTTP on 0.0.0.0:8731, an
# embedded circusd, and a read-only policy. The chart passes its own --config and mounts its
# own policies, and runs circusd with /tmp as its working directory.
COPY deploy/image/ /opt/circus-warden/
ENV PATH=/opt/circus/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/circus-warden
USER 10001:10001
EXPOSE 8731
# No Docker HEALTHCHECK: the image runs two different programs (circusd or the warden, on a
# port the config chooses), so no single check fits; Kubernetes ignores HEALTHCHECK and the
# chart probes /healthz, /readyz and `circusctl status` instead.
# checkov:skip=CKV_DOCKER_2:one image runs circusd or the warden; the chart defines per-container probes
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["circus-warden", "serve"]
