"""Model sources, loading and the text-to-image generator (no Prefect here)."""
