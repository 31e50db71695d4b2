"""The programs: configuration composed once, the embedded graph, training and evaluation loops,
reports, benchmarks and the ``td3-drive`` command line.  Nothing below imports from here."""
