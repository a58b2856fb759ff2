"""Operations: CLI helpers, enqueue API, dashboard, metrics."""
