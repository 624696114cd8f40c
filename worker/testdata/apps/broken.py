import os

raise RuntimeError('broken app: this module fails to import')
