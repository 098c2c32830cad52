# The flowmas agent container, for an OPACA platform (resources/container.json describes the image).
#
#   docker build -t flowmas/flowmas-container .
#   docker run -p 8082:8082 -p 4200:4200 flowmas/flowmas-container
#
# It runs the main job, `flowmas up`: the container API on port 8082 (the OPACA apiPort), and, unless
# PREFECT_API_URL is given, an embedded Prefect server whose UI is the extra port 4200. The platform passes
# CONTAINER_ID, PLATFORM_URL, TOKEN, OWNER, PORT_MAPPING and the image parameters as environment variables.
# Written with care but not built where it was written: no Docker engine runs on those machines.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLOWMAS_HOME=/data \
    FLOWMAS_PROJECT=/app/flowmas.yaml

RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, from the hash-pinned lock exactly as `make` installs them: this layer stays cached
# until the lock changes.
COPY Makefile pyproject.toml requirements.lock overrides.txt README.md ./
RUN python -m venv .tools \
 && .tools/bin/pip install --quiet uv==0.13.9 \
 && python -m venv .venv \
 && .tools/bin/uv pip sync --quiet --compile-bytecode --python .venv/bin/python --require-hashes requirements.lock

COPY . .
RUN .tools/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e . \
 && touch .venv/.synced \
 && useradd --create-home --uid 1000 flowmas \
 && mkdir -p /data \
 && chown -R flowmas /data

USER flowmas
VOLUME ["/data"]
EXPOSE 8082 4200

# Bind all interfaces inside the container; the platform maps the ports. SIGTERM (docker stop) stops
# serving cleanly.
CMD [".venv/bin/flowmas", "up", "--api-host", "0.0.0.0", "--api-port", "8082", "--host", "0.0.0.0", "--port", "4200"]
