"""The engine: prompt sources -> generate -> score -> select -> write. No Prefect here."""
