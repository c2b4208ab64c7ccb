"""``winnow review``: a local web app where a person checks and corrects the selection."""
