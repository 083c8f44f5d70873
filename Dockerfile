# Image for the payledger services in docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ledger ledger
COPY schemas schemas
COPY streams streams
COPY ingress ingress
COPY projections projections
COPY anchoring anchoring
# Editable, so ledger finds schemas/ beside it at /app/schemas.
RUN pip install --no-cache-dir -e .
USER nobody
EXPOSE 8080
