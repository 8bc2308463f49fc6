"""``python -m convlens.cli ...``, the same as the ``convlens`` command (and what ``torchrun -m convlens.cli`` runs)."""
from .app import main

if __name__ == "__main__":
    main()
