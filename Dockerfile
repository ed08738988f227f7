# A small image whose entrypoint is `reconcile`: no compilers, no dev tools, a non-root user.
# Build: docker build -t reconciler .   Run: docker run --rm -e RECONCILER_PG_DSN=... reconciler --all
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
COPY reports ./reports
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 reconciler
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY --chown=reconciler config ./config
COPY --chown=reconciler rules ./rules
USER reconciler
ENV RECONCILER_CONFIG=/app/config/reconciler.toml
ENTRYPOINT ["reconcile"]
CMD ["--help"]
