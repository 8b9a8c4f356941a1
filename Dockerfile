# syntax=docker/dockerfile:1
#
# One image for every LeadExchange service; the command picks the service:
#
#   docker build -t leadexchange .
#   docker run --rm leadexchange python -m lx_ingest
#
# docker-compose.yml runs all seven this way, with Kafka and PostgreSQL next to them.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install exactly what uv.lock says into /app/.venv ---------------------------
FROM ${PYTHON_IMAGE} AS build

# The same uv as the Makefile's UV_VERSION (tests/unit/test_compose.py keeps them equal).
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON=python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN pip install "uv==${UV_VERSION}"

WORKDIR /src

# Third-party dependencies first, from the lock and the manifests only: this layer is
# rebuilt when a dependency changes, not on every code edit.
COPY pyproject.toml uv.lock ./
COPY libs/schemas/pyproject.toml libs/schemas/
COPY libs/platform/pyproject.toml libs/platform/
COPY libs/devstack/pyproject.toml libs/devstack/
COPY libs/sre/pyproject.toml libs/sre/
COPY libs/routing/pyproject.toml libs/routing/
COPY libs/integrations/pyproject.toml libs/integrations/
COPY services/admin/pyproject.toml services/admin/
COPY services/ingest/pyproject.toml services/ingest/
COPY services/router/pyproject.toml services/router/
COPY services/delivery/pyproject.toml services/delivery/
COPY services/billing/pyproject.toml services/billing/
COPY services/analytics/pyproject.toml services/analytics/
COPY services/auction/pyproject.toml services/auction/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --all-packages --no-dev --no-install-workspace

# Then the workspace itself. Non-editable: its packages (with their SQL migrations) are
# built into the venv as wheels, so the runtime image needs the venv and nothing else.
COPY libs libs
COPY services services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --all-packages --no-dev --no-editable

# --- runtime: the venv, a non-root user, no build tools ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="leadexchange" \
      org.opencontainers.image.description="LeadExchange services (admin, ingest, router, delivery, billing, analytics, auction)"

RUN groupadd --system --gid 10001 lx \
    && useradd --system --uid 10001 --gid lx --create-home --home-dir /home/lx \
       --shell /usr/sbin/nologin lx

# Root owns the venv, so the service user cannot change the code it runs.
COPY --from=build /app/.venv /app/.venv

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LX_ADMIN_HTTP_HOST=0.0.0.0 \
    LX_INGEST_HTTP_HOST=0.0.0.0 \
    LX_ROUTER_HTTP_HOST=0.0.0.0 \
    LX_DELIVERY_HTTP_HOST=0.0.0.0 \
    LX_BILLING_HTTP_HOST=0.0.0.0 \
    LX_ANALYTICS_HTTP_HOST=0.0.0.0 \
    LX_AUCTION_HTTP_HOST=0.0.0.0

WORKDIR /home/lx
USER 10001:10001

# admin 8000, ingest 8001, router 8002, delivery 8003, billing 8004, analytics 8005,
# auction 8006
EXPOSE 8000-8006

# No default service: say how to choose one instead of starting an arbitrary one.
CMD ["python", "-c", "import sys; sys.exit('choose a service: python -m lx_admin | lx_ingest | lx_router | lx_delivery | lx_billing | lx_analytics | lx_auction')"]
