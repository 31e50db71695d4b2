"""``python -m td3_drive``: the ``td3-drive`` command."""
import sys

from td3_drive.app.cli import main

sys.exit(main())
