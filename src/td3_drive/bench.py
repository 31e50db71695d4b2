"""``python -m td3_drive.bench``: the benchmarks (:mod:`td3_drive.app.bench`)."""
import sys

from td3_drive.app.bench import main

if __name__ == "__main__":
    sys.exit(main())
