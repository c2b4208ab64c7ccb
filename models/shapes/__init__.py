"""The bundled "shapes" model family: a procedural world, its exact oracle, and the tiny
diffusion / CLIP / aesthetic models trained on it (weights under ``models/shapes/weights``;
``winnow.models.sources.BUNDLED`` names them)."""
