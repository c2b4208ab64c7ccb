"""The Parquet catalog: schema, atomic writers, contact sheet. No Prefect here."""
