"""Real small datasets and generated image folders for tests (owned by the data stage)."""
