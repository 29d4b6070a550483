# myservices: the daemon in a container. Build: docker build -t myservices .
# Run:   docker run -p 1234:1234 -p 1025:1025 -p 10004:10004/udp -p 8080:8080 -p 18000:18000 \
#            -p 8000:8000 -p 8800:8800 -v myservices-data:/var/lib/myservices myservices
# See docs/deployment.md.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY myservices ./myservices
COPY twisted_plugins ./twisted_plugins
RUN python -m venv /opt/myservices \
    && /opt/myservices/bin/pip install --no-cache-dir /src

FROM python:3.11-slim
ENV PATH=/opt/myservices/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/myservices /opt/myservices
# Twisted's plugin cache, written now because the container runs as a user who cannot write it.
# Image layers keep whole-second mtimes and Twisted treats a cache as old as its directory as
# stale: without the pause, every start would try to rewrite it and log an error.
RUN sleep 1 \
    && python -c "from twisted.plugin import IPlugin, getPlugins; from twisted import plugins; list(getPlugins(IPlugin, plugins))" \
    && mkdir -p /etc/myservices /var/lib/myservices \
    && chown 10001:10001 /var/lib/myservices
COPY config/docker/myservices.toml /etc/myservices/myservices.toml
USER 10001:10001
VOLUME ["/var/lib/myservices"]
# echo, chat, UDP echo, HTTP, WebSocket, framed JSON, PB
EXPOSE 1234 1025 10004/udp 8080 18000 8000 8800
# healthy = serving: /readyz (every listener bound, the database and the hub answer); unhealthy after
# 3 failed checks in a row, 30 s, once the start period (migrations, a crashed daemon's hub lease) is over.
# See docs/deployment.md#health-checks.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4)"]
# SIGTERM drains (docs/deployment.md); as PID 1, twistd then exits with status 0 (#exit-status there)
STOPSIGNAL SIGTERM
# --pidfile= always: a stale pid file blocks start-up, and in a restarted container it names PID 1
CMD ["twistd", "--nodaemon", "--pidfile=", "myservices", "--config", "/etc/myservices/myservices.toml"]
