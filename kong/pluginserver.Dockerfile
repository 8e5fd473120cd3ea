# The kcauth plugin server alone, for a sidecar beside Kong's stock image (Kong 3.9+ starts no
# plugin server when `pluginserver_kcauth_start_cmd` is unset, and connects to the socket).
# Build from the repository root:
#   docker build -f kong/pluginserver.Dockerfile -t kcauth/kcauth-pluginserver:0.2.0 .
# It serves on /kcauth/kcauth.socket: mount a volume there that Kong's container mounts too, and
# point `pluginserver_kcauth_socket` at it (deploy/kubernetes/: an emptyDir of the pod; a probe
# runs `kcauth-pluginserver --ready --kong-prefix /kcauth`).
FROM python:3.12-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md CHANGELOG.md LICENSE MANIFEST.in ./
COPY kong_plugin_kcauth ./kong_plugin_kcauth
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.12-slim
COPY --from=wheel /dist /tmp/dist
RUN python -m venv /opt/kcauth \
 && /opt/kcauth/bin/pip install --no-cache-dir /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && groupadd --gid 1000 kong && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin kong
# The same uid and gid as Kong's image: the socket is created with the process's umask (0755
# for others), so Kong's user must own it to connect.
USER 1000:1000
ENV PATH=/opt/kcauth/bin:$PATH
ENTRYPOINT ["kcauth-pluginserver"]
CMD ["--kong-prefix", "/kcauth", "--socket-name", "kcauth.socket"]
