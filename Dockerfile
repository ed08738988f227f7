# A small image whose entrypoint is `reconcile`: no compilers, no dev tools, a non-root user.
# Build: docker build -t reconciler .   Run: docker run --rm -e RECONCILER_PG_DSN=... reconciler --all
# tests/test_dockerfile.py replays these steps (without Docker) in a fresh virtualenv and runs the result.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
COPY reports ./reports
# only our own wheel: every dependency ships binary wheels, installed in the final stage
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 reconciler
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --only-binary=:all: /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY --chown=reconciler config ./config
COPY --chown=reconciler rules ./rules
USER reconciler
ENV RECONCILER_CONFIG=/app/config/reconciler.toml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["reconcile"]
CMD ["--help"]
