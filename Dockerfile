FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker worker
COPY tasks tasks
COPY models models
COPY api_stub api_stub
RUN pip install --no-cache-dir .
ENV TOLLGATE_REDIS_URL=redis://redis:6379/0 \
    TOLLGATE_DATABASE_URL=postgresql+psycopg://postgres@postgres:5432/tollgate
