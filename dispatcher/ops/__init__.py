"""Operations tools over the store: queue health (stats), the live table (top), and
Prometheus metrics. They only read."""
