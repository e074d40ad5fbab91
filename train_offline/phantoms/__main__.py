"""``python -m train_offline.phantoms``: see ``cli.main``."""

from train_offline.phantoms.cli import main

if __name__ == "__main__":
    main()
