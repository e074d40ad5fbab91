"""Everything that runs before Kaggle: phantoms, pre-caching, training, validation, export. Imports ``kernel``."""
