"""The nodes: wiring only (declare parameters, subscribe, call rl/ and driving/, publish); each file ends in main()."""
