"""``python -m nn_neuroimaging_lightning`` is the ``nn-neuroimaging`` console script."""

import sys

from nn_neuroimaging_lightning.cli import main

sys.exit(main())
