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
RUN pip install --no-cache-dir .
USER nobody
EXPOSE 8080
